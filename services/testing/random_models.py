"""Stable Diffusion components with random weights, built offline in the real architectures.

Tests build ``"tiny"`` ones (a few hundred kB, a denoising step in milliseconds on a CPU); GPU benchmarks
build ``"sd2"`` ones (the configurations of Stable Diffusion 2 at full size, about 1.3 B parameters with
the UNet) to time the real amount of work without downloading weights. Every model is saved with
``save_pretrained`` and loaded back by the backends through the same code path as real weights.

The tokenizer is a byte-level CLIP BPE with no merges: every character is a token. Prompts still map to
distinct ids, which is all random weights need. (transformers 5 ignores ``vocab_file``/``merges_file``
given to the constructor, so it is written to a folder and loaded from there.)
"""

from __future__ import annotations

import json
from pathlib import Path

SIZES = ("tiny", "sd2")
MV_SIZES = ("tiny", "mvdream")  # save_mv_refiner's: "mvdream" is the SD2.1-base UNet of MVDream

# Text encoder, VAE and UNet configurations per size. "sd2" follows stabilityai/stable-diffusion-2 and its
# inpainting variant: the OpenCLIP ViT-H text tower (1024 wide, 23 layers), the SD VAE, and the SD2 UNet
# (linear projections, 5/10/20/20 attention heads).
_TEXT = {
    "tiny": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
    "sd2": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=23,
        hidden_act="gelu",
    ),
}
_VAE = {
    "tiny": dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=64),
    "sd2": dict(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512
    ),
}
UNET = {
    "tiny": dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    "sd2": dict(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        sample_size=64,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    ),
}


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")


def _byte_characters() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values (GPT-2's table)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def save_tokenizer(folder: str | Path) -> Path:
    """A byte-level ``CLIPTokenizer`` (516 tokens, no merges) saved in ``folder``; returns the folder."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    characters = _byte_characters()
    tokens = [*characters, *(c + "</w>" for c in characters), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    # CLIP's context is 77 tokens; without the limit, padding to max_length overflows.
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder


def components(size: str = "tiny", *, seed: int = 0) -> dict:
    """Tokenizer, text encoder, VAE and DDIM scheduler of one size, random weights seeded by ``seed``.

    Returns:
        ``{"tokenizer", "text_encoder", "vae", "scheduler"}``, as the diffusers pipelines name them.
    """
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _check_size(size)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(save_tokenizer(folder))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408 if size == "sd2" else len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=_TEXT[size]["hidden_size"],
            **_TEXT[size],
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        **_VAE[size],
    )
    # Stable Diffusion's schedule: scaled-linear betas, epsilon prediction, steps_offset 1.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "scheduler": scheduler}


def save_sd_inpainting(folder: str | Path, size: str = "tiny", *, seed: int = 0) -> Path:
    """A ``StableDiffusionInpaintPipeline`` with random weights (9-channel UNet) saved in ``folder``.

    Args:
        folder: created if missing; gets ``model_index.json`` and one sub-folder per component.
        size: "tiny" (tests) or "sd2" (the stabilityai/stable-diffusion-2-inpainting architecture).
        seed: weights are a function of it.

    Returns:
        ``folder`` as a Path.
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    _check_size(size)
    parts = components(size, seed=seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(in_channels=9, out_channels=4, **UNET[size])
    pipeline = StableDiffusionInpaintPipeline(
        **parts, unet=unet, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipeline.save_pretrained(folder)
    return Path(folder)


def save_mv_refiner(folder: str | Path, size: str = "tiny", *, seed: int = 0) -> Path:
    """A multi-view refiner model with random weights, saved in ``folder``.

    The folder has ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` (DDIM) and ``unet/`` (a
    ``MultiViewDenoiser``), and a ``model_index.json`` naming each component's library and class, as
    the MVDream diffusers port has.

    Args:
        folder: created if missing.
        size: "tiny" (tests: 32-wide text encoder, 2-level UNet) or "mvdream" (the SD2.1-base architecture
            of MVDream: OpenCLIP-H text encoder, SD VAE, 320/640/1280/1280 UNet, for 256 x 256 views).
        seed: weights are a function of it.

    Returns:
        ``folder`` as a Path.
    """
    import torch

    from services.refiner.mv_denoiser import DENOISER_CLASS, DENOISER_MODULE, MultiViewDenoiser

    if size not in MV_SIZES:
        raise ValueError(f"size must be one of {', '.join(MV_SIZES)}, got {size!r}")
    base = "sd2" if size == "mvdream" else "tiny"
    folder = Path(folder)
    parts = components(base, seed=seed)
    unet_config = dict(UNET[base])
    if size == "mvdream":
        unet_config["sample_size"] = 32  # 256 x 256 views, 8x smaller latents
    torch.manual_seed(seed + 1)
    parts["unet"] = MultiViewDenoiser(unet_config)
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    index = {
        "_class_name": "MultiViewRefiner",
        "scheduler": ["diffusers", type(parts["scheduler"]).__name__],
        "text_encoder": ["transformers", type(parts["text_encoder"]).__name__],
        "tokenizer": ["transformers", type(parts["tokenizer"]).__name__],
        "unet": [DENOISER_MODULE, DENOISER_CLASS],
        "vae": ["diffusers", type(parts["vae"]).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder
