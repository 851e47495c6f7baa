"""`UnetConfig`: every `Unet` constructor argument as an explicit, typed field."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from dalle2_pytorch.decoder.unet import LEGACY_UNET_KWARGS

from .base import Flag, Int, Layout, PositiveInt, StrictModel, constructor_kwargs

__all__ = ["UnetConfig"]

# resnet blocks per stage: 0 (the stage only downsamples) to 256 (each one a module built in Python)
_Blocks = Annotated[Int, Field(ge=0, le=256)]

# per-stage options: a scalar, or one value per entry of dim_mults
_PER_STAGE = ("self_attn", "resnet_groups", "num_resnet_blocks")


class UnetConfig(StrictModel):
    """One decoder `Unet`. Defaults equal the `Unet` constructor defaults."""

    _legacy_keys = LEGACY_UNET_KWARGS

    dim: PositiveInt
    """Base channel width; stage i has dim * dim_mults[i] channels."""
    image_embed_dim: PositiveInt | None = None
    """CLIP image-embedding dim (conditioning input)."""
    text_embed_dim: PositiveInt | None = None
    """Width of the CLIP text encodings; required with `cond_on_text_encodings`."""
    cond_dim: PositiveInt | None = None
    """Width of the conditioning tokens; None: `dim`."""
    num_image_tokens: PositiveInt = 4
    """Tokens the image embedding is projected to."""
    num_time_tokens: PositiveInt = 2
    """Tokens the time embedding is projected to."""
    out_dim: PositiveInt | None = None
    """Accepted for compatibility; unused (see `channels_out`)."""
    dim_mults: tuple[PositiveInt, ...] = (1, 2, 4, 8)
    """Channel multiplier of each stage (one entry per resolution)."""
    channels: PositiveInt = 3
    """Image channels."""
    channels_out: PositiveInt | None = None
    """Output channels; None: `channels` (the Decoder doubles it for learned variance)."""
    self_attn: Flag | tuple[Flag, ...] = False
    """Full self-attention after each stage; a bool or one per stage (0/1 accepted)."""
    attn_dim_head: PositiveInt = 32
    """Head width of self-attention and linear attention."""
    attn_heads: PositiveInt = 16
    """Heads of self-attention and linear attention."""
    lowres_cond: Flag = False
    """Condition on a low-resolution image (set by the Decoder for unets after the first)."""
    lowres_noise_cond: Flag = False
    """Condition on the low-res augmentation noise level (Imagen)."""
    self_cond: Flag = False
    """Self-conditioning on the previous x0 estimate (extra input channels)."""
    sparse_attn: Flag = False
    """Linear attention on stages without full self-attention."""
    cosine_sim_cross_attn: Flag = False
    """Cosine-similarity cross-attention."""
    cosine_sim_self_attn: Flag = False
    """Cosine-similarity self-attention."""
    attend_at_middle: Flag = True
    """Accepted for compatibility; the middle attention is always built."""
    cond_on_text_encodings: Flag = False
    """Cross-attend to text encodings in the middle blocks (null is read as false)."""
    max_text_len: PositiveInt = 256
    """Text encodings are padded / truncated to this many tokens."""
    cond_on_image_embeds: Flag = False
    """Image tokens join the cross-attention context (the Decoder sets it for unet 1)."""
    add_image_embeds_to_time: Flag = True
    """Add a projection of the image embedding to the time embedding."""
    init_dim: PositiveInt | None = None
    """Channels after the initial conv; None: `dim`."""
    init_conv_kernel_size: PositiveInt = 7
    """Kernel of the initial conv (only when `init_cross_embed` is false)."""
    resnet_groups: PositiveInt | tuple[PositiveInt, ...] = 8
    """GroupNorm groups; an int or one per stage."""
    resnet_weight_standardization: Flag = False
    """Weight-standardised convolutions in the resnet blocks."""
    num_resnet_blocks: _Blocks | tuple[_Blocks, ...] = 2
    """Resnet blocks per stage; an int or one per stage (0: the stage only downsamples)."""
    init_cross_embed: Flag = True
    """Initial conv is a multi-scale cross-embed layer."""
    init_cross_embed_kernel_sizes: tuple[PositiveInt, ...] = (3, 7, 15)
    """Kernel sizes of the initial cross-embed layer."""
    cross_embed_downsample: Flag = False
    """Downsample with cross-embed layers instead of pixel-unshuffle + 1x1 conv."""
    cross_embed_downsample_kernel_sizes: tuple[PositiveInt, ...] = (2, 4)
    """Kernel sizes of the cross-embed downsample."""
    memory_efficient: Flag = False
    """Imagen efficient-UNet ordering (downsample before each stage's resnets)."""
    scale_skip_connection: Flag = False
    """Scale skip connections by 2^-0.5."""
    pixel_shuffle_upsample: Flag = True
    """Upsample with conv + pixel shuffle (False: nearest + 3x3 conv)."""
    final_conv_kernel_size: PositiveInt = 1
    """Kernel of the output conv."""
    combine_upsample_fmaps: Flag = False
    """Concatenate resized feature maps of every up stage before the final block."""
    checkpoint_during_training: Flag = False
    """Gradient checkpointing in training mode."""
    layout: Layout = "1.15.6"
    """(Extension) module/operation layout to build: '1.15.6' or '1.1.0' (LAION-era checkpoints)."""

    @field_validator("cond_on_text_encodings", mode="before")
    @classmethod
    def _null_is_false(cls, value: Any) -> Any:
        # the reference typed this field `bool = None`, so its dumps contain null
        return False if value is None else value

    @model_validator(mode="after")
    def _check_stages(self) -> UnetConfig:
        num_stages = len(self.dim_mults)
        if num_stages == 0:
            raise ValueError("unet dim_mults must have at least one entry")
        for name in _PER_STAGE:
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != num_stages:
                raise ValueError(
                    f"unet {name} has {len(value)} entries but dim_mults has {num_stages} stages"
                )
        if self.cond_on_text_encodings and self.text_embed_dim is None:
            raise ValueError("unet cond_on_text_encodings=true needs text_embed_dim")
        return self

    @property
    def downsample_factor(self) -> int:
        """Image sides must be multiples of this: the Unet halves the image once between
        consecutive stages, and once more per stage when `memory_efficient` (the same rule as
        `Unet.downsample_factor`; tests check both against real forwards)."""
        stages = len(self.dim_mults)
        return 2 ** (stages if self.memory_efficient else stages - 1)

    def create(self) -> Any:
        """Builds `dalle2_pytorch.decoder.unet.Unet` from these fields."""
        from dalle2_pytorch.decoder.unet import Unet

        return Unet(**constructor_kwargs(self))
