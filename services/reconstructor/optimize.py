"""The ``gsplat-optimize`` reconstructor backend: fine-tune every Gaussian parameter against the views.

Starting from the initial asset, Adam adjusts the means, log-scales, quaternions, opacity logits and SH
coefficients so that renders of the asset match the views, as 3DGS training does, but from a good
start and for few steps. The asset keeps its N Gaussians: there is no densification or pruning (the
views repaint the surface, they do not reshape it, and a fixed N keeps every Gaussian's index, so the
frames of a 4D asset stay in correspondence).

``GsplatOptimizeBackend.reconstruct`` runs:

1. Targets: the views' rgb (0..1) and alpha, and the background they were composited over
   (``Views.background``); renders are composited over the same background.
2. Parameters: the initial asset's stored values (log-scales, logits, raw SH). Without
   ``keep_higher_sh`` the SH bands above degree 0 are zeroed first and stay zero. The Gaussians of the
   ``locked_views`` (``contract.locked_gaussians``: a compositing weight >= 0.05 in a pixel of one)
   are frozen: their gradients are masked to 0, so Adam never moves them, they keep their SH bands
   and render with them throughout, and the result holds their initial rows bit for bit.
3. Adam, one learning rate per parameter, in 3DGS's proportions (gsplat's ``simple_trainer``), each
   times ``learning_rate_scale`` (default 3, see below):

   ==================  ===========================  ==========================================
   parameter           rate per step                note
   ==================  ===========================  ==========================================
   means               1.6e-4 x scene scale         decays exponentially to 1/100 of it over
                                                    ``max_iterations`` steps, as in 3DGS
   log-scales          5e-3
   quaternions         1e-3                         renders normalise them
   opacity logits      5e-2
   SH degree 0         2.5e-3
   SH bands >= 1       2.5e-3 / 20                  only with ``keep_higher_sh``
   ==================  ===========================  ==========================================

   The scene scale is the cameras' mean distance to the asset's median point (the orbit radius;
   3DGS uses the cameras' spread, which one camera would make 0). Adam's epsilon is 1e-15, as 3DGS's.
4. Steps: each renders a mini-batch of ``views_per_step`` views, drawn without replacement from a
   seeded shuffle of the views of weight > 0 (an epoch visits each once), and takes one Adam step on
   ``sum_b w_b L_b / (B mean(w))``: each view's loss weighted by its ``view_weights`` entry (the
   source view weighs 10 in TIRE), normalised so the step size does not depend on the weights' scale.
   The loss of a view is, per pixel, ``(1 - 0.2) |rgb - target| + 0.2 (1 - SSIM) + alpha_weight
   |alpha - target alpha|`` (colour terms averaged over channels; SSIM with an 11 x 11 Gaussian
   window, sigma 1.5), averaged over the pixels in the union of the view's foreground (target alpha
   >= 1/255) and the render's footprint (rendered alpha >= 1/255). Outside both, render and target
   are the background alike and carry no error, so counting them would only shrink the loss of small
   objects; the footprint is inside so that Gaussians spilling past the silhouette are pulled back.
   ``alpha_weight`` (0.1) is a light pull that holds the silhouette where colour cannot, on parts
   the colour of the background.
5. Stop after ``max_iterations`` steps, or when the weighted loss averaged over a window (whole
   epochs, at least 10 steps; each view's loss as it was when drawn) improved on the previous
   window's by less than ``tolerance`` times it (single steps are too noisy to judge).
   ``prior_weight`` does not apply: the views are the target, and nothing pulls toward the initial
   values but the start.
6. The new asset: float32 arrays, quaternions normalised, ``extra`` kept; and the RMS colour error
   of re-renders of every view (0..1), as the colour solve reports it.

Why 3 times 3DGS's rates by default: they are made for 30,000 steps, and at the API's default of 200
steps Adam moves a base colour by at most 0.14. On a 600-Gaussian textured blob whose unseen side had
drifted (``corrupt_unseen``; 8 views of 32 x 32, CPU), 200 steps took the views' PSNR from 21 dB to
27 dB at scale 1, 44 dB at 3, and 47 dB at 10 (stopped by the tolerance after 110 steps); 3 is the
smallest of those scales that gets there. Not yet measured on real assets on a GPU.

The renderer is a component: ``gsplat.rasterization`` on CUDA by default (classic mode, eps2d 0.3,
near plane 0.01, unpacked, RGB), or any function of the same call signature, such as the plain-PyTorch
twin that tests run on CPU (``services.common.rasterizer.reference.rasterization_dense``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from services.common.cameras import Cameras
from services.common.errors import ConfigError, Unimplemented
from services.common.gaussians import Gaussians
from services.common.rasterizer import EPS2D, FAR_PLANE, NEAR_PLANE
from services.common.serial import one_call_at_a_time
from services.common.views import Views
from services.reconstructor.contract import (
    Reconstruction,
    SolveOptions,
    check_locked_views,
    locked_gaussians,
    rms_error,
)

SSIM_LAMBDA = 0.2  # weight of (1 - SSIM) against L1, 3DGS's
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2  # SSIM's stabilisers for a dynamic range of 1
SSIM_C2 = 0.03**2
FOREGROUND = 1.0 / 255.0  # alpha at and above which a pixel counts as covered
MEANS_DECAY = 0.01  # the means' rate falls to this fraction of its start over max_iterations
WINDOW_STEPS = 10  # stopping compares the loss over whole epochs of at least this many steps
# Base rates per step (see the module docstring); the means' is per unit of scene scale.
LEARNING_RATES = {
    "means": 1.6e-4,
    "log_scales": 5e-3,
    "quats": 1e-3,
    "opacity_logits": 5e-2,
    "sh_dc": 2.5e-3,
    "sh_rest": 2.5e-3 / 20.0,
}
# gsplat's compositing rules: alpha is capped at 0.999, skipped below 1/255, and a pixel stops once its
# transmittance would fall to 1e-4 (that Gaussian excluded).

Renderer = Callable[..., tuple[torch.Tensor, torch.Tensor, dict]]


class GsplatOptimizeBackend:
    """Optimise all Gaussian parameters against the views (see the module docstring).

    Args:
        device: torch device the optimisation runs on, for example "cuda" or "cuda:1".
        views_per_step: views rendered per Adam step, >= 1.
        learning_rate_scale: factor on every learning rate, > 0.
        alpha_weight: weight of the alpha L1 term against the colour terms, >= 0.
        seed: seed of the views' shuffle.
        renderer: a function with ``gsplat.rasterization``'s call signature; None for gsplat's own,
            which needs CUDA.

    Raises:
        ConfigError: no renderer given and no CUDA (or no gsplat), or a setting out of range.
    """

    name = "gsplat-optimize"

    def __init__(
        self,
        device: str = "cuda",
        views_per_step: int = 4,
        learning_rate_scale: float = 3.0,
        alpha_weight: float = 0.1,
        seed: int = 0,
        renderer: Renderer | None = None,
    ):
        if views_per_step < 1:
            raise ConfigError(f"views_per_step must be at least 1, got {views_per_step!r}")
        if not (math.isfinite(learning_rate_scale) and learning_rate_scale > 0.0):
            raise ConfigError(f"learning_rate_scale must be a positive number, got {learning_rate_scale!r}")
        if not (math.isfinite(alpha_weight) and alpha_weight >= 0.0):
            raise ConfigError(f"alpha_weight must be a number >= 0, got {alpha_weight!r}")
        try:
            self._device = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"device must name a torch device such as 'cuda', got {device!r}") from None
        if renderer is None:
            if not torch.cuda.is_available():
                raise ConfigError(
                    "the gsplat-optimize backend needs CUDA, and torch sees no GPU; "
                    "use backend 'colour-solve'"
                )
            if self._device.type != "cuda":
                raise ConfigError(f"device must be a CUDA device for gsplat's rasterizer, got {device!r}")
            try:
                from gsplat import rasterization
            except ImportError as exc:
                raise ConfigError(
                    f"the gsplat-optimize backend needs gsplat (pip install 'tire-services[gsplat]'): {exc}"
                ) from exc
            renderer = rasterization
        self.views_per_step = views_per_step
        self.learning_rate_scale = learning_rate_scale
        self.alpha_weight = alpha_weight
        self.seed = seed
        self.renderer = renderer

    @property
    def device(self) -> str:
        if self._device.type == "cuda":
            index = self._device.index or 0
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        return str(self._device)

    @one_call_at_a_time
    def reconstruct(
        self,
        views: Views,
        initial: Gaussians,
        options: SolveOptions,
        view_weights: np.ndarray | None = None,
        locked_views: Sequence[int] = (),
    ) -> Reconstruction:
        if views.rgb is None or views.alpha is None:
            raise ValueError("views must carry rgb and alpha")
        weights = np.ones(len(views)) if view_weights is None else np.asarray(view_weights, np.float64)
        if weights.shape != (len(views),) or not (weights >= 0.0).all() or not weights.any():
            raise ValueError(f"view_weights must be [{len(views)}] values >= 0, not all 0, got {weights!r}")
        locked = locked_gaussians(initial, views.cameras[check_locked_views(locked_views, len(views))])
        dev = self._device

        # 1. Targets, and the background the views were composited over.
        background = views.background
        target_rgb = torch.tensor(views.rgb, dtype=torch.float32, device=dev) / 255.0  # [V, H, W, 3]
        target_alpha = _tensor(views.alpha, dev)  # [V, H, W]
        viewmats, ks = _tensor(views.cameras.viewmats, dev), _tensor(views.cameras.Ks, dev)
        backgrounds = _tensor(np.tile(background, (len(views), 1)), dev)  # [V, 3]

        # 2. Parameters, from the initial asset's stored values.
        fit_rest = options.keep_higher_sh and initial.sh_degree > 0
        params = {
            "means": _tensor(initial.means, dev),
            "log_scales": _tensor(initial.log_scales, dev),
            "quats": _tensor(initial.quats, dev),
            "opacity_logits": _tensor(initial.opacity_logits, dev),
            "sh_dc": _tensor(initial.sh[:, :1], dev),
        }
        sh_rest = _tensor(initial.sh[:, 1:], dev)  # [N, K - 1, 3]
        free = torch.from_numpy(~locked).to(dev)  # [N] the Gaussians the steps may move
        if fit_rest:
            params["sh_rest"] = sh_rest
        else:
            sh_rest[free] = 0.0  # the locked keep their bands, and render with them
        for value in params.values():
            value.requires_grad_(True)
            if locked.any():
                # A locked Gaussian's gradient is 0 from the first step, so Adam's moments stay 0
                # and its step is exactly 0.
                mask = free.to(value.dtype).reshape(-1, *([1] * (value.dim() - 1)))
                value.register_hook(lambda grad, mask=mask: grad * mask)

        # 3. Adam with 3DGS's per-parameter rates.
        rates = {key: LEARNING_RATES[key] * self.learning_rate_scale for key in params}
        rates["means"] *= scene_scale(initial, views.cameras)
        optimizer = torch.optim.Adam(
            [{"params": [value], "lr": rates[key], "name": key} for key, value in params.items()],
            eps=1e-15,
        )
        means_group = next(g for g in optimizer.param_groups if g["name"] == "means")

        def render(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """rgb ``[B, H, W, 3]`` and alpha ``[B, H, W]`` of the views at ``index``."""
            rest = params.get("sh_rest", sh_rest)
            colours, alphas, _ = self.renderer(
                means=params["means"],
                quats=params["quats"],
                scales=torch.exp(params["log_scales"]),
                opacities=torch.sigmoid(params["opacity_logits"]),
                colors=torch.cat([params["sh_dc"], rest], dim=1),
                viewmats=viewmats[index],
                Ks=ks[index],
                width=views.cameras.width,
                height=views.cameras.height,
                near_plane=NEAR_PLANE,
                far_plane=FAR_PLANE,
                eps2d=EPS2D,
                sh_degree=initial.sh_degree,
                packed=False,
                backgrounds=backgrounds[index],
                render_mode="RGB",
                rasterize_mode="classic",
            )
            return colours, alphas[..., 0]

        # 4. Steps over mini-batches of views; 5. stop at the cap or when a window stops improving.
        eligible = np.flatnonzero(weights > 0.0)
        per_step = min(self.views_per_step, len(eligible))
        steps_per_epoch = math.ceil(len(eligible) / per_step)
        epochs_per_window = math.ceil(WINDOW_STEPS / steps_per_epoch)
        view_weight = _tensor(weights / weights[eligible].mean(), dev)  # mean 1 over eligible views
        rng = np.random.default_rng(self.seed)
        previous_window, window_loss, steps = math.inf, torch.zeros((), device=dev), 0
        while steps < options.max_iterations:
            position = steps % steps_per_epoch
            if position == 0:
                order = rng.permutation(eligible)
            index = torch.from_numpy(order[position * per_step : (position + 1) * per_step]).to(dev)
            means_group["lr"] = rates["means"] * MEANS_DECAY ** (steps / options.max_iterations)
            rgb, alpha = render(index)
            per_view = photometric_loss(rgb, alpha, target_rgb[index], target_alpha[index], self.alpha_weight)
            weighted = (view_weight[index] * per_view).sum()
            optimizer.zero_grad(set_to_none=True)
            (weighted / per_step).backward()
            optimizer.step()
            steps += 1
            window_loss += weighted.detach()
            if steps % (steps_per_epoch * epochs_per_window) == 0:
                current = float(window_loss) / (epochs_per_window * len(eligible))
                if previous_window - current < options.tolerance * previous_window:
                    break
                previous_window, window_loss = current, torch.zeros((), device=dev)

        # 6. The new asset (the locked Gaussians' rows are the initial's own, bit for bit: not
        #    even their quaternions are normalised), and the error of re-renders of every view.
        with torch.no_grad():
            quats = F.normalize(params["quats"], dim=-1)
            sh = torch.cat([params["sh_dc"], params.get("sh_rest", sh_rest)], dim=1)
            arrays = {
                "means": _array(params["means"]),
                "log_scales": _array(params["log_scales"]),
                "quats": _array(quats),
                "opacity_logits": _array(params["opacity_logits"]),
                "sh": _array(sh),
            }
            for name, array in arrays.items():
                array[locked] = getattr(initial, name)[locked]
            gaussians = replace(initial, **arrays)
            rerender = np.concatenate(
                [
                    _array(render(torch.arange(start, min(start + per_step, len(views)), device=dev))[0])
                    for start in range(0, len(views), per_step)
                ]
            )
        n_locked = int(locked.sum())
        return Reconstruction(
            gaussians=gaussians,
            rms_error=rms_error(np.clip(rerender, 0.0, 1.0), views.rgb),
            iterations=steps,
            locked=n_locked,
            kept=0,
            resolved=len(initial) - n_locked,
            higher_sh_kept=fit_rest or initial.sh_degree == 0 or n_locked == len(initial),
        )

    def reconstruct_together(
        self,
        frames: Sequence[tuple[Views, Gaussians]],
        options: SolveOptions,
        view_weights: np.ndarray | None = None,
        locked_views: Sequence[int] = (),
    ) -> list[Reconstruction]:
        """One frame: ``reconstruct``. Several: ``Unimplemented`` (this backend fits every parameter of
        one frame; sharing colours across frames is the colour solve's)."""
        if len(frames) != 1:
            raise Unimplemented(
                f"the gsplat-optimize reconstructor fits one frame per call, not {len(frames)}: "
                "joint_time_steps needs the colour-solve backend"
            )
        views, initial = frames[0]
        return [self.reconstruct(views, initial, options, view_weights, locked_views)]


def scene_scale(gaussians: Gaussians, cameras: Cameras) -> float:
    """The cameras' mean distance to the median of the Gaussians' means, world units (> 0)."""
    centre = np.median(gaussians.means.astype(np.float64), axis=0)
    distance = np.linalg.norm(cameras.positions.astype(np.float64) - centre, axis=1).mean()
    return float(max(distance, 1e-6))


def photometric_loss(
    rgb: torch.Tensor,
    alpha: torch.Tensor,
    target_rgb: torch.Tensor,
    target_alpha: torch.Tensor,
    alpha_weight: float = 0.1,
) -> torch.Tensor:
    """Each view's loss: ``0.8 L1 + 0.2 (1 - SSIM) + alpha_weight |alpha - target|`` over its covered pixels.

    Args:
        rgb: ``[B, H, W, 3]`` float rendered colour over the background, 0..1 scale.
        alpha: ``[B, H, W]`` float rendered coverage.
        target_rgb: ``[B, H, W, 3]`` float the views' colour, 0..1 scale.
        target_alpha: ``[B, H, W]`` float the views' coverage.
        alpha_weight: weight of the alpha term.

    Returns:
        ``[B]`` the per-pixel loss averaged over the pixels where either alpha is >= 1/255 (0 for a
        view without such pixels).
    """
    colour_l1 = (rgb - target_rgb).abs().mean(dim=-1)
    structure = 1.0 - ssim(rgb, target_rgb).mean(dim=-1)
    alpha_l1 = (alpha - target_alpha).abs()
    per_pixel = (1.0 - SSIM_LAMBDA) * colour_l1 + SSIM_LAMBDA * structure + alpha_weight * alpha_l1
    covered = ((target_alpha >= FOREGROUND) | (alpha.detach() >= FOREGROUND)).to(per_pixel.dtype)
    return (per_pixel * covered).sum(dim=(1, 2)) / covered.sum(dim=(1, 2)).clamp_min(1.0)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of two image batches: Gaussian window 11 x 11, sigma 1.5, zero padding (as 3DGS).

    Args:
        x, y: ``[B, H, W, C]`` float images, 0..1 scale.

    Returns:
        ``[B, H, W, C]`` the SSIM map, in [-1, 1]; 1 where the images agree.
    """
    channels = x.shape[-1]
    offsets = torch.arange(SSIM_WINDOW, dtype=x.dtype, device=x.device) - SSIM_WINDOW // 2
    line = torch.exp(-(offsets**2) / (2.0 * SSIM_SIGMA**2))
    line = line / line.sum()
    window = (line[:, None] * line[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, window, padding=SSIM_WINDOW // 2, groups=channels)

    x, y = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)  # [B, C, H, W]
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + SSIM_C1) * (2.0 * cov + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return (numerator / denominator).permute(0, 2, 3, 1)


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 copy of ``array`` on ``device``."""
    return torch.tensor(np.asarray(array, dtype=np.float32), device=device)


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy of ``tensor``."""
    return tensor.detach().to("cpu", torch.float32).numpy().copy()
