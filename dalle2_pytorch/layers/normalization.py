"""Bias-free layer norms with a single gain `g` (the reference's parameter layout).

Layer normalisation: Ba et al. 2016. The "stable" variant divides by the detached row maximum first
(used for the prior transformer's final norm), which keeps large activations in range under fp16.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _eps_for(x: torch.Tensor, fp32_eps: float, other_eps: float) -> float:
    return fp32_eps if x.dtype == torch.float32 else other_eps


class LayerNorm(nn.Module):
    """LayerNorm over the last dim with gain only.

    Args:
        dim: feature width.
        eps: epsilon for float32 inputs; lower-precision inputs use `fp16_eps`.
        stable: divide by the detached row max before normalising (the row maximum, not abs-max,
            as the reference does; weights were trained with it).
    """

    def __init__(self, dim: int, eps: float = 1e-5, fp16_eps: float = 1e-3, stable: bool = False):
        super().__init__()
        self.eps = eps
        self.fp16_eps = fp16_eps
        self.stable = stable
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., dim)
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        eps = _eps_for(x, self.eps, self.fp16_eps)
        return F.layer_norm(x, x.shape[-1:], weight=self.g.to(x.dtype), eps=eps)


class ChanLayerNorm(nn.Module):
    """LayerNorm over the channel dim of a feature map (b, c, h, w), gain of shape (1, c, 1, 1)."""

    def __init__(self, dim: int, eps: float = 1e-5, fp16_eps: float = 1e-3, stable: bool = False):
        super().__init__()
        self.eps = eps
        self.fp16_eps = fp16_eps
        self.stable = stable
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, c, h, w)
        if self.stable:
            x = x / x.amax(dim=1, keepdim=True).detach()
        eps = _eps_for(x, self.eps, self.fp16_eps)
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g
