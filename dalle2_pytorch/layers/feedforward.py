"""Pre-norm SwiGLU feed-forward block of the prior transformer.

SwiGLU: Shazeer 2020, "GLU Variants Improve Transformer", eq. (6). Optional post-activation
LayerNorm: Shleifer et al. 2021, "NormFormer", §2.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from dalle2_pytorch.layers.normalization import LayerNorm

__all__ = ["FeedForward", "SwiGLU"]


class SwiGLU(nn.Module):
    """(..., 2h) -> (..., h): first half × SiLU(second half)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.silu(gate)


class FeedForward(nn.Sequential):
    """Sequential[0 LayerNorm(dim), 1 Linear(dim, 2·inner), 2 SwiGLU, 3 LayerNorm(inner) | Identity,
    4 Dropout, 5 Linear(inner, dim)], inner = mult·dim, no biases. x: (b, n, dim) -> (b, n, dim).

    Args:
        dim: model width.
        mult: inner width multiplier.
        dropout: dropout before the output projection.
        post_activation_norm: NormFormer LayerNorm after the activation.
    """

    def __init__(self, dim: int, *, mult: int = 4, dropout: float = 0.0, post_activation_norm: bool = False):
        inner = int(mult * dim)
        super().__init__(
            LayerNorm(dim),
            nn.Linear(dim, inner * 2, bias=False),
            SwiGLU(),
            LayerNorm(inner) if post_activation_norm else nn.Identity(),
            nn.Dropout(dropout),
            nn.Linear(inner, dim, bias=False),
        )
