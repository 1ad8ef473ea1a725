"""The built-in multi-view denoiser, and a model folder the ``mv-diffusion`` refiner loads.

``MultiViewDenoiser`` is a member of the MVDream family written with diffusers parts: a
``UNet2DConditionModel`` whose self-attention layers attend across all the views of an object at once, and
whose time embedding gets each view's camera added to it (diffusers' "projection" class embedding: a two-layer
MLP from the 16 camera numbers, as MVDream's ``camera_embed``). Cross-attention to the prompt stays per view.
It is called like MVDream's ``MultiViewUNetModel``::

    eps = denoiser(x, timesteps, context, num_frames, camera)   # [B*F, 4, h, w] noise prediction

with the F views of each of B objects consecutive in the batch.

``services.testing.random_models.save_mv_refiner`` writes a model folder with random weights around this
denoiser, in the layout of the MVDream diffusers port.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

CAMERA_DIM = 16  # a flattened 4 x 4 camera-to-world matrix
# What the model folder's model_index.json says the denoiser is: [module, class], as diffusers records
# components. The loader compares unet/config.json's class name with DENOISER_CLASS.
DENOISER_MODULE = "services.refiner.mv_denoiser"
DENOISER_CLASS = "MultiViewDenoiser"


class MultiViewAttnProcessor:
    """Scaled dot-product attention for a batch of ``B * F`` views, over all F views of an object jointly
    (``joint=True``) or per view (``joint=False``, ordinary attention).

    Joint attention reshapes the tokens ``[B*F, N, C]`` to ``[B, F*N, C]``, so every token of every view
    attends to every token of the object's F views, and back. That is the only place where views meet.
    """

    def __init__(self, joint: bool):
        self.joint = joint
        self._attention = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        num_frames: int = 1,
    ) -> torch.Tensor:
        """Args: ``hidden_states`` ``[B*F, N, C]``; ``num_frames`` F. Returns ``[B*F, N, C]``."""
        if not self.joint or num_frames == 1:
            return self._attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("joint attention across views is self-attention, without a mask")
        batch, tokens, channels = hidden_states.shape
        joint = hidden_states.reshape(batch // num_frames, num_frames * tokens, channels)
        return self._attention(attn, joint, None, None, temb).reshape(batch, tokens, channels)


class MultiViewDenoiser(ModelMixin, ConfigMixin):
    """A camera-conditioned UNet that denoises the F views of an object jointly (see the module docstring).

    Args:
        unet_config: keywords of the ``UNet2DConditionModel`` (block channels and types, attention heads,
            cross-attention width, ...); the input/output channels (4), the camera embedding
            (``class_embed_type="projection"`` from 16 numbers) are fixed here and must not be given.
    """

    @register_to_config
    def __init__(self, unet_config: dict):
        super().__init__()
        fixed = {"in_channels", "out_channels", "class_embed_type", "projection_class_embeddings_input_dim"}
        if fixed & unet_config.keys():
            raise ValueError(f"unet_config must not set {sorted(fixed & unet_config.keys())}; they are fixed")
        self.unet = UNet2DConditionModel(
            in_channels=4,
            out_channels=4,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=CAMERA_DIM,
            **unet_config,
        )
        self.unet.set_attn_processor(
            {
                name: MultiViewAttnProcessor(joint=name.endswith("attn1.processor"))
                for name in self.unet.attn_processors
            }
        )

    @property
    def levels(self) -> int:
        """Resolution levels of the UNet: latents must be a multiple of ``2 ** (levels - 1)``."""
        return len(self.unet.config.block_out_channels)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        num_frames: int,
        camera: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the noise of B objects' F views each.

        Args:
            x: ``[B*F, 4, h, w]`` noisy latents, each object's F views consecutive.
            timesteps: ``[B*F]`` (or a scalar) diffusion timesteps.
            context: ``[B*F, L, D]`` prompt embeddings (the text encoder's last hidden state).
            num_frames: F, the views denoised jointly.
            camera: ``[B*F, 16]`` each view's camera-to-world matrix, row-major, in MVDream's convention
                (``services.refiner.mv_diffusion.mvdream_cameras``).

        Returns:
            ``[B*F, 4, h, w]`` the noise prediction (epsilon), in ``x``'s dtype.
        """
        if num_frames < 1 or x.shape[0] % num_frames:
            raise ValueError(f"the batch of {x.shape[0]} views is not a multiple of num_frames={num_frames}")
        return self.unet(
            x,
            timesteps,
            encoder_hidden_states=context,
            class_labels=camera.to(x.dtype),
            cross_attention_kwargs={"num_frames": num_frames},
        ).sample
