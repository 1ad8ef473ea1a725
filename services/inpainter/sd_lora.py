"""The ``sd-lora`` inpainter: Stable Diffusion inpainting with a LoRA fitted to the subject (the paper's).

``fit_subject`` trains a low-rank adapter (peft LoRA on the UNet's attention projections) so that the
inpainting model, prompted with ``"A photo of sks"``, fills masked regions with the subject. Training follows
RealFill: each step takes a reference, flips and rotates it, hides random rectangles (or all of it) behind
a training mask, and learns to denoise it; the loss counts only the reference's own foreground, so the
background around a cut-out subject teaches nothing. The text encoder stays frozen.

``inpaint`` loads an adapter by its bytes (kept per sha256 on each replica), noises each rendered view to the
strength point (strength 0.3 runs only the last 30% of the schedule, so the view's layout survives) and
denoises it with the mask; the decoded pixels replace only masked ones, so every unmasked pixel comes back
bit-identical.

Both run on the model the service loaded at start (``SdLoraBackend``: a local folder, an ``s3://`` prefix or a
hub id; see ``services.common.models``), one call at a time (one GPU, one model).

The subject artifact is a canonical safetensors file (``services.inpainter.artifacts``) of the adapter's
weights (float32) with metadata: backend and format, the base model it was fitted on (inpainting with
another refuses it), rank, alpha and prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence

import cv2
import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionInpaintPipeline
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from services.common.errors import ConfigError, InvalidArgument
from services.common.models import describe_device, resolve_model, torch_device, torch_dtype
from services.common.serial import one_call_at_a_time
from services.inpainter.artifacts import canonical_safetensors, read_safetensors_metadata
from services.inpainter.contract import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_INFERENCE_STEPS,
    FitConfig,
    InpaintCall,
    InvalidSubject,
    check_fit_inputs,
    check_inpaint_inputs,
)

BACKEND = "sd-lora"
ARTIFACT_FORMAT = "1"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
FULL_MASK_PROBABILITY = 0.25  # RealFill: some training masks hide the whole image
MAX_MASK_BOXES = 5


class SdLoraBackend:
    """Subject LoRA fitting and inpainting with a ``StableDiffusionInpaintPipeline``'s components.

    Args:
        model: model URI of a 9-channel inpainting pipeline (for example
            ``stabilityai/stable-diffusion-2-inpainting``), see ``services.common.models.resolve_model``.
        store: the object store, for ``s3://`` model URIs.
        model_cache_dir: where ``s3://`` models are downloaded to ("" for a temporary folder).
        device, dtype: where and in what precision the model runs ("auto": the GPU in float16, else the CPU
            in float32). LoRA weights train in float32 whatever ``dtype`` is.
        resolution: the square size views and references are processed at, a multiple of 64; 0 for the
            model's native size (``unet.config.sample_size * 8``: 512 for SD2).
        batch_size: views denoised together in one UNet call.
        fit_batch_size: references per training step.
        adapter_cache_size: adapters kept loaded in the UNet, least recently used evicted.

    Raises:
        ConfigError: a setting out of range, a model that is not a 9-channel inpainting UNet, an unusable
            model URI or device.
    """

    name = BACKEND
    subject_cache_size = 8  # an SD2 LoRA of rank 16 is 16 MB
    default_strength = 0.3
    """The paper's point on the noise schedule: the last 30% of the steps re-draw appearance while the
    view's layout survives."""

    def __init__(
        self,
        model: str,
        *,
        store=None,
        model_cache_dir: str = "",
        device: str = "auto",
        dtype: str = "auto",
        resolution: int = 0,
        batch_size: int = 4,
        fit_batch_size: int = 1,
        adapter_cache_size: int = 4,
    ):
        checks = [
            (
                resolution == 0 or (resolution % 64 == 0 and 64 <= resolution <= 2048),
                "resolution",
                resolution,
            ),
            (batch_size >= 1, "batch_size", batch_size),
            (fit_batch_size >= 1, "fit_batch_size", fit_batch_size),
            (adapter_cache_size >= 1, "adapter_cache_size", adapter_cache_size),
        ]
        for ok, setting, value in checks:
            if not ok:
                raise ConfigError(f"sd-lora backend: {setting} is out of range, got {value!r}.")
        diffusers.utils.logging.disable_progress_bar()  # progress bars would garble the JSON logs
        self.base_model = model
        self._device = torch_device(device)
        self._dtype = torch_dtype(dtype, self._device)
        folder = resolve_model(model, store=store, cache_dir=model_cache_dir)
        pipeline = StableDiffusionInpaintPipeline.from_pretrained(
            folder, dtype=self._dtype, safety_checker=None, requires_safety_checker=False
        )
        self.unet, self.vae = pipeline.unet, pipeline.vae
        self.text_encoder, self.tokenizer, self.scheduler = (
            pipeline.text_encoder,
            pipeline.tokenizer,
            pipeline.scheduler,
        )
        if self.unet.config.in_channels != 9:
            raise ConfigError(
                f"model {model!r} has a UNet with {self.unet.config.in_channels} input channels; sd-lora "
                "needs an inpainting UNet with 9 (noisy latents 4, mask 1, masked-image latents 4)."
            )
        for part in (self.unet, self.vae, self.text_encoder):
            part.to(self._device).requires_grad_(False).eval()
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.unet.config.sample_size * self.vae_scale
        self.batch_size = batch_size
        self.fit_batch_size = fit_batch_size
        self.adapter_cache_size = adapter_cache_size
        self._adapters: OrderedDict[str, dict[str, str]] = OrderedDict()  # sha256 -> metadata, LRU

    @property
    def device(self) -> str:
        return describe_device(self._device, self._dtype)

    # -- fitting ----------------------------------------------------------------------------------------

    @one_call_at_a_time
    def fit_subject(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        config: FitConfig,
        progress: Callable[[int, int, float], None],
    ) -> bytes:
        """Train a LoRA on the references (see the module docstring); ``progress(step, steps, loss)`` after
        each step with the step's masked loss.

        Args:
            images: ``[R, H, W, 3]`` uint8 references.
            masks: ``[R, H, W]`` float32 in [0, 1], their foreground; the loss counts only it.
            config: steps, learning rate, rank, prompt, resolution (0: the backend's), flip, rotation, seed.
            progress: called after every step; may raise to stop.

        Returns:
            The adapter as safetensors bytes, a function of the inputs, the base model and ``config``.
        """
        # 1. Check inputs and prepare the references at the training resolution.
        check_fit_inputs(images, masks)
        size = config.resolution or self.resolution
        if size % 64:
            raise InvalidArgument("settings.resolution", size, "must be a multiple of 64 for sd-lora")
        rng = np.random.default_rng(config.seed)
        generator = torch.Generator("cpu").manual_seed(config.seed)
        references = [_letterbox(image, mask, size) for image, mask in zip(images, masks, strict=True)]

        # 2. Add a fresh adapter; only its weights train, in float32.
        name = f"fit_{config.seed}_{threading.get_ident()}"
        torch.manual_seed(config.seed)  # LoRA's A matrices start random
        with _several_adapters():
            self.unet.add_adapter(
                LoraConfig(r=config.rank, lora_alpha=config.rank, target_modules=list(UNET_TARGETS)),
                adapter_name=name,
            )
        self.unet.set_adapter(name)
        trainable = [p for key, p in self.unet.named_parameters() if "lora_" in key and f".{name}." in key]
        for param in trainable:
            param.data = param.data.float()
            param.requires_grad_(True)
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=1e-2)
        try:
            self.unet.train()
            # 3. The training loop; the prompt is fixed and the text encoder frozen: encode it once.
            context = self._encode_prompt([config.prompt])
            for step in range(1, config.steps + 1):
                batch = [
                    _augment(*references[int(rng.integers(len(references)))], config, rng)
                    for _ in range(self.fit_batch_size)
                ]
                loss = self._training_loss(batch, context, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                progress(step, config.steps, float(loss.detach()))
            # 4. The adapter's weights, as float32 numpy arrays.
            state = get_peft_model_state_dict(self.unet, adapter_name=name)
            tensors = {key: value.detach().float().cpu().numpy() for key, value in state.items()}
        finally:
            self.unet.eval()
            with _several_adapters():
                self.unet.delete_adapters(name)
        metadata = {
            "backend": BACKEND,
            "format": ARTIFACT_FORMAT,
            "base_model": self.base_model,
            "rank": str(config.rank),
            "lora_alpha": str(config.rank),
            "prompt": config.prompt,
            "steps": str(config.steps),
            "seed": str(config.seed),
        }
        return canonical_safetensors(tensors, metadata)

    @one_call_at_a_time
    def subject_loss(
        self, images: np.ndarray, masks: np.ndarray, subject: bytes | None, *, samples: int = 8, seed: int = 0
    ) -> float:
        """The fit's masked denoising loss on references under an adapter, over fixed random draws (the
        same for every ``subject`` given the same ``seed``): how well a subject model explains its images.

        Args:
            images: ``[R, H, W, 3]`` uint8; masks: ``[R, H, W]`` float32 foreground, as for ``fit_subject``.
            subject: an artifact of ``fit_subject``, or None for the base model alone (with the default
                prompt).
            samples: draws (reference, training mask, timestep, noise) averaged over; no augmentation.
            seed: seeds the draws.
        """
        check_fit_inputs(images, masks)
        metadata = None if subject is None else _read_metadata(subject)
        references = [_letterbox(im, mask, self.resolution) for im, mask in zip(images, masks, strict=True)]
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.no_grad():
            if metadata is None:
                if getattr(self.unet, "peft_config", None):
                    self.unet.disable_adapters()
            else:
                self._activate(subject, metadata)
            context = self._encode_prompt([FitConfig().prompt if metadata is None else metadata["prompt"]])
            losses = [
                float(self._training_loss([references[i % len(references)]], context, generator))
                for i in range(samples)
            ]
        return float(np.mean(losses))

    def _training_loss(
        self, batch: list[tuple[np.ndarray, np.ndarray]], context: torch.Tensor, generator
    ) -> torch.Tensor:
        """The masked denoising loss of one batch of augmented references ``(rgb [S, S, 3] uint8,
        foreground [S, S] float32)``, prompted with ``context`` ``[1, 77, D]`` (the encoded prompt)."""
        dev, dtype = self._device, self._dtype
        images = torch.from_numpy(np.stack([rgb for rgb, _ in batch])).permute(0, 3, 1, 2).float() / 127.5 - 1
        foreground = torch.from_numpy(np.stack([fg for _, fg in batch]))[:, None]
        hidden = torch.stack([_training_mask(images.shape[-1], generator) for _ in batch])[:, None]
        masked = images * (hidden < 0.5)
        with torch.no_grad():
            latents = self._encode(images.to(dev, dtype), generator)
            masked_latents = self._encode(masked.to(dev, dtype), generator)
        size = latents.shape[-2:]
        mask_latents = F.interpolate(hidden, size=size).to(dev, dtype)
        weight = F.interpolate(foreground, size=size, mode="area").to(dev)
        noise = torch.randn(latents.shape, generator=generator).to(dev, dtype)
        t = torch.randint(
            0, self.scheduler.config.num_train_timesteps, (len(batch),), generator=generator
        ).to(dev)
        noisy = self.scheduler.add_noise(latents, noise, t)
        with self._autocast():
            prediction = self.unet(
                torch.cat([noisy, mask_latents, masked_latents], dim=1),
                t,
                encoder_hidden_states=context.expand(len(batch), -1, -1),
            ).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        error = (prediction.float() - target.float()) ** 2
        return (error * weight).sum() / (weight.sum() * error.shape[1]).clamp_min(1e-8)

    # -- inpainting -------------------------------------------------------------------------------------

    def inpaint(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        alpha: np.ndarray | None,
        subject: bytes,
        strength: float,
        seed: int,
        *,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> np.ndarray:
        """Inpaint the masked pixels of V views with the subject's adapter.

        Args:
            images: ``[V, H, W, 3]`` uint8 rendered views.
            masks: ``[V, H, W]`` bool, True where pixels may change.
            alpha: ``[V, H, W]`` float32 or None; unused (diffusion fills holes like any masked pixel).
            subject: the artifact of ``fit_subject``, from any replica with the same base model.
            strength: in [0, 1]; ``max(1, int(num_inference_steps * strength))`` steps run, the last of the
                schedule; 0 returns the views unchanged.
            seed: view v's noise is drawn from ``torch.Generator().manual_seed(seed + v)``, so a view's
                result does not depend on the batch it is in.
            num_inference_steps: the length of the full schedule.
            guidance_scale: classifier-free guidance; 1 or less turns it off.
            on_step: called as ``on_step(i, t, latents)`` after each denoising step (tests and progress).

        Returns:
            ``[V, H, W, 3]`` uint8; unmasked pixels are bit-identical to ``images``.

        Raises:
            InvalidSubject: ``subject`` is not an sd-lora adapter of this base model.
        """
        call = InpaintCall(images, masks, alpha, subject, strength, seed, num_inference_steps, guidance_scale)
        (result,) = self.inpaint_together([call], on_step)
        if isinstance(result, Exception):
            raise result
        return result

    @one_call_at_a_time
    def inpaint_together(
        self,
        calls: Sequence[InpaintCall],
        on_step: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> list[np.ndarray | InvalidSubject | ValueError]:
        """Several ``inpaint`` calls at once: the views of calls with the same subject and schedule share
        UNet batches (of ``batch_size`` views), so calls that arrive together (Triton's dynamic batching)
        cost about as much as one call with all their views.

        Returns:
            Each call's result in its place: its ``[V, H, W, 3]`` uint8 views, as ``inpaint`` returns
            them, or the error that call alone raises (the others still run).
        """
        # 1. Check each call; a call with nothing to inpaint returns its views as they are.
        results: list = [None] * len(calls)
        groups: dict[tuple, tuple[bytes, dict[str, str], list[tuple[int, int]]]] = {}
        for i, call in enumerate(calls):
            try:
                metadata = self._check_call(call)
            except (InvalidSubject, ValueError) as exc:
                results[i] = exc
                continue
            results[i] = call.images.copy()
            if metadata is None:
                continue
            key = (
                hashlib.sha256(call.subject).digest(),
                call.strength,
                call.num_inference_steps,
                call.guidance_scale,
                call.images.shape[1:3],
            )
            group = groups.setdefault(key, (call.subject, metadata, []))
            group[2].extend((i, v) for v in range(len(call.images)))
        with torch.no_grad():
            for subject, metadata, views in groups.values():
                first = calls[views[0][0]]
                # 2. Activate the subject's adapter and encode its prompt.
                self._activate(subject, metadata)
                context = self._encode_prompt([metadata["prompt"]])
                if first.guidance_scale > 1:
                    context = torch.cat([self._encode_prompt([""]), context])
                # 3. The views of every call in the group, in batches; each runs the visible loop in _denoise.
                for start in range(0, len(views), self.batch_size):
                    batch = views[start : start + self.batch_size]
                    decoded = self._denoise(
                        np.stack([calls[i].images[v] for i, v in batch]),
                        np.stack([calls[i].masks[v] for i, v in batch]),
                        [calls[i].seed + v for i, v in batch],
                        context,
                        first.strength,
                        first.num_inference_steps,
                        first.guidance_scale,
                        on_step,
                    )
                    # 4. Composite: only masked pixels take the decoded colour.
                    for j, (i, v) in enumerate(batch):
                        mask = calls[i].masks[v]
                        results[i][v][mask] = decoded[j][mask]
        return results

    def _check_call(self, call: InpaintCall) -> dict[str, str] | None:
        """The subject's metadata, or None when the call changes nothing (strength 0, an empty mask).

        Raises:
            ValueError: an input of the wrong shape or type, a setting out of range.
            InvalidSubject: not an sd-lora adapter of this base model.
        """
        check_inpaint_inputs(call.images, call.masks, call.alpha, call.strength)
        if call.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {call.num_inference_steps}")
        if call.strength == 0 or not call.masks.any():
            return None
        metadata = _read_metadata(call.subject)
        if metadata["base_model"] != self.base_model:
            raise InvalidSubject(
                f"was fitted on base model {metadata['base_model']!r}, "
                f"and this inpainter runs {self.base_model!r}"
            )
        return metadata

    def _denoise(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        seeds: list[int],
        context: torch.Tensor,
        strength: float,
        num_inference_steps: int,
        guidance_scale: float,
        on_step,
    ) -> np.ndarray:
        """Denoise ``B`` views from the strength point; returns the decoded ``[B, H, W, 3]`` uint8."""
        dev, dtype = self._device, self._dtype
        height, width = images.shape[1:3]
        size = self.resolution
        # 1. Views and masks at the model's resolution, in [-1, 1]; masked pixels hidden from the model.
        rgb = np.stack([cv2.resize(view, (size, size), interpolation=cv2.INTER_AREA) for view in images])
        mask = np.stack(
            [cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) for m in masks]
        )
        image = (torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 127.5 - 1).to(dev, dtype)
        mask_t = torch.from_numpy(mask)[:, None].float().to(dev, dtype)
        # 2. Latents of the views and of the views with the masked region blanked out.
        image_latents = self._encode(image)
        masked_latents = self._encode(image * (mask_t < 0.5))
        mask_latents = F.interpolate(mask_t, size=image_latents.shape[-2:])
        # 3. The schedule from the strength point on.
        self.scheduler.set_timesteps(num_inference_steps, device=dev)
        run = max(1, min(int(num_inference_steps * strength), num_inference_steps))
        timesteps = self.scheduler.timesteps[(num_inference_steps - run) * self.scheduler.order :]
        # 4. Noise each view to the first timestep, with its own generator.
        noise = torch.stack(
            [torch.randn(image_latents.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds]
        ).to(dev, dtype)
        latents = self.scheduler.add_noise(image_latents, noise, timesteps[:1])
        guided = guidance_scale > 1
        copies = 2 if guided else 1
        batch_context = context.repeat_interleave(len(images), dim=0)
        # 5. The denoising loop.
        for i, t in enumerate(timesteps):
            model_input = self.scheduler.scale_model_input(torch.cat([latents] * copies), t)
            model_input = torch.cat(
                [model_input, torch.cat([mask_latents] * copies), torch.cat([masked_latents] * copies)], dim=1
            )
            with self._autocast():
                noise_pred = self.unet(model_input, t, encoder_hidden_states=batch_context).sample
            if guided:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(noise_pred, t, latents).prev_sample
            if on_step is not None:
                on_step(i, int(t), latents)
        # 6. Decode and return to the views' size.
        decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        pixels = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return np.stack([cv2.resize(view, (width, height), interpolation=cv2.INTER_CUBIC) for view in pixels])

    # -- shared pieces ----------------------------------------------------------------------------------

    def _encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, 3, S, S]`` in [-1, 1] to scaled latents ``[B, 4, S/8, S/8]``: a posterior sample when
        ``generator`` is given (training), else its mean (inference, deterministic)."""
        posterior = self.vae.encode(images).latent_dist
        if generator is None:
            latents = posterior.mean
        else:
            eps = torch.randn(posterior.mean.shape, generator=generator).to(images.device, images.dtype)
            latents = posterior.mean + posterior.std * eps
        return latents * self.vae.config.scaling_factor

    def _encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP hidden states ``[B, 77, D]`` of the prompts, padded to the tokenizer's length."""
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self._device)
        with torch.no_grad(), self._autocast():
            return self.text_encoder(ids)[0].to(self._dtype)

    def _autocast(self):
        """Mixed precision on a GPU (float32 LoRA weights, half-precision base weights); none on a CPU."""
        return torch.autocast(self._device.type, dtype=self._dtype, enabled=self._device.type == "cuda")

    def _activate(self, subject: bytes, metadata: dict[str, str]) -> None:
        """Make the adapter in ``subject`` the active one, loading it unless it is among the cached."""
        name = "subject_" + hashlib.sha256(subject).hexdigest()[:32]
        with _several_adapters():
            if name not in self._adapters:
                self._load_adapter(name, subject, metadata)
            self._adapters.move_to_end(name)
            self.unet.set_adapter(name)
            self.unet.enable_adapters()

    def _load_adapter(self, name: str, subject: bytes, metadata: dict[str, str]) -> None:
        """Add the artifact's adapter under ``name``, evicting the least recently used beyond the cache."""
        try:
            state = load_safetensors(subject)
            config = LoraConfig(
                r=int(metadata["rank"]),
                lora_alpha=float(metadata["lora_alpha"]),
                target_modules=list(UNET_TARGETS),
            )
        except (SafetensorError, ValueError) as exc:
            raise InvalidSubject(f"cannot be read ({exc})") from exc
        self.unet.add_adapter(config, adapter_name=name)
        try:
            result = set_peft_model_state_dict(self.unet, state, adapter_name=name)
            if result.unexpected_keys:
                raise InvalidSubject(
                    f"holds weights that do not fit this model ({result.unexpected_keys[0]})"
                )
        except RuntimeError as exc:  # a shape that does not fit
            self.unet.delete_adapters(name)
            raise InvalidSubject(f"holds weights that do not fit this model ({exc})") from exc
        except InvalidSubject:
            self.unet.delete_adapters(name)
            raise
        self._adapters[name] = metadata
        while len(self._adapters) > self.adapter_cache_size:
            self.unet.delete_adapters(self._adapters.popitem(last=False)[0])


@contextlib.contextmanager
def _several_adapters():
    """peft warns whenever a model gets a second adapter or loses its active one; holding several and
    switching between them is what the adapter cache does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"peft\.")
        yield


def _read_metadata(subject: bytes) -> dict[str, str]:
    """The metadata of an sd-lora artifact, checked before its weights are parsed."""
    try:
        metadata = read_safetensors_metadata(subject)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSubject(f"is not a safetensors file ({exc})") from exc
    if (metadata.get("backend"), metadata.get("format")) != (BACKEND, ARTIFACT_FORMAT):
        raise InvalidSubject(
            f"is a {metadata.get('backend')!r} model of format {metadata.get('format')!r}, "
            f"not a {BACKEND!r} adapter of format {ARTIFACT_FORMAT!r}"
        )
    missing = [key for key in ("base_model", "rank", "lora_alpha", "prompt") if key not in metadata]
    if missing:
        raise InvalidSubject(f"lacks metadata {', '.join(missing)}")
    return metadata


def _letterbox(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference scaled to fit a ``size`` square, centred; the padding is grey and outside the mask.

    Returns ``(rgb [size, size, 3] uint8, foreground [size, size] float32)``.
    """
    height, width = mask.shape
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    top, left = (size - h) // 2, (size - w) // 2
    rgb = np.full((size, size, 3), 127, np.uint8)
    foreground = np.zeros((size, size), np.float32)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    rgb[top : top + h, left : left + w] = cv2.resize(image, (w, h), interpolation=interpolation)
    foreground[top : top + h, left : left + w] = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    return rgb, foreground


def _augment(
    rgb: np.ndarray, foreground: np.ndarray, config: FitConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random horizontal flip (when ``config.flip``) and rotation by up to ``config.max_rotation_deg``
    about the centre; pixels rotated in from outside are grey and outside the foreground."""
    if config.flip and rng.random() < 0.5:
        rgb, foreground = rgb[:, ::-1], foreground[:, ::-1]
    angle = float(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    if angle:
        size = rgb.shape[0]
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
        rgb = cv2.warpAffine(np.ascontiguousarray(rgb), matrix, (size, size), borderValue=(127, 127, 127))
        foreground = cv2.warpAffine(np.ascontiguousarray(foreground), matrix, (size, size), borderValue=0)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(foreground)


def _training_mask(size: int, generator: torch.Generator) -> torch.Tensor:
    """A RealFill-style random training mask ``[size, size]`` float32, 1 = hidden: the whole image with
    probability ``FULL_MASK_PROBABILITY``, else 1 to ``MAX_MASK_BOXES`` rectangles of 10% to 50% of the
    side."""
    mask = torch.zeros(size, size)
    if torch.rand((), generator=generator) < FULL_MASK_PROBABILITY:
        return mask + 1
    boxes = int(torch.randint(1, MAX_MASK_BOXES + 1, (), generator=generator))
    for _ in range(boxes):
        h, w = (math.ceil(size * (0.1 + 0.4 * float(torch.rand((), generator=generator)))) for _ in "hw")
        top = int(torch.randint(0, size - h + 1, (), generator=generator))
        left = int(torch.randint(0, size - w + 1, (), generator=generator))
        mask[top : top + h, left : left + w] = 1
    return mask
