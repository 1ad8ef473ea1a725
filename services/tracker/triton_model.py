"""The cotracker tracker's model as a Triton Python-backend model: the same ``CoTrackerBackend.predict``,
served.

    publish(store, "s3://models/triton", MODELS, version_settings("s3://models/scaled_offline.pth"), url)

Triton runs ``TrackModel`` in its Python backend's stub process: ``initialize`` builds a
``CoTrackerBackend`` from its version's settings (the checkpoint's URI, ``points_per_call``;
``services.common.model_repository``) on the device Triton gives the instance, ``execute`` runs
``CoTrackerBackend.predict`` on each request's video, ``finalize`` lets it go. No maths lives here.

The cut. What runs on Triton is CoTracker3 on one video: the frames, the queries, and the conversion
to and from CoTracker's pixel convention, ``points_per_call`` queries per model call. The orbit video,
the query grid and the masks of ``locate_unobserved`` stay in the tracker service
(``services.tracker.triton_backend``), as do ``query_stride`` (``TIRE_TRACKER_QUERY_STRIDE``: it decides
which queries are sent, not how they are tracked) and the request checks. ``track`` (no batch dimension:
one video per request), for T frames of H x W pixels and N queries:

    FRAMES      UINT8 [T, H, W, 3]
    QUERIES     FP32  [N, 3]    (t, x, y): t a frame index, (x, y) pixels, top-left pixel centre (0.5, 0.5)
    BACKWARD    BOOL  [1]       CoTracker's ``backward_tracking``: also track to frames before t
    -> TRACKS   FP32  [T, N, 2] (x, y), same convention
       VISIBILITY BOOL [T, N]

Frames or queries the backend cannot track (``check_video``) answer INVALID_ARGUMENT with its sentence.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from services.common.model_repository import Tensor, TritonModel

TRACK = TritonModel(
    "track",
    "services.tracker.triton_model:TrackModel",
    inputs=(
        Tensor("FRAMES", "TYPE_UINT8", (-1, -1, -1, 3)),
        Tensor("QUERIES", "TYPE_FP32", (-1, 3)),
        Tensor("BACKWARD", "TYPE_BOOL", (1,)),
    ),
    outputs=(
        Tensor("TRACKS", "TYPE_FP32", (-1, -1, 2)),
        Tensor("VISIBILITY", "TYPE_BOOL", (-1, -1)),
    ),
)
MODELS = (TRACK,)
"""The tracker's models on Triton."""


def version_settings(weights: str, *, points_per_call: int = 8192) -> dict:
    """What a version of ``MODELS`` serves: ``CoTrackerBackend``'s arguments.

    Args:
        weights: CoTracker3's offline checkpoint (``scaled_offline.pth``): a local path, or an ``s3://``
            URI of the store the Triton server's ``TIRE_S3_*`` name.
        points_per_call: as ``CoTrackerBackend``'s, >= 1.
    """
    if points_per_call < 1:
        raise ValueError(f"points_per_call must be at least 1, got {points_per_call!r}")
    return {"checkpoint": weights, "points_per_call": int(points_per_call)}


def _backend(args: dict[str, str]):
    """The ``CoTrackerBackend`` of a Triton model instance: its version's settings, Triton's device.

    An ``s3://`` checkpoint is downloaded to a temporary file, which goes once the weights are loaded.
    """
    from services.common.model_repository import instance_device, version_settings, weights_store
    from services.tracker.cotracker import CoTrackerBackend

    settings = version_settings(args)
    checkpoint = settings["checkpoint"]
    store = weights_store(checkpoint)
    with tempfile.TemporaryDirectory(prefix="cotracker-") as folder:
        if store is not None:
            local = Path(folder) / (Path(checkpoint).name or "checkpoint.pth")
            local.write_bytes(store.get_bytes(checkpoint, any_bucket=True))
            checkpoint = str(local)
        return CoTrackerBackend(
            checkpoint, instance_device(args), points_per_call=settings["points_per_call"]
        )


class TrackModel:
    """``track``: Triton's Python-backend lifecycle around ``CoTrackerBackend.predict``."""

    def initialize(self, args: dict[str, str]) -> None:
        self.backend = _backend(args)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        from services.common.errors import InvalidArgument

        responses = []
        for request in requests:

            def tensor(name: str, request=request):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

            try:
                tracks, visibility = self.backend.predict(
                    tensor("FRAMES"), tensor("QUERIES"), bool(tensor("BACKWARD")[0]), field="FRAMES"
                )
            except InvalidArgument as exc:  # frames or queries it cannot track
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("TRACKS", tracks), pb_utils.Tensor("VISIBILITY", visibility)]
                )
            )
        return responses

    def finalize(self) -> None:
        self.backend = None
