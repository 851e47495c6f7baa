"""Convolutional encoder/decoder of the VQGAN-VAE (`vae_type='resnet'`).

Each of `layers` stages halves the resolution with a 4×4 stride-2 convolution (the decoder doubles it
with a 4×4 stride-2 transposed convolution), so the latent map is image_size / 2**layers on a side
with `dim * layer_mults[-1]` channels. By default only the last (lowest-resolution) stage has a
residual block and self-attention, as in the reference.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dalle2_pytorch.vqgan_vae.layers import GLUResBlock, ResBlock, VQGanAttention, leaky_relu

__all__ = ["ResnetEncDec"]


def _per_layer(value, layers: int, name: str) -> tuple:
    """A per-stage tuple as given, or a scalar applied to the last stage only (0/False elsewhere)."""
    if isinstance(value, (tuple, list)):
        value = tuple(value)
    else:
        value = (type(value)(0),) * (layers - 1) + (value,)
    if len(value) != layers:
        raise ValueError(f"{name} has {len(value)} entries for {layers} layers")
    return value


class ResnetEncDec(nn.Module):
    """Encoder (`encoders`) and decoder (`decoders`) lists of modules, applied in order.

    Args:
        dim: width of the first stage.
        channels: image channels.
        layers: number of stride-2 stages.
        layer_mults: width multiplier of each stage (default 1, 2, 4, ...).
        num_resnet_blocks: residual blocks per stage; an int applies to the last stage only.
        resnet_groups: GroupNorm groups (`dim` must be divisible by it).
        first_conv_kernel_size: kernel of the input convolution.
        use_attn: self-attention per stage; a bool applies to the last stage only.
        attn_dim_head, attn_heads, attn_dropout: attention shape.
    """

    def __init__(
        self,
        dim: int,
        *,
        channels: int = 3,
        layers: int = 4,
        layer_mults: Sequence[int] | None = None,
        num_resnet_blocks: int | Sequence[int] = 1,
        resnet_groups: int = 16,
        first_conv_kernel_size: int = 5,
        use_attn: bool | Sequence[bool] = True,
        attn_dim_head: int = 64,
        attn_heads: int = 8,
        attn_dropout: float = 0.0,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if dim % resnet_groups:
            raise ValueError(f"dim {dim} must be divisible by resnet_groups {resnet_groups} (GroupNorm groups)")
        layer_mults = tuple(layer_mults) if layer_mults is not None else tuple(2**i for i in range(layers))
        if len(layer_mults) != layers:
            raise ValueError(f"layer_mults has {len(layer_mults)} entries for {layers} layers")
        blocks = _per_layer(num_resnet_blocks, layers, "num_resnet_blocks")
        attn = tuple(bool(a) for a in _per_layer(use_attn, layers, "use_attn"))
        dims = (dim, *(dim * m for m in layer_mults))
        self.layers = layers
        self.encoded_dim = dims[-1]

        def attention(d: int) -> VQGanAttention:
            return VQGanAttention(dim=d, heads=attn_heads, dim_head=attn_dim_head, dropout=attn_dropout)

        encoders: list[nn.Module] = [nn.Conv2d(channels, dim, first_conv_kernel_size, padding=first_conv_kernel_size // 2)]
        for (d_in, d_out), n_blocks, use in zip(zip(dims[:-1], dims[1:]), blocks, attn):
            encoders.append(nn.Sequential(nn.Conv2d(d_in, d_out, 4, stride=2, padding=1), leaky_relu()))
            encoders.extend(ResBlock(d_out, groups=resnet_groups) for _ in range(n_blocks))
            if use:
                encoders.append(attention(d_out))
        decoders: list[nn.Module] = []
        for (d_in, d_out), n_blocks, use in reversed(list(zip(zip(dims[:-1], dims[1:]), blocks, attn))):
            decoders.extend(GLUResBlock(d_out, groups=resnet_groups) for _ in range(n_blocks))
            if use:
                decoders.append(attention(d_out))
            decoders.append(nn.Sequential(nn.ConvTranspose2d(d_out, d_in, 4, 2, 1), leaky_relu()))
        decoders.append(nn.Conv2d(dim, channels, 1))
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)

    def get_encoded_fmap_size(self, image_size: int) -> int:
        return image_size // (2**self.layers)

    @property
    def last_dec_layer(self) -> torch.Tensor:
        """Weight of the output convolution (for the adaptive GAN weight)."""
        return self.decoders[-1].weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(b, channels, s, s) → (b, encoded_dim, s / 2**layers, s / 2**layers)."""
        for module in self.encoders:
            x = module(x)
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """(b, encoded_dim, f, f) → (b, channels, f·2**layers, f·2**layers)."""
        for module in self.decoders:
            x = module(x)
        return x
