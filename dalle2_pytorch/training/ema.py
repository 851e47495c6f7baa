"""Exponential moving average of model weights (wraps `ema_pytorch.EMA`).

The EMA weights follow θ_ema ← β_t θ_ema + (1 − β_t) θ, with ema-pytorch's inverse-gamma warm-up
β_t = min(beta, 1 − (1 + t/inv_gamma)^(−power)) (Karras et al. 2022, "Elucidating the Design Space
of Diffusion-Based Generative Models", and the reference's defaults). The online model is *not*
stored inside the EMA state (`include_online_model=False`): the trainer checkpoints it separately,
so weights are not saved twice.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from ema_pytorch import EMA
from torch import nn

__all__ = [
    "EMA",
    "FullParamEMA",
    "ema_state_dict",
    "load_ema_state_dict",
    "make_ema",
    "pop_prefixed",
    "valid_ema_kwargs",
]


class FullParamEMA(EMA):
    """`ema_pytorch.EMA` whose online model may be sharded (FSDP2): its DTensor parameters are
    gathered whole as the EMA reads them (a collective: every rank updates together, which the
    trainers do), so the EMA copy stays a full model on every rank. Unsharded models are read as is."""

    def get_params_iter(self, model):
        from dalle2_pytorch.training.sharding import to_full_tensor

        for name, param in super().get_params_iter(model):
            yield name, to_full_tensor(param)


def pop_prefixed(kwargs: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Removes the `prefix*` keys from `kwargs` and returns them with the prefix stripped."""
    out = {}
    for key in [k for k in kwargs if k.startswith(prefix)]:
        out[key[len(prefix) :]] = kwargs.pop(key)
    return out


def valid_ema_kwargs() -> set[str]:
    params = inspect.signature(EMA.__init__).parameters
    return {name for name in params if name not in ("self", "model", "ema_model")}


def make_ema(model: nn.Module, **ema_kwargs: Any) -> EMA:
    """An `ema_pytorch.EMA` of `model`, configured by `ema_kwargs` (beta, update_after_step,
    update_every, inv_gamma, power, ...).

    Raises:
        TypeError: an unknown option, reported with its `ema_` prefix.
    """
    unknown = sorted(set(ema_kwargs) - valid_ema_kwargs())
    if unknown:
        raise TypeError(f"unknown EMA option(s): {', '.join('ema_' + k for k in unknown)}")
    ema_kwargs.setdefault("include_online_model", False)
    return FullParamEMA(model, **ema_kwargs)


def ema_state_dict(ema: EMA, prefix: str = "") -> dict[str, torch.Tensor]:
    """`ema_model.*`, `initted` and `step` of an EMA wrapper (never the online model's weights)."""
    return {
        prefix + k: v for k, v in ema.state_dict().items() if not k.startswith("online_model.")
    }


def load_ema_state_dict(ema: EMA, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Loads :func:`ema_state_dict` output (an `online_model.*` part, as in reference files, is
    ignored)."""
    state = {k: v for k, v in state.items() if not k.startswith("online_model.")}
    own = ema.state_dict()
    own_keys = {k for k in own if not k.startswith("online_model.")}
    missing = sorted(own_keys - set(state))
    unexpected = sorted(set(state) - own_keys)
    if strict and (missing or unexpected):
        raise KeyError(
            f"EMA state does not match: missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    with torch.no_grad():
        for key, value in state.items():
            if key in own_keys:
                target = own[key]
                if target.shape != value.shape:
                    raise ValueError(f"EMA entry {key}: shape {list(value.shape)} vs expected {list(target.shape)}")
                target.copy_(value.to(device=target.device, dtype=target.dtype))
