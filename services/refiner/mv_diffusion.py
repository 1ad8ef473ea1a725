"""The ``mv-diffusion`` refiner: all views denoised jointly by a multi-view diffusion model, with mask-aware
latent updates (the paper's refinement step).

Every view is VAE-encoded (``z0``), noised to the strength point (strength 0.3 runs the last 30% of the
schedule, so the views' layout survives) and denoised by a camera-conditioned multi-view denoiser that sees
all views at once, so each view's details are drawn consistently with the others. After every step the
latents are blended with the input's own latents, forward-noised to the same level::

    z = z_denoised * M + z_known_noised * (1 - M)

where ``M`` is the update mask at latent resolution. The source view has ``M = 0``: at every step its latents
are exactly its noised input, so it conditions the others and comes back as it went in (up to the VAE round
trip, which the final pixel composite removes: pixels whose update mask is 0 are copied bit for bit).

The denoiser is any member of the MVDream family, called as
``denoiser(x=[B*F, 4, h, w], timesteps=[B*F], context=[B*F, 77, D], num_frames=F, camera=[B*F, 16])`` and
returning the noise prediction. Models this was written for (``load_mv_model``):

- folders written by ``services.refiner.mv_denoiser.save_mv_refiner`` (the built-in ``MultiViewDenoiser``;
  random weights, for tests and benchmarks);
- ``ashawkey/mvdream-sd2.1-diffusers``, the diffusers port of MVDream (SD2.1-base, 4 views, 256 x 256;
  code in github.com/ashawkey/mvdream_diffusers). Its denoiser, ``MultiViewUNetModel``, is code shipped
  with the weights: loading it runs that code, so it loads only with ``trust_remote_code`` set explicitly
  (``TIRE_REFINER_TRUST_REMOTE_CODE=true``), and that code imports ``xformers`` (its only attention: a
  CUDA machine), ``einops`` and ``kiui``, which the refiner's image must then have (kiui 0.3.4 with
  ``opencv-python-headless`` and ``scipy``: the ``kiui.cam`` of kiui 0.3.5 fails to import). MVDream was
  trained on 4 views; here it sees every view of the orbit (up to ``max_joint_views``) at once, which its
  attention allows.

ImageDream (``ashawkey/imagedream-ipmv-diffusers``) is refused: its denoiser also needs an image prompt
(CLIP image embeddings and the reference's latents as an extra view), which this loop does not give.

A hub id (``owner/name``) needs the network, or a hub cache that already holds it (``HF_HUB_OFFLINE=1``
reads only that); in a cluster, push the model folder to the object store and use its ``s3://`` URI.

Views beyond ``max_joint_views`` are split into groups that each hold the source view, so every group is
conditioned on it; views in different groups do not see each other. The noise of each view is drawn from
its own generator (the seed and the view's index), so a view's noise does not depend on how views are
grouped or batched.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from services.common.cameras import Cameras
from services.common.errors import ConfigError, InvalidArgument
from services.common.gaussians import Gaussians
from services.common.models import describe_device, resolve_model, torch_device, torch_dtype
from services.common.serial import one_call_at_a_time
from services.common.views import Views
from services.refiner.mv_denoiser import DENOISER_CLASS, MultiViewDenoiser

COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler", "unet")
# What a hub snapshot downloads: configurations, code and safetensors weights (no pickles).
_HUB_FILES = ["*.json", "*.txt", "*.py", "*.safetensors"]
_DEFAULT_LEVELS = 4  # Stable Diffusion UNets: 4 resolution levels, 3 downsamplings
# Denoiser classes shipped as code, by (sha256 of the code file, class name). diffusers executes a code file
# again on every load, into the same module object, so a model loaded earlier would find its module's classes
# replaced (MVDream's CondSequential then no longer recognises its own ResBlocks): each code runs once.
_SHIPPED_CLASSES: dict[tuple[str, str], type] = {}
_SHIPPED_CLASSES_LOCK = threading.Lock()

# OpenCV camera axes (x right, y down, z forward) to OpenGL ones (x right, y up, z backward).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
# MVDream's "blender" world from this project's y-up world: (x, y, z) -> (x, -z, y), so z is up.
_Y_UP_TO_Z_UP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

StepCallback = Callable[[int, torch.Tensor, torch.Tensor, list[int]], None]


def mvdream_cameras(cameras: Cameras) -> np.ndarray:
    """The cameras as MVDream's denoiser takes them.

    MVDream conditions on each view's camera-to-world matrix with OpenGL camera axes (x right, y up,
    looking down -z), the camera moved to distance 1 from the origin along its direction, in a z-up
    ("blender") world. This project's cameras are OpenCV world-to-camera in a y-up world with the front
    on +z (``services.common.cameras``, the same world as kiui's orbit cameras MVDream was trained
    with), so: invert, flip the camera's y and z axes, normalise the position, and map the world
    (x, y, z) to (x, -z, y). Azimuth 0 (the camera on +z) becomes the camera at (0, -1, 0), its up axis
    +z; azimuth 90 (on +x) the camera at (1, 0, 0). MVDream's views orbit the origin: the direction,
    not the distance, of each camera is what it was trained on.

    Args:
        cameras: V cameras (OpenCV world-to-camera ``viewmats [V, 4, 4]``).

    Returns:
        ``[V, 16]`` float32, each a 4 x 4 camera-to-world matrix flattened row-major.

    Raises:
        InvalidArgument: a camera at the world origin, which has no direction.
    """
    camera_to_world = np.linalg.inv(cameras.viewmats.astype(np.float64)) @ _CV_TO_GL
    distance = np.linalg.norm(camera_to_world[:, :3, 3], axis=1)
    if (distance < 1e-6).any():
        raise InvalidArgument(
            "views.cameras",
            f"camera {int(np.argmax(distance < 1e-6))} at the origin",
            "must look at the object from around it (mv-diffusion takes each camera's direction)",
        )
    camera_to_world[:, :3, 3] /= distance[:, None]
    return (_Y_UP_TO_Z_UP @ camera_to_world).reshape(len(cameras), 16).astype(np.float32)


@dataclass(frozen=True, eq=False)
class MultiViewModel:
    """A loaded multi-view diffusion model, on one device in one dtype.

    Attributes:
        vae, text_encoder, tokenizer, scheduler: as in Stable Diffusion 2.
        denoiser: the multi-view denoiser (see the module docstring for how it is called).
        levels: the denoiser's resolution levels; latents must be a multiple of ``2 ** (levels - 1)``.
    """

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    denoiser: torch.nn.Module
    levels: int

    @property
    def vae_scale(self) -> int:
        """Pixels per latent along each side (8 for the SD VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def multiple(self) -> int:
        """What the model's square resolution must be a multiple of, in pixels."""
        return self.vae_scale * 2 ** (self.levels - 1)


def load_mv_model(
    uri: str,
    *,
    store=None,
    cache_dir: str = "",
    trust_remote_code: bool = False,
    device: torch.device,
    dtype: torch.dtype,
) -> MultiViewModel:
    """Load a multi-view diffusion model folder (see the module docstring for the models it takes).

    The folder has ``vae/``, ``text_encoder/`` (CLIP), ``tokenizer/``, ``scheduler/`` and ``unet/`` (the
    denoiser). A denoiser of the built-in class loads directly; any other class is code shipped with the
    weights, named in ``model_index.json`` as ``"unet": [module, class]`` with the module in ``unet/`` (or
    the folder's root), and is loaded through diffusers' dynamic modules only if ``trust_remote_code``.
    The scheduler is DDIM (eta 0) whatever the folder names, with ``steps_offset=1`` and no sample
    clipping, as MVDream's pipeline forces.

    Args:
        uri: a local folder, an ``s3://bucket/prefix`` or a hub id (``services.common.models``).
        store: the object store, for ``s3://`` URIs.
        cache_dir: where ``s3://`` models are downloaded to ("" for a temporary folder).
        trust_remote_code: allow running the denoiser code that ships with the model.
        device, dtype: where and in what precision the model runs.

    Raises:
        ConfigError: an unusable URI, a missing component, a remote denoiser without
            ``trust_remote_code``, its code missing or failing to import, or an ImageDream denoiser.
    """
    folder = _local_folder(uri, store, cache_dir)
    missing = [part for part in COMPONENTS if not (folder / part).is_dir()]
    if missing:
        raise ConfigError(f"model {uri!r} lacks {', '.join(missing)}: a multi-view model needs {COMPONENTS}.")
    try:
        config = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {uri!r} has no readable unet/config.json: {exc}") from exc
    if config.get("ip_dim", 0):
        raise ConfigError(
            f"model {uri!r} is an ImageDream denoiser (ip_dim={config['ip_dim']}), which needs an image "
            "prompt this refiner does not give; use an MVDream model (ashawkey/mvdream-sd2.1-diffusers)."
        )
    denoiser_class = _denoiser_class(folder, uri, str(config.get("_class_name", "")), trust_remote_code)
    denoiser = denoiser_class.from_pretrained(folder, subfolder="unet", dtype=dtype)
    if isinstance(denoiser, MultiViewDenoiser):
        levels = denoiser.levels
    else:  # MVDream's UNet keeps the LDM names: channel_mult has one entry per level
        levels = len(config.get("channel_mult") or config.get("block_out_channels") or ()) or _DEFAULT_LEVELS
    model = MultiViewModel(
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=dtype),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        scheduler=DDIMScheduler.from_pretrained(
            folder, subfolder="scheduler", steps_offset=1, clip_sample=False
        ),
        denoiser=denoiser,
        levels=levels,
    )
    for part in (model.vae, model.text_encoder, model.denoiser):
        part.to(device).requires_grad_(False).eval()
    return model


def _local_folder(uri: str, store, cache_dir: str) -> Path:
    """The local folder holding model ``uri``; a hub id is downloaded (or read from the hub cache)."""
    resolved = resolve_model(uri, store=store, cache_dir=cache_dir)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved, allow_patterns=_HUB_FILES))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model {uri!r} could not be fetched from the Hugging Face hub ({exc}); without the network, "
            "use a local folder or an s3:// copy of it."
        ) from exc


def _denoiser_class(folder: Path, uri: str, class_name: str, trust_remote_code: bool) -> type:
    """The class of the model's denoiser: the built-in one, or the code shipped with the model."""
    if class_name == DENOISER_CLASS:
        return MultiViewDenoiser
    if not trust_remote_code:
        raise ConfigError(
            f"model {uri!r} has a denoiser of class {class_name!r}, whose code ships with the model; loading "
            "it runs that code, so it needs TIRE_REFINER_TRUST_REMOTE_CODE=true (set it only for a model "
            "whose code you trust)."
        )
    try:
        index = json.loads((folder / "model_index.json").read_text())
        module, indexed_class = index["unet"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f'model {uri!r} has no model_index.json entry "unet": [module, class] naming the code of its '
            f"denoiser {class_name!r}: {exc!r}"
        ) from exc
    if indexed_class != class_name:
        raise ConfigError(
            f"model {uri!r} names its denoiser {indexed_class!r} in model_index.json but {class_name!r} in "
            "unet/config.json."
        )
    module_file = f"{module}.py"
    if (folder / "unet" / module_file).is_file():
        subfolder = "unet"  # where diffusers looks for a component's code (MVDream: unet/mv_unet.py)
    elif (folder / module_file).is_file():
        subfolder = None
    else:
        raise ConfigError(
            f"model {uri!r} lacks {module_file}, the code of its denoiser, in unet/ and its root."
        )
    from diffusers.utils.dynamic_modules_utils import get_class_from_dynamic_module

    code = (folder / (subfolder or "") / module_file).read_bytes()
    key = (hashlib.sha256(code).hexdigest(), class_name)
    with _SHIPPED_CLASSES_LOCK:
        if key in _SHIPPED_CLASSES:
            return _SHIPPED_CLASSES[key]
        # Code we do not own can fail in any way as it runs (kiui 0.3.5 makes it raise NameError), and
        # DIFFUSERS_DISABLE_REMOTE_CODE makes diffusers raise ValueError: all are a model that cannot load.
        try:
            loaded = get_class_from_dynamic_module(
                str(folder),
                module_file=module_file,
                subfolder=subfolder,
                class_name=class_name,
                trust_remote_code=True,
            )
        except Exception as exc:
            raise ConfigError(
                f"the denoiser code of model {uri!r} ({module_file}) cannot be loaded: "
                f"{type(exc).__name__}: {exc}. Install what it imports (MVDream's: xformers, einops and "
                "kiui 0.3.4) in the refiner's environment."
            ) from exc
        _SHIPPED_CLASSES[key] = loaded
        return loaded


def to_model_pixels(rgb: np.ndarray, size: int) -> torch.Tensor:
    """Views as the VAE takes them.

    Args:
        rgb: ``[V, H, W, 3]`` uint8.
        size: the model's square resolution (views of another shape are stretched to it).

    Returns:
        ``[V, 3, size, size]`` float32 in [-1, 1] on the CPU (bilinear, antialiased when shrinking).
    """
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(
            pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return pixels


def from_model_pixels(pixels: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Decoded views back at the views' size.

    Args:
        pixels: ``[V, 3, R, R]`` in [-1, 1] (any dtype or device).
        height, width: the views' size.

    Returns:
        ``[V, H, W, 3]`` float32 in [0, 255].
    """
    pixels = pixels.float().cpu()
    if pixels.shape[-2:] != (height, width):
        pixels = F.interpolate(
            pixels, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
    return ((pixels.clamp(-1.0, 1.0) + 1.0) * 127.5).permute(0, 2, 3, 1).numpy()


def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """``z0``: the VAE posterior's mean, scaled (deterministic). ``[V, 3, R, R]`` -> ``[V, C, R/s, R/s]``."""
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def view_noise(seed: int, view: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise ``shape`` (float32, CPU) for view ``view`` of a call seeded with ``seed``: its
    own generator, so the same whatever other views are refined with it."""
    state = np.random.SeedSequence([seed, view]).generate_state(1, dtype=np.uint64)[0]
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(state)))


def latent_mask(update_mask: np.ndarray, source_index: int, latent_size: int) -> torch.Tensor:
    """M at latent resolution: a latent is free as far as the freest pixel it covers (max-pool), and the
    source view's M is 0.

    Args:
        update_mask: ``[V, H, W]`` float32 in [0, 1].
        source_index: the view held fixed.
        latent_size: the latents' side.

    Returns:
        ``[V, 1, latent_size, latent_size]`` float32 on the CPU.
    """
    mask = F.adaptive_max_pool2d(torch.from_numpy(update_mask)[:, None], latent_size)
    mask[source_index] = 0.0
    return mask


def joint_groups(count: int, source_index: int, size: int) -> list[list[int]]:
    """View indices denoised together: all ``count`` views when they fit in ``size``, else groups of at most
    ``size`` that each begin with the source view."""
    if count <= size:
        return [list(range(count))]
    others = [view for view in range(count) if view != source_index]
    step = size - 1
    return [[source_index, *others[start : start + step]] for start in range(0, len(others), step)]


class MvDiffusionBackend:
    """Multi-view diffusion refinement with mask-aware latent updates (see the module docstring).

    Args:
        model: model URI (a local folder, an ``s3://`` prefix or a hub id); required.
        store: the object store, for ``s3://`` model URIs.
        model_cache_dir: where ``s3://`` models are downloaded to ("" for a temporary folder).
        trust_remote_code: allow running denoiser code that ships with the model (MVDream's).
        device, dtype: where and in what precision the model runs ("auto": the GPU in float16, else the
            CPU in float32).
        resolution: the square size views are processed at (256 for MVDream); 0 for the views' own size,
            which must then be square and a multiple of ``vae_scale * 2 ** (levels - 1)`` (64 for MVDream).
        num_inference_steps: the full schedule; strength s runs its last ``int(steps * s)`` steps.
        guidance_scale: classifier-free guidance with the empty prompt when above 1; 1 runs none.
        prompt: the text the views are denoised with ("" by default: the views carry the content).
        max_joint_views: the most views denoised together (see the module docstring); at least 2.

    Raises:
        ConfigError: no model, a setting out of range, or a model that does not load (``load_mv_model``).
    """

    name = "mv-diffusion"
    default_strength = 0.3
    """The paper's point on the noise schedule: the last 30% of the steps."""

    def __init__(
        self,
        model: str = "",
        *,
        store=None,
        model_cache_dir: str = "",
        trust_remote_code: bool = False,
        device: str = "auto",
        dtype: str = "auto",
        resolution: int = 256,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        prompt: str = "",
        max_joint_views: int = 32,
    ):
        if not model:
            raise ConfigError(
                "refiner backend 'mv-diffusion' needs a model: set TIRE_REFINER_MODEL to a local folder, an "
                "s3://bucket/prefix or a hub id such as ashawkey/mvdream-sd2.1-diffusers (the 'consensus' "
                "backend needs none)."
            )
        checks = [
            (0 <= resolution <= 4096, "resolution", resolution),
            (1 <= num_inference_steps <= 1000, "num_inference_steps", num_inference_steps),
            (np.isfinite(guidance_scale) and guidance_scale >= 1.0, "guidance_scale", guidance_scale),
            (max_joint_views >= 2, "max_joint_views", max_joint_views),
        ]
        for ok, setting, value in checks:
            if not ok:
                raise ConfigError(f"mv-diffusion backend: {setting} is out of range, got {value!r}.")
        self.model = model
        self._device = torch_device(device)
        self._dtype = torch_dtype(dtype, self._device)
        self.components = load_mv_model(
            model,
            store=store,
            cache_dir=model_cache_dir,
            trust_remote_code=trust_remote_code,
            device=self._device,
            dtype=self._dtype,
        )
        if resolution % self.components.multiple:
            raise ConfigError(
                f"mv-diffusion backend: resolution must be a multiple of {self.components.multiple} for "
                f"model {model!r}, got {resolution}."
            )
        self.resolution = resolution
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.max_joint_views = max_joint_views
        # The prompt is fixed for the service's life: encode it (and the empty one, for guidance) once.
        self._context = self._encode_prompt(prompt)
        self._uncond_context = self._encode_prompt("") if guidance_scale > 1.0 else None

    @property
    def device(self) -> str:
        return describe_device(self._device, self._dtype)

    @torch.inference_mode()
    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """``[1, L, D]`` the text encoder's last hidden state for ``prompt`` (padded to its L tokens)."""
        tokenizer = self.components.tokenizer
        ids = tokenizer(
            prompt,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.components.text_encoder(ids.to(self._device))[0]

    @one_call_at_a_time
    def refine(
        self,
        views: Views,
        update_mask: np.ndarray,
        gaussians: Gaussians,
        source_index: int,
        strength: float,
        seed: int,
        *,
        on_step: StepCallback | None = None,
    ) -> np.ndarray:
        """See ``RefineBackend.refine``; ``gaussians`` is not used (the model reads the views only).

        The source view is held fixed whatever its mask says. Strength s runs the last ``int(steps * s)``
        steps of the schedule; under one step the views come back unchanged.

        Args:
            on_step: for tests, ``on_step(i, t, latents, group)`` before step i of each joint group, with
                the group's latents ``[F, C, h, w]`` at noise level ``t`` and its view indices.
        """
        # 1. Check inputs; with no step to run or no pixel free to change, nothing changes.
        rgb = views.rgb
        v, height, width = views.shape
        if update_mask.shape != (v, height, width):
            raise ValueError(f"update_mask has shape {update_mask.shape}, the views {(v, height, width)}")
        if not 0 <= source_index < v:
            raise ValueError(f"source_index {source_index} is not one of the {v} views")
        pixel_mask = update_mask.copy()
        pixel_mask[source_index] = 0.0
        steps_to_run = min(int(self.num_inference_steps * strength), self.num_inference_steps)
        if steps_to_run == 0 or not pixel_mask.any():
            return rgb.copy()

        # 2. Resize views to the model's resolution; their cameras in MVDream's convention.
        size = self.resolution or self._own_size(height, width)
        pixels = to_model_pixels(rgb, size)
        cameras = torch.from_numpy(mvdream_cameras(views.cameras))

        # 3. The mask at latent resolution; the source view is fixed (M = 0).
        mask = latent_mask(update_mask, source_index, size // self.components.vae_scale)

        decoded = np.zeros((v, height, width, 3), dtype=np.float32)
        with torch.inference_mode():
            # 4. Timesteps: the last steps_to_run of the schedule, from the strength point on.
            scheduler = self.components.scheduler
            scheduler.set_timesteps(self.num_inference_steps, device=self._device)
            timesteps = scheduler.timesteps[self.num_inference_steps - steps_to_run :]

            # 5-8. Denoise each joint group (all views, unless there are more than max_joint_views).
            for group in joint_groups(v, source_index, self.max_joint_views):
                if not pixel_mask[group].any():
                    continue
                latents = self._denoise(
                    pixels[group], cameras[group], mask[group], group, timesteps, seed, on_step
                )
                decoded[group] = from_model_pixels(self._decode(latents), height, width)

        # 9. Composite in pixel space: pixels whose mask is 0 keep their bytes, others blend by their mask.
        m = pixel_mask[..., None]
        blended = np.clip(np.rint(rgb * (1.0 - m) + decoded * m), 0, 255).astype(np.uint8)
        return np.where(m == 0.0, rgb, blended)

    def _own_size(self, height: int, width: int) -> int:
        """The views' own side, when the model can run at it (resolution 0)."""
        multiple = self.components.multiple
        if height != width or height % multiple:
            raise InvalidArgument(
                "views",
                f"{width}x{height} pixels",
                f"must be square with a side that is a multiple of {multiple}: this refiner runs at the "
                "views' own size (resolution 0)",
            )
        return height

    def _denoise(
        self,
        pixels: torch.Tensor,
        cameras: torch.Tensor,
        mask: torch.Tensor,
        group: list[int],
        timesteps: torch.Tensor,
        seed: int,
        on_step: StepCallback | None,
    ) -> torch.Tensor:
        """Steps 5-8 for one joint group of F views: encode, noise, and the mask-aware denoising loop.

        Args:
            pixels: ``[F, 3, R, R]`` float32 in [-1, 1].
            cameras: ``[F, 16]`` float32 (``mvdream_cameras``).
            mask: ``[F, 1, h, w]`` float32 M at latent resolution.
            group: the views' indices in the request (each view's noise is drawn by its index).
            timesteps: the steps to run, from the strength point on.

        Returns:
            ``[F, C, h, w]`` the denoised latents.
        """
        device, dtype, model = self._device, self._dtype, self.components
        scheduler, frames = model.scheduler, len(group)

        # 5. VAE-encode the views: z0, the posterior mean (deterministic).
        z0 = encode_latents(model.vae, pixels.to(device, dtype))

        # 6. Noise each view to the strength point, with its own noise.
        noise = torch.stack([view_noise(seed, view, tuple(z0.shape[1:])) for view in group]).to(device, dtype)
        latents = scheduler.add_noise(z0, noise, timesteps[:1])
        mask = mask.to(device, dtype)

        # 7. Conditioning: the prompt for every view (the empty prompt first, for guidance), the cameras.
        guided = self._uncond_context is not None
        context = self._context.expand(frames, -1, -1)
        camera = cameras.to(device, dtype)
        if guided:
            context = torch.cat([self._uncond_context.expand(frames, -1, -1), context])
            camera = torch.cat([camera, camera])

        # 8. Denoising loop, with the mask-aware update after every step.
        for i, t in enumerate(timesteps):
            if on_step is not None:
                on_step(i, t, latents, group)
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = model.denoiser(
                x=model_input,
                timesteps=t.expand(len(model_input)),
                context=context,
                num_frames=frames,
                camera=camera,
            )
            if guided:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + self.guidance_scale * (text - uncond)
            denoised = scheduler.step(noise_pred, t, latents).prev_sample
            # The known latents at the level the step reached: noised to the next timestep, z0 after the last.
            known = scheduler.add_noise(z0, noise, timesteps[i + 1 : i + 2]) if i + 1 < len(timesteps) else z0
            latents = denoised * mask + known * (1.0 - mask)
        return latents

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``[F, C, h, w]`` latents -> ``[F, 3, R, R]`` pixels in about [-1, 1]."""
        vae = self.components.vae
        return vae.decode(latents / vae.config.scaling_factor).sample
