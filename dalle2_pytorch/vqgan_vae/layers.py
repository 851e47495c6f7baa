"""Convolutional blocks of the VQGAN-VAE: channel layer norm, residual blocks, and self-attention
over feature maps with a continuous relative-position bias.

Residual blocks follow VQGAN (Esser et al. 2021, "Taming Transformers", §3.1); the decoder's blocks
use gated linear units (Dauphin et al. 2017). The attention bias is the log-spaced continuous
position bias of Swin Transformer V2 (Liu et al. 2022, §3.3, eq. 4): an MLP maps the signed,
log-scaled offset Δ̂ = sign(Δ)·log(1 + |Δ|) between two positions to one bias per head.

Parameter names and module indices follow the reference's `vqgan_vae.py` so its state dicts load.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContinuousPositionBias", "GLUResBlock", "LayerNormChan", "ResBlock", "VQGanAttention", "leaky_relu"]

LEAKY_SLOPE = 0.1


def leaky_relu(p: float = LEAKY_SLOPE) -> nn.LeakyReLU:
    """LeakyReLU with negative slope 0.1 (the only slope the reference's VAE uses)."""
    return nn.LeakyReLU(p)


class LayerNormChan(nn.Module):
    """LayerNorm over the channels of a (b, c, h, w) map, gain only (parameter `gamma`, (1, c, 1, 1))."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * (var + self.eps).rsqrt() * self.gamma


class ResBlock(nn.Module):
    """Encoder residual block: x + [conv3 → GN → LReLU → conv3 → GN → LReLU → conv1](x); (b, c, h, w) → same."""

    def __init__(self, chan: int, groups: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(chan, chan, 3, padding=1),
            nn.GroupNorm(groups, chan),
            leaky_relu(),
            nn.Conv2d(chan, chan, 3, padding=1),
            nn.GroupNorm(groups, chan),
            leaky_relu(),
            nn.Conv2d(chan, chan, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x


class GLUResBlock(nn.Module):
    """Decoder residual block with gated linear units: x + [conv3(2c) → GLU → GN → conv3(2c) → GLU → GN → conv1](x)."""

    def __init__(self, chan: int, groups: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(chan, chan * 2, 3, padding=1),
            nn.GLU(dim=1),
            nn.GroupNorm(groups, chan),
            nn.Conv2d(chan, chan * 2, 3, padding=1),
            nn.GLU(dim=1),
            nn.GroupNorm(groups, chan),
            nn.Conv2d(chan, chan, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + x


class ContinuousPositionBias(nn.Module):
    """Per-head attention bias (heads, n, n) for the n = s·s positions of a square feature map.

    Args:
        dim: hidden width of the MLP.
        heads: number of attention heads.
        layers: hidden layers of the MLP (Linear + LeakyReLU each), then Linear(dim, heads).
    """

    def __init__(self, *, dim: int, heads: int, layers: int = 2):
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(2, dim), leaky_relu())])
        for _ in range(layers - 1):
            self.net.append(nn.Sequential(nn.Linear(dim, dim), leaky_relu()))
        self.net.append(nn.Linear(dim, heads))

    @staticmethod
    def relative_positions(side: int, device: torch.device | None = None) -> torch.Tensor:
        """(n, n, 2) signed log-scaled offsets between the positions of a side×side grid (row-major)."""
        pos = torch.arange(side, device=device)
        grid = torch.stack(torch.meshgrid(pos, pos, indexing="ij"), dim=-1).reshape(-1, 2)
        rel = (grid[:, None, :] - grid[None, :, :]).float()
        return torch.sign(rel) * torch.log1p(rel.abs())

    def forward(self, n: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"continuous position bias needs a square feature map, got {n} positions")
        h = self.relative_positions(side, device).to(self.net[-1].weight.dtype)
        for layer in self.net:
            h = layer(h)
        return h.permute(2, 0, 1).to(dtype or h.dtype)  # (heads, n, n)


class VQGanAttention(nn.Module):
    """Pre-norm multi-head self-attention over a (b, dim, h, w) map (square maps only), residual.

    Args:
        dim: channels.
        dim_head, heads: head width and count (inner width heads·dim_head).
        dropout: dropout on the attention probabilities (training only).
    """

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.dropout_p = dropout
        inner = heads * dim_head
        self.pre_norm = LayerNormChan(dim)
        self.cpb = ContinuousPositionBias(dim=dim // 4, heads=heads)
        self.to_qkv = nn.Conv2d(dim, inner * 3, 1, bias=False)
        self.to_out = nn.Conv2d(inner, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        n = height * width
        qkv = self.to_qkv(self.pre_norm(x))
        # channels are grouped head-major: (heads, dim_head)
        q, k, v = (t.reshape(b, self.heads, self.dim_head, n).transpose(-1, -2) for t in qkv.chunk(3, dim=1))
        bias = self.cpb(n, device=x.device, dtype=q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout_p if self.training else 0.0, scale=self.scale
        )
        out = out.transpose(-1, -2).reshape(b, self.heads * self.dim_head, height, width)
        return self.to_out(out) + x
