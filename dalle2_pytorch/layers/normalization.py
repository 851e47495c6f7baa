"""Normalisation layers: bias-free layer norms with a single gain `g` (the reference's parameter
layout) and a GroupNorm that runs in its input's dtype.

Layer normalisation: Ba et al. 2016; group normalisation: Wu & He 2018. The "stable" layer-norm
variant divides by the detached row maximum first (used for the prior transformer's final norm),
which keeps large activations in range under fp16.

**Under autocast.** CUDA autocast runs `layer_norm` and `group_norm` in float32: it casts the bf16/fp16
activations up, normalises, and the next matmul or convolution casts the float32 result back down.
These modules call the native kernels directly instead (`torch.native_layer_norm` /
`torch.native_group_norm`, which autocast does not intercept), so the norm reads and writes the
activation's own dtype. The kernels accumulate the statistics in float32 either way; only the output
is rounded to the activation dtype, as the next layer would round it anyway. This removes two casts
per norm and halves the bytes the norm moves and keeps for backward. In float32 nothing changes.
`upcast_under_autocast = True` on an instance (or :func:`set_norm_upcast` on a model) restores
autocast's float32 round trip, e.g. to compare the two.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["ChanLayerNorm", "GroupNorm", "LayerNorm", "set_norm_upcast"]


def _eps_for(x: torch.Tensor, fp32_eps: float, other_eps: float) -> float:
    return fp32_eps if x.dtype == torch.float32 else other_eps


def set_norm_upcast(module: nn.Module, upcast: bool) -> int:
    """Sets `upcast_under_autocast` on every norm of this module that has the switch.

    True: norms follow autocast's float32 policy (the plain PyTorch behaviour); False (default):
    they run in the activation dtype. Returns the number of norms changed.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, (LayerNorm, GroupNorm)):
            m.upcast_under_autocast = bool(upcast)
            n += 1
    return n


class LayerNorm(nn.Module):
    """LayerNorm over the last dim with gain only (runs in the input dtype under autocast, see the
    module docstring).

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
        self.upcast_under_autocast = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., dim)
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        eps = _eps_for(x, self.eps, self.fp16_eps)
        if self.upcast_under_autocast:
            return F.layer_norm(x, x.shape[-1:], weight=self.g.to(x.dtype), eps=eps)
        return torch.native_layer_norm(x, x.shape[-1:], self.g.to(x.dtype), None, eps)[0]


class GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (same parameters and keys) that runs in its input's dtype under autocast (see
    the module docstring) and keeps a channels-last input channels-last on CUDA.

    PyTorch's CUDA group norm only takes contiguous (NCHW) input, so a channels-last activation is
    copied to NCHW and the result copied back by the next convolution. Here a channels-last 4-d input
    on CUDA is normalised in place of layout: float32 statistics over each group's (h, w, c/groups)
    block, then one multiply-add with the per-(sample, channel) scale and shift.
    x: (b, c, *) -> same shape, dtype and memory format.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True, **kwargs):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, **kwargs)
        self.upcast_under_autocast = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upcast_under_autocast:
            return super().forward(x)
        weight = self.weight.to(x.dtype) if self.weight is not None else None
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if channels_last and x.is_cuda:
            return _group_norm_channels_last(x, self.num_groups, weight, bias, self.eps)
        # the layouts the native kernel takes: NCHW, or channels-last on CPU
        if not (x.is_contiguous() or channels_last):
            x = x.contiguous()
        b, c = x.shape[:2]
        hw = x.numel() // max(b * c, 1)
        return torch.native_group_norm(x, weight, bias, b, c, hw, self.num_groups, self.eps)[0]


def _group_norm_channels_last(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Group norm of a channels-last (b, c, h, w) tensor without leaving that layout.

    Statistics in float32 over each group's (h·w, c/groups) elements; y = x·a + s with
    a = rstd·weight and s = bias − mean·a per (sample, channel). a and s stay float32 and the
    multiply-add runs in float32 (rounded to x's dtype once): in bf16, x·a and s cancel badly when
    a group's mean is large against its spread. Eager this costs a float32 intermediate; under
    torch.compile the whole function is one or two fused kernels.
    """
    b, c, h, w = x.shape
    cg = c // groups
    xg = x.permute(0, 2, 3, 1).reshape(b, h * w, groups, cg)  # a view of channels-last memory
    var, mean = torch.var_mean(xg.float(), dim=(1, 3), unbiased=False)  # (b, groups)
    rstd = (var + eps).rsqrt()
    a = rstd.repeat_interleave(cg, dim=1)  # (b, c)
    s = -mean.repeat_interleave(cg, dim=1) * a
    if weight is not None:
        a = a * weight.float()
        s = s * weight.float()
    if bias is not None:
        s = s + bias.float()
    return torch.addcmul(s[:, :, None, None], x, a[:, :, None, None]).to(x.dtype)


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
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        # the small (b, 1, h, w) rstd and the gain in x's dtype: under autocast `rsqrt` is a float32
        # op, and a float32 factor would promote the whole feature map to float32
        return (x - mean) * (var + eps).rsqrt().to(x.dtype) * self.g.to(x.dtype)
