"""Rotary position embedding (RoPE), interleaved-pair form, on the leading features of a head.

Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding", eq. (34): feature
pairs (x_{2i}, x_{2i+1}) at position m are rotated by the angle m·θ_i with θ_i = 10000^(-2i/d).
The prior rotates only the first `dim` (= min(32, dim_head)) features of each query/key head.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RotaryEmbedding", "rotate_half"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Maps each interleaved pair (x1, x2) of the last dim to (-x2, x1). x: (..., d), d even."""
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class RotaryEmbedding(nn.Module):
    """Fixed-frequency rotary embedding.

    State: `freqs` (dim // 2,), a persistent parameter with `requires_grad=False` (the reference's
    layout: it appears under every layer that shares this module).

    Args:
        dim: number of leading features rotated (even).
        theta: base of the frequency ladder.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim <= 0 or dim % 2 != 0:
            raise ValueError(f"rotary dim must be a positive even number, got {dim}")
        self.dim = dim
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def angles(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """Angles (seq_len, dim): position·freq, each repeated twice (interleaved), float32."""
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        ang = pos[:, None] * self.freqs.to(device=device, dtype=torch.float32)[None, :]
        return ang.repeat_interleave(2, dim=-1)

    def rotate(self, x: torch.Tensor, angles: torch.Tensor | None = None) -> torch.Tensor:
        """Rotates the first `dim` features of x: (..., n, d) with d >= dim, positions 0..n-1.

        Args:
            x: queries or keys, (..., n, d).
            angles: optional precomputed `self.angles(n, device)`.
        """
        n, d = x.shape[-2], x.shape[-1]
        if d < self.dim:
            raise ValueError(f"rotary embedding rotates {self.dim} features but the input has {d}")
        if angles is None:
            angles = self.angles(n, x.device)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        rot = rot * cos + rotate_half(rot) * sin
        return torch.cat((rot, rest), dim=-1) if rest.shape[-1] > 0 else rot
