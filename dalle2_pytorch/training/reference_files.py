"""Weights from the reference package's `.pth` files (trainer checkpoints and tracker "model" files).

Only weights (and step counters) are taken from these files: their optimiser and scheduler entries
hold pickled objects of other libraries (opened as inert stand-ins by `safe_torch_load`) and are not
restored.

| file | keys used |
|---|---|
| prior trainer checkpoint | `model` (online), `ema_model` (EMA), `ema.step`, `step` |
| decoder trainer checkpoint | `model` (online), `ema` (`{i}.ema_model.*`, `{i}.step`), `steps` |
| tracker "model" file | `model` (EMA weights; used for both the online and the EMA model) |
"""

from __future__ import annotations

import logging

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dalle2_pytorch.compat.keys import check_state_dict

logger = logging.getLogger(__name__)

__all__ = ["DROPPED_ENTRIES", "convert_reference_unet_state", "match_reference_state_dict", "reference_metadata"]

DROPPED_ENTRIES = ("model", "ema", "ema_model", "optimizer", "scheduler", "warmup_scheduler")
_CLIP = "clip."


def _non_persistent_buffer_names(module: nn.Module) -> set[str]:
    persistent = set(module.state_dict())
    return {name for name, _ in module.named_buffers() if name not in persistent}


def _strip_module_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = dict(sd)
    while sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _convert_prior(sd: dict[str, torch.Tensor], module: nn.Module, context: str) -> dict[str, torch.Tensor]:
    from dalle2_pytorch.compat.prior_keys import convert_prior_state_dict

    conv = convert_prior_state_dict(sd)
    net = getattr(module, "net", None)
    layout = getattr(net, "layout", None)
    if layout is not None and layout != conv.layout:
        raise ValueError(
            f"{context}: the file has the {conv.layout} prior key layout but the prior's network was "
            f"built with layout={layout!r}; build DiffusionPriorNetwork(..., layout={conv.layout!r})"
        )
    return {**conv.net, **conv.clip}


def _convert_decoder(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from dalle2_pytorch.compat.decoder_keys import convert_decoder_state_dict, detect_decoder_layout

    try:
        layout = detect_decoder_layout(sd)
    except ValueError as e:
        if "cannot tell" in str(e):  # no generation-specific keys: both generations name them alike
            return sd
        raise
    unet_state, _schedules, other = convert_decoder_state_dict(sd, layout)
    return {**unet_state, **other}


def convert_reference_unet_state(state: Mapping[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """Converts one reference unet state dict (e.g. an EMA entry `{i}.ema_model.*` with the
    prefix removed) to our naming."""
    prefix = f"unets.{index}."
    converted = _convert_decoder({prefix + k: v for k, v in state.items()})
    return {k[len(prefix) :]: v for k, v in converted.items() if k.startswith(prefix)}


def match_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], module: nn.Module, context: str, strict: bool = True
) -> dict[str, torch.Tensor]:
    """Adapts a reference state dict to `module` and checks it.

    * a DDP `module.` prefix is removed;
    * prior / decoder files are converted with `dalle2_pytorch.compat` (`convert_prior_state_dict`,
      `convert_decoder_state_dict`: 1.1.0 and 1.15.6 key generations);
    * entries that are non-persistent buffers of `module` (the derived noise-schedule tensors) are
      dropped;
    * `clip.*` keys are optional (CLIP is stripped from reference "model" files).

    Raises:
        StateDictMismatchError: (strict) missing / unexpected keys or shape mismatches, listed.
    """
    sd = _strip_module_prefix(state_dict)
    if "net.learned_query" in sd:
        sd = _convert_prior(sd, module, context)
    elif any(k.startswith("unets.") for k in sd):
        sd = _convert_decoder(sd)
    derived = _non_persistent_buffer_names(module)
    sd = {k: v for k, v in sd.items() if k not in derived}
    own = module.state_dict()
    module_has_clip = any(k.startswith(_CLIP) for k in own)
    file_clip = [k for k in sd if k.startswith(_CLIP)]
    if file_clip and not module_has_clip:
        # LAION's trainer checkpoints carry the frozen CLIP; a model built without CLIP ignores it
        logger.info("%s: ignoring %d clip.* weights (the model has no CLIP attached)", context, len(file_clip))
        sd = {k: v for k, v in sd.items() if not k.startswith(_CLIP)}
    has_clip = bool(file_clip) and module_has_clip
    expected = {k: v for k, v in own.items() if has_clip or not k.startswith(_CLIP)}
    if strict:
        check_state_dict(expected, sd, context)
    else:
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        if missing or unexpected:
            warnings.warn(
                f"{context}: loading non-strictly; {len(missing)} missing key(s) {missing[:5]}, "
                f"{len(unexpected)} unexpected key(s) {unexpected[:5]}",
                stacklevel=3,
            )
        sd = {k: v for k, v in sd.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    return sd


def reference_metadata(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The non-weight entries of a reference file, with `version` as a string and tensors as
    Python numbers/lists."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in DROPPED_ENTRIES or key.startswith(("optim", "sched")):
            continue
        if key == "version":
            value = str(value)  # a packaging Version object in reference files
        elif isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else value.tolist()
        out[key] = value
    return out
