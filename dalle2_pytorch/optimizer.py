"""Compatibility module: the reference's `dalle2_pytorch.optimizer` (see `training.optim`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dalle2_pytorch.training.optim import get_optimizer as _get_optimizer
from dalle2_pytorch.training.optim import separate_weight_decayable_params

__all__ = ["get_optimizer", "separate_weight_decayable_params"]


def get_optimizer(
    params: Iterable[nn.Parameter] | nn.Module,
    lr: float = 1e-4,
    wd: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-8,
    filter_by_requires_grad: bool = False,
    group_wd_params: bool = True,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """The reference's signature and defaults, built by :func:`dalle2_pytorch.training.optim.get_optimizer`.

    AdamW with weight decay `wd` on parameters with >= 2 dimensions only (`group_wd_params`). With
    `wd == 0` the reference built `Adam`; AdamW with zero weight decay takes exactly the same steps.
    Extra keyword arguments were ignored by the reference; here they are ignored with a warning.
    """
    if kwargs:
        warnings.warn(f"get_optimizer ignores {', '.join(sorted(kwargs))} (as the reference did)", UserWarning, stacklevel=2)
    return _get_optimizer(params, lr=lr, wd=wd, betas=betas, eps=eps,
                          filter_by_requires_grad=filter_by_requires_grad, group_wd_params=group_wd_params)
