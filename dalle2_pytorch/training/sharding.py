"""Sharded training (FSDP2 through accelerate) for the trainers.

With `accelerate launch --config_file train_configs/accelerate/fsdp2.yaml`, accelerate applies
`torch.distributed.fsdp.fully_shard` to the model the trainer prepares: every block the wrap policy
names becomes a unit whose parameters (and gradients and AdamW states) are split across the ranks
and gathered only while the block runs. What the trainers add on top:

* **Wrap policy.** An accelerate config with `fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP` and no
  class list gets this package's blocks (:data:`WRAP_CLASSES` that occur in the model: the Unet's
  `ResnetBlock` and attention blocks, the prior transformer's `Attention` and `FeedForward`).
* **Frozen parts.** A `clip` submodule, unets this run does not train, and modules whose parameters
  are all frozen (the prior's shared rotary embedding) are excluded from sharding
  (`ignored_modules`); they stay whole on every rank.
* **Checkpoints.** Every rank takes part in gathering full (unsharded) state dicts; the main
  process writes them with the crash-safe writer of `training.checkpoint`. The optimiser state is
  converted to the same layout as an unsharded run's (`optimizer.state_dict()`, parameters by
  index), so a checkpoint resumes with or without sharding, on any number of ranks.
* **EMA.** The EMA copy is a full model on every rank (sampling, validation and exports use it
  without collectives); it reads the sharded online weights gathered (`training.ema`).

FSDP version 1 is not supported (use `fsdp_version: 2`). accelerate does not shard on CPU: with
`ACCELERATE_USE_CPU` it runs MULTI_CPU (DDP with gloo) even when FSDP is configured; the trainers warn.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = [
    "WRAP_CLASSES",
    "check_sharding_support",
    "full_model_state",
    "full_optimizer_state",
    "is_sharded",
    "load_full_model_state",
    "load_full_optimizer_state",
    "prepare_fsdp_plugin",
    "to_full_tensor",
    "unsharded",
]

logger = logging.getLogger("dalle2_pytorch.training")

WRAP_CLASSES = ("ResnetBlock", "Residual", "Attention", "FeedForward")


def is_sharded(accelerator: Any) -> bool:
    """True when the accelerator shards parameters with FSDP2."""
    return bool(getattr(accelerator, "is_fsdp2", False))


def check_sharding_support(accelerator: Any) -> None:
    """Refuses FSDP1 and warns when FSDP was asked for but accelerate is not sharding.

    Raises:
        ValueError: FSDP version 1.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and not is_sharded(accelerator):
        raise ValueError(
            "FSDP version 1 is not supported by the dalle2_pytorch trainers; set fsdp_version: 2 in the "
            "accelerate config (see train_configs/accelerate/fsdp2.yaml)"
        )
    asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if asked and accelerator.distributed_type != DistributedType.FSDP:
        warnings.warn(
            f"FSDP was configured (ACCELERATE_USE_FSDP) but accelerate runs {accelerator.distributed_type.value}: "
            "accelerate only shards on GPUs (on CPU it trains data-parallel without sharding)",
            stacklevel=3,
        )


def prepare_fsdp_plugin(accelerator: Any, model: nn.Module, frozen: list[nn.Module] = ()) -> None:
    """Fills in the wrap classes (when the config names none) and keeps a CLIP and the `frozen`
    modules (e.g. unets not trained in this run, which sampling uses on one process) out of sharding."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = accelerator.state.fsdp_plugin
    policy = plugin.auto_wrap_policy
    policy = getattr(policy, "func", policy)
    ours = getattr(plugin, "_dalle2_wrap_classes", None)  # filled in by us for an earlier model
    if policy is transformer_auto_wrap_policy and (not plugin.transformer_cls_names_to_wrap or ours):
        present = {type(m).__name__ for m in model.modules()}
        plugin.transformer_cls_names_to_wrap = [name for name in WRAP_CLASSES if name in present]
        plugin._dalle2_wrap_classes = True
        logger.info("FSDP2 wraps the blocks %s", plugin.transformer_cls_names_to_wrap)
    keep_whole = [m for m in (getattr(model, "clip", None), *frozen) if isinstance(m, nn.Module)]
    # modules whose own parameters are all frozen: e.g. the prior's rotary embedding, one module
    # shared by every attention layer (a parameter seen by two FSDP units cannot be sharded)
    keep_whole += [m for m in model.modules() if _frozen_here(m)]
    added = getattr(plugin, "_dalle2_ignored", [])  # ours for an earlier model: replaced
    ignored = [m for m in (plugin.ignored_modules or []) if not any(m is a for a in added)]
    new = [m for m in keep_whole if any(True for _ in m.parameters()) and not any(m is i for i in ignored)]
    plugin._dalle2_ignored = new
    plugin.ignored_modules = (ignored + new) or None


def _frozen_here(module: nn.Module) -> bool:
    own = list(module.parameters(recurse=False))
    return bool(own) and not any(p.requires_grad for p in own)


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without torch.distributed
        return None
    return DTensor


def to_full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it); other tensors as is."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(t, dtensor):
        return t.full_tensor()
    return t


@contextlib.contextmanager
def unsharded(module: nn.Module) -> Iterator[nn.Module]:
    """Gathers the parameters an FSDP2 root module owns directly, for calls that are not its
    `forward` (sampling); its wrapped blocks gather their own when called. Every rank must enter."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        FSDPModule = ()  # type: ignore[assignment]
    if not isinstance(module, FSDPModule):
        yield module
        return
    module.unshard()
    try:
        yield module
    finally:
        module.reshard()


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded module on the main process ({} elsewhere); every rank calls."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(full_state_dict=True, cpu_offload=True))


def load_full_model_state(module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Loads a full state dict (present on every rank) into a sharded module."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_options(full_state_dict=True, strict=strict))


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def full_optimizer_state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimiser's full state in `optimizer.state_dict()` layout (parameters by index), on the
    main process ({} elsewhere); every rank calls."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    opt = _inner(optimizer)
    by_name = get_optimizer_state_dict(model, opt, options=_options(full_state_dict=True, cpu_offload=True))
    if not by_name:
        return {}
    names = _names(model)
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    index = {name: i for i, name in enumerate(order)}
    groups = []
    for saved in by_name["param_groups"]:
        groups.append({**saved, "params": [index[n] for n in saved["params"]]})
    state = {index[n]: v for n, v in by_name["state"].items()}
    return {"state": state, "param_groups": groups}


def load_full_optimizer_state(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Loads an `optimizer.state_dict()`-layout state (from any run, present on every rank) into the
    optimiser of a sharded model."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    opt = _inner(optimizer)
    names = _names(model)
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    if len(order) != sum(len(g["params"]) for g in state["param_groups"]):
        raise ValueError(
            f"the checkpoint's optimiser has {sum(len(g['params']) for g in state['param_groups'])} parameters, "
            f"this one {len(order)}"
        )
    by_name = {
        "state": {order[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    # strict=False: parameters that never had a gradient (unused conditioning) have no state, as in
    # `optimizer.load_state_dict`
    set_optimizer_state_dict(model, opt, by_name, options=_options(full_state_dict=True, strict=False))
