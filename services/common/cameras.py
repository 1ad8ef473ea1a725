"""Cameras: the one place that states the project's camera conventions.

Orbit parameters follow LGM (kiui.cam.orbit_camera):
- the target is the origin (or a given centre: the orbit is then LGM's, translated), y is up, the
  object's front faces +z;
- azimuth 0 puts the camera on +z looking toward -z; azimuth 90 puts it on +x;
- elevation is in degrees with LGM's sign: negative is above the object (camera y = -r sin(elevation));
- defaults: radius 1.5, vertical field of view 49.1 degrees.

Matrices handed to rasterizers are OpenCV world-to-camera ("viewmats"): camera +x right,
+y down, +z forward. Intrinsics ``K`` are in pixels, with pixel (i, j) covering [j, j+1) x [i, i+1),
so the centre of the top-left pixel is (0.5, 0.5) and the principal point of a centred camera is
(W/2, H/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument

DEFAULT_RADIUS = 1.5
DEFAULT_FOVY_DEG = 49.1
MAX_SIDE = 4096  # pixels; larger views are rejected as requests, not attempted


@dataclass(frozen=True, eq=False)
class Cameras:
    """V pinhole cameras sharing one image size.

    Attributes:
        viewmats: ``[V, 4, 4]`` float32 world-to-camera, OpenCV convention.
        Ks: ``[V, 3, 3]`` float32 intrinsics in pixels.
        width: image width in pixels.
        height: image height in pixels.
    """

    viewmats: np.ndarray
    Ks: np.ndarray
    width: int
    height: int

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def __getitem__(self, index) -> Cameras:
        """Select views; ``index`` is anything numpy accepts on the first axis."""
        idx = np.atleast_1d(np.arange(len(self))[index])
        return Cameras(self.viewmats[idx], self.Ks[idx], self.width, self.height)

    @property
    def positions(self) -> np.ndarray:
        """``[V, 3]`` float32 camera centres in world coordinates."""
        rot = self.viewmats[:, :3, :3]
        trans = self.viewmats[:, :3, 3]
        return -np.einsum("vji,vj->vi", rot, trans).astype(np.float32)


def orbit_camera_to_world(
    azimuth_deg: float, elevation_deg: float = 0.0, radius: float = DEFAULT_RADIUS, center=None
) -> np.ndarray:
    """The LGM camera-to-world matrix (OpenGL axes: x right, y up, z backward).

    Args:
        center: ``[3]`` the target point, world units; None is the origin. The camera sits at
            ``center + radius * direction(azimuth, elevation)`` and looks at it, axes as at the origin.

    Returns:
        ``[4, 4]`` float64.
    """
    az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
    offset = radius * np.array([np.cos(el) * np.sin(az), -np.sin(el), np.cos(el) * np.cos(az)])
    target = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64).reshape(3)
    campos = target + offset
    backward = offset / np.linalg.norm(offset)
    right = np.cross([0.0, 1.0, 0.0], backward)
    norm = np.linalg.norm(right)
    # Straight above or below, "up" is undefined; take world +x as right, as a limit of small azimuths.
    right = right / norm if norm > 1e-8 else np.array([np.cos(az), 0.0, -np.sin(az)])
    up = np.cross(backward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, backward], axis=1)
    c2w[:3, 3] = campos
    return c2w


def intrinsics(width: int, height: int, fovy_deg: float = DEFAULT_FOVY_DEG) -> np.ndarray:
    """Pinhole intrinsics with square pixels and a centred principal point.

    Returns:
        ``[3, 3]`` float32: ``fx = fy = (H / 2) / tan(fovy / 2)``, ``cx = W / 2``, ``cy = H / 2``.
    """
    focal = 0.5 * height / np.tan(0.5 * np.deg2rad(fovy_deg))
    return np.array(
        [[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], dtype=np.float32
    )


def orbit_cameras(
    azimuths_deg,
    width: int,
    height: int,
    elevation_deg: float = 0.0,
    radius: float = DEFAULT_RADIUS,
    fovy_deg: float = DEFAULT_FOVY_DEG,
    center=None,
) -> Cameras:
    """Cameras on a circle around ``center`` (``[3]`` world units; None is the origin), one per
    azimuth (degrees, LGM convention), each looking at ``center``."""
    gl_to_cv = np.diag([1.0, -1.0, -1.0, 1.0])  # flip y and z: OpenGL camera axes -> OpenCV
    viewmats = [
        np.linalg.inv(orbit_camera_to_world(az, elevation_deg, radius, center) @ gl_to_cv)
        for az in np.atleast_1d(np.asarray(azimuths_deg, dtype=np.float64))
    ]
    K = intrinsics(width, height, fovy_deg)
    return Cameras(
        viewmats=np.asarray(viewmats, dtype=np.float32).reshape(-1, 4, 4),
        Ks=np.repeat(K[None], len(viewmats), axis=0),
        width=int(width),
        height=int(height),
    )


def project(
    viewmat: np.ndarray, K: np.ndarray, points: np.ndarray, near: float = -np.inf
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions and camera depths of world points in one pinhole camera (no skew).

    Args:
        viewmat: ``[4, 4]`` OpenCV world-to-camera matrix.
        K: ``[3, 3]`` intrinsics, pixels.
        points: ``[P, 3]`` world points.
        near: camera depth at or below which a point has no pixel position (NaN); the default keeps
            every point, behind the camera included (mirrored through the centre of projection).

    Returns:
        xy ``[P, 2]`` float64 (x, y) in pixel units, the top-left pixel's centre at (0.5, 0.5);
        z ``[P]`` float64 camera-space depth, positive in front of the camera.
    """
    viewmat = np.asarray(viewmat, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    cam = np.asarray(points, dtype=np.float64) @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    front = z > near
    safe_z = np.where(front, z, 1.0)
    xy = np.stack([K[0, 0] * cam[:, 0] / safe_z + K[0, 2], K[1, 1] * cam[:, 1] / safe_z + K[1, 2]], axis=1)
    xy[~front] = np.nan
    return xy, z


def unproject(viewmat: np.ndarray, K: np.ndarray, xy: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """The world points seen at pixel positions ``xy`` at camera depth ``depth``: ``project``'s inverse.

    Args:
        viewmat: ``[4, 4]`` OpenCV world-to-camera matrix.
        K: ``[3, 3]`` intrinsics, pixels.
        xy: ``[P, 2]`` pixel positions (x, y), the top-left pixel's centre at (0.5, 0.5).
        depth: ``[P]`` camera z (not the distance along the ray), world units.

    Returns:
        ``[P, 3]`` float64 world points.
    """
    K = np.asarray(K, dtype=np.float64)
    z = np.asarray(depth, dtype=np.float64)
    cam = np.stack([(xy[:, 0] - K[0, 2]) / K[0, 0] * z, (xy[:, 1] - K[1, 2]) / K[1, 1] * z, z], axis=1)
    camera_to_world = np.linalg.inv(np.asarray(viewmat, dtype=np.float64))
    return cam @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]


def project_points(cameras: Cameras, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``project`` into every camera, every point kept.

    Args:
        points: ``[P, 3]`` world coordinates.

    Returns:
        pixels: ``[V, P, 2]`` float64 (x, y) in pixel units.
        depth: ``[V, P]`` float64 camera-space z (positive in front of the camera).
    """
    projected = [project(viewmat, K, points) for viewmat, K in zip(cameras.viewmats, cameras.Ks, strict=True)]
    return np.stack([xy for xy, _ in projected]), np.stack([z for _, z in projected])


def cameras_from_proto(message, field: str = "cameras") -> Cameras:
    """Validate a ``tire.v1.CameraSet`` and convert it.

    Raises:
        InvalidArgument: naming the bad field, for example ``cameras.cameras[2].world_to_camera``.
    """
    _check_side(message.width, f"{field}.width")
    _check_side(message.height, f"{field}.height")
    if not message.cameras:
        raise InvalidArgument(f"{field}.cameras", [], "must hold at least one camera")
    viewmats, Ks = [], []
    for i, cam in enumerate(message.cameras):
        name = f"{field}.cameras[{i}]"
        m = np.asarray(cam.world_to_camera, dtype=np.float64)
        if m.size != 16:
            raise InvalidArgument(
                f"{name}.world_to_camera", f"{m.size} values", "must hold 16 values (row-major 4x4)"
            )
        m = m.reshape(4, 4)
        if not np.isfinite(m).all():
            raise InvalidArgument(f"{name}.world_to_camera", m.tolist(), "must be finite")
        if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
            raise InvalidArgument(
                f"{name}.world_to_camera", m[3].tolist(), "must have (0, 0, 0, 1) as its last row"
            )
        if not np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-3):
            raise InvalidArgument(
                f"{name}.world_to_camera", m[:3, :3].tolist(), "must have an orthonormal rotation"
            )
        k = cam.intrinsics
        values = np.array([k.fx, k.fy, k.cx, k.cy], dtype=np.float64)
        if not np.isfinite(values).all() or k.fx <= 0 or k.fy <= 0:
            raise InvalidArgument(
                f"{name}.intrinsics", values.tolist(), "must be finite with positive fx and fy"
            )
        viewmats.append(m)
        Ks.append([[k.fx, 0.0, k.cx], [0.0, k.fy, k.cy], [0.0, 0.0, 1.0]])
    return Cameras(
        viewmats=np.asarray(viewmats, dtype=np.float32),
        Ks=np.asarray(Ks, dtype=np.float32),
        width=int(message.width),
        height=int(message.height),
    )


def cameras_to_proto(cameras: Cameras):
    """Convert to a ``tire.v1.CameraSet``."""
    from tire.v1 import common_pb2

    return common_pb2.CameraSet(
        width=cameras.width,
        height=cameras.height,
        cameras=[
            common_pb2.Camera(
                world_to_camera=m.reshape(-1).tolist(),
                intrinsics=common_pb2.Intrinsics(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2]),
            )
            for m, K in zip(cameras.viewmats, cameras.Ks, strict=True)
        ],
    )


def cameras_from_orbit(message, field: str = "orbit") -> Cameras:
    """Validate a ``tire.v1.Orbit`` and expand it (0 radius / field of view mean the defaults, an
    empty ``center`` the origin)."""
    _check_side(message.resolution, f"{field}.resolution")
    azimuths = np.asarray(message.azimuths_deg, dtype=np.float64)
    if azimuths.size == 0:
        raise InvalidArgument(f"{field}.azimuths_deg", [], "must hold at least one azimuth")
    if not np.isfinite(azimuths).all():
        raise InvalidArgument(f"{field}.azimuths_deg", azimuths.tolist(), "must be finite")
    if not (np.isfinite(message.elevation_deg) and -89.0 <= message.elevation_deg <= 89.0):
        raise InvalidArgument(
            f"{field}.elevation_deg", message.elevation_deg, "must be within [-89, 89] degrees"
        )
    radius = message.radius or DEFAULT_RADIUS
    if not (np.isfinite(radius) and radius > 0):
        raise InvalidArgument(f"{field}.radius", message.radius, "must be positive")
    fovy = message.fovy_deg or DEFAULT_FOVY_DEG
    if not (np.isfinite(fovy) and 1.0 <= fovy <= 170.0):
        raise InvalidArgument(f"{field}.fovy_deg", message.fovy_deg, "must be within [1, 170] degrees")
    center = orbit_center(message.center, f"{field}.center")
    return orbit_cameras(
        azimuths, message.resolution, message.resolution, message.elevation_deg, radius, fovy, center
    )


def orbit_center(values, field: str = "orbit.center") -> np.ndarray:
    """An orbit's target point from a repeated float field: ``[3]`` float64, the origin when empty.

    Raises:
        InvalidArgument: not 0 or 3 values, or a value that is not finite.
    """
    center = np.asarray(list(values), dtype=np.float64)
    if center.size == 0:
        return np.zeros(3)
    if center.size != 3:
        raise InvalidArgument(field, center.tolist(), "must hold 3 values (x, y, z), or none for the origin")
    if not np.isfinite(center).all():
        raise InvalidArgument(field, center.tolist(), "must be finite")
    return center


def _check_side(value: int, field: str) -> None:
    if not 1 <= value <= MAX_SIDE:
        raise InvalidArgument(field, value, f"must be between 1 and {MAX_SIDE} pixels")
