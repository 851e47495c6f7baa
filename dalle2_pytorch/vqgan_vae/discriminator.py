"""PatchGAN-style discriminator of the VQGAN-VAE (Isola et al. 2017, "pix2pix", §3.2.2; used by
VQGAN, Esser et al. 2021, §3.2): stride-2 convolutions with GroupNorm and LeakyReLU, ending in a map
of per-patch real/fake logits."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dalle2_pytorch.vqgan_vae.layers import leaky_relu

__all__ = ["Discriminator", "discriminator_dims"]


def discriminator_dims(dim: int, discr_layers: int) -> tuple[int, ...]:
    """Widths (dim, dim, 2·dim, ..., 2**(discr_layers-1)·dim) used by `VQGanVAE`."""
    return (dim, *(dim * 2**i for i in range(discr_layers)))


class Discriminator(nn.Module):
    """(b, channels, s, s) images → (b, 1, h, w) patch logits.

    Args:
        dims: widths; one stride-2 stage per consecutive pair.
        channels: image channels.
        groups: GroupNorm groups (every width after the first must be divisible by it).
        init_kernel_size: kernel of the first convolution.
    """

    def __init__(self, dims: Sequence[int], channels: int = 3, groups: int = 16, init_kernel_size: int = 5):
        super().__init__()
        dims = tuple(dims)
        for d in dims[1:]:
            if d % groups:
                raise ValueError(f"discriminator width {d} must be divisible by {groups} (GroupNorm groups)")
        self.layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(channels, dims[0], init_kernel_size, padding=init_kernel_size // 2), leaky_relu())]
        )
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            self.layers.append(
                nn.Sequential(nn.Conv2d(d_in, d_out, 4, stride=2, padding=1), nn.GroupNorm(groups, d_out), leaky_relu())
            )
        last = dims[-1]
        self.to_logits = nn.Sequential(nn.Conv2d(last, last, 1), leaky_relu(), nn.Conv2d(last, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.to_logits(x)
