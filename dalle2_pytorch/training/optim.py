"""Optimiser and learning-rate schedule used by the trainers.

`get_optimizer` builds AdamW with the usual "no weight decay on vectors" grouping (biases, norm
gains, learned queries, ... — every parameter with fewer than two dimensions), as in
Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (2019).

`get_lr_scheduler` returns a plain :class:`torch.optim.lr_scheduler.LambdaLR` whose factor is

    factor(s) = warmup(s) * decay(s)
    warmup(s) = min(1, (s + 1) / warmup_steps)                      (1 if no warmup)
    decay(s)  = (1 + cos(pi * min(s, T) / T)) / 2,  T = cosine_decay_max_steps   (1 if no decay)

where `s` counts optimiser steps taken. The warm-up multiplies the schedule (it "dampens" the first
steps, as the reference's linear warm-up did) and the cosine reaches 0 at `T` and stays there.
The scheduler's `state_dict()` is made of plain numbers and lists only (the factor is a closure, so
`LambdaLR` stores `None` for it), which keeps checkpoints loadable with `weights_only=True`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["get_optimizer", "get_lr_scheduler", "lr_factor_fn", "separate_weight_decayable_params"]


def separate_weight_decayable_params(
    params: Iterable[nn.Parameter],
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Splits parameters into (decayed: ndim >= 2, not decayed: ndim < 2)."""
    decay, no_decay = [], []
    for p in params:
        (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


def get_optimizer(
    params: Iterable[nn.Parameter] | nn.Module,
    lr: float = 1e-4,
    wd: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-8,
    filter_by_requires_grad: bool = True,
    group_wd_params: bool = True,
) -> torch.optim.AdamW:
    """AdamW over `params`, with parameters of ndim < 2 excluded from weight decay.

    Args:
        params: parameters (or a module, whose `.parameters()` are used).
        lr: learning rate (> 0).
        wd: decoupled weight decay (>= 0). With `wd == 0` all parameters form one group.
        betas: Adam betas.
        eps: Adam epsilon.
        filter_by_requires_grad: drop parameters with `requires_grad=False` (frozen CLIP, ...).
        group_wd_params: put ndim < 2 parameters in a group with weight decay 0.

    Raises:
        ValueError: for a non-positive lr, a negative wd or eps, or when no parameter is left.
    """
    if isinstance(params, nn.Module):
        params = params.parameters()
    if not (lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if wd < 0:
        raise ValueError(f"wd (weight decay) must be >= 0, got {wd!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    params = list(params)
    if filter_by_requires_grad:
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("get_optimizer got no parameters to optimise (all frozen or empty)")
    betas = tuple(float(b) for b in betas)
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair of floats, got {betas!r}")

    if wd > 0 and group_wd_params:
        decay, no_decay = separate_weight_decayable_params(params)
        groups = [
            {"params": decay, "weight_decay": wd},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": params, "weight_decay": wd}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, betas=betas, eps=eps)


def lr_factor_fn(
    warmup_steps: int | None = None,
    cosine_decay_max_steps: int | None = None,
) -> Callable[[int], float]:
    """The multiplicative learning-rate factor `step -> float` described in the module docstring."""
    if warmup_steps is not None and warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0 or None, got {warmup_steps!r}")
    if cosine_decay_max_steps is not None and cosine_decay_max_steps <= 0:
        raise ValueError(f"cosine_decay_max_steps must be > 0 or None, got {cosine_decay_max_steps!r}")
    w = int(warmup_steps or 0)
    t = int(cosine_decay_max_steps) if cosine_decay_max_steps else 0

    def factor(step: int) -> float:
        out = 1.0
        if w > 0:
            out *= min(1.0, (step + 1) / w)
        if t > 0:
            out *= 0.5 * (1.0 + math.cos(math.pi * min(step, t) / t))
        return out

    return factor


def get_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int | None = None,
    cosine_decay_max_steps: int | None = None,
) -> LambdaLR:
    """Linear warm-up then constant or cosine-decayed learning rate, as a plain `LambdaLR`.

    Call `.step()` once per optimiser step actually taken.
    """
    return LambdaLR(optimizer, lr_factor_fn(warmup_steps, cosine_decay_max_steps))
