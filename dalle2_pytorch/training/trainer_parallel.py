"""The parts of `TrainerBase` for speed and sharding: torch.compile of the trained networks, the
optimiser step (with fp16 overflow detection that also works for fused optimisers), and FSDP2
state handling (see :mod:`dalle2_pytorch.training.sharding`)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn

from dalle2_pytorch.training.optim import load_optimizer_state
from dalle2_pytorch.training.performance import COMPILE_SCOPES, FirstStepTimer, compile_network
from dalle2_pytorch.training.sharding import (
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_model_state,
    load_full_optimizer_state,
    prepare_fsdp_plugin,
    unsharded,
)

__all__ = ["DEEPSPEED_MARKER", "ParallelMixin", "check_finite_state"]

logger = logging.getLogger("dalle2_pytorch.training")

DEEPSPEED_MARKER = "deepspeed_partitioned_state_not_saved"


class ParallelMixin:
    """Mixed into `TrainerBase`; expects `self.accelerator`, `self.is_main_process`,
    `self._online_module()` and `self._model_state()`."""

    _first_step: FirstStepTimer

    def _compile(self, modules: list[nn.Module], compile: bool | str | dict | None) -> str | None:
        """torch.compile of the networks in `modules` (see `training.performance`); returns the scope.

        `compile`: False/None (off), True ("blocks"), "blocks", "model", or a dict with an optional
        "scope" and `torch.compile` keyword arguments (mode, backend, ...).
        """
        if compile is None or compile is False:
            return None
        options = dict(compile) if isinstance(compile, dict) else {}
        scope = options.pop("scope", "blocks") if isinstance(compile, dict) else ("blocks" if compile is True else compile)
        if scope not in COMPILE_SCOPES:
            raise ValueError(f"compile must be a bool, one of {COMPILE_SCOPES} or a dict, got {compile!r}")
        n = sum(compile_network(m, scope, **options) for m in modules)
        self._first_step = FirstStepTimer("training", enabled=True)
        logger.info("torch.compile: %d module(s) at scope %r; compiled at their first call", n, scope)
        return scope

    @property
    def compile_seconds(self) -> float | None:
        """Wall time of the first training step after `compile` (compilation included); None
        before it or without compile."""
        return self._first_step.seconds

    # ------------------------------------------------------------------ sharding (FSDP2)

    @property
    def sharded(self) -> bool:
        """Whether the parameters are sharded across processes (FSDP2 through accelerate)."""
        return is_sharded(self.accelerator)

    def _prepare_sharding(self, model: nn.Module, use_ema: bool, frozen: list[nn.Module] = ()) -> None:
        """Before `accelerator.prepare` under FSDP2: wrap policy, CLIP and `frozen` modules kept out of
        sharding (training.sharding)."""
        if not self.sharded:
            return
        if not use_ema:
            raise ValueError(
                "FSDP sharding needs use_ema=True: sampling, sample grids and exports use the EMA copy, which "
                "stays whole on every rank (the sharded online model can only run on all ranks together)"
            )
        prepare_fsdp_plugin(self.accelerator, model, frozen=frozen)

    def _online_state(self) -> dict[str, torch.Tensor]:
        """The online model's full state dict (sharded: gathered, every rank must call; main has it)."""
        return full_model_state(self._online_module()) if self.sharded else self._model_state()

    def _load_online_state(self, module: nn.Module, state: dict[str, torch.Tensor], strict: bool) -> None:
        if self.sharded:
            load_full_model_state(module, state, strict=strict)
        else:
            module.load_state_dict(state, strict=strict)

    def _optimizer_state_dict(self, optimizer: Any) -> dict[str, Any]:
        """`optimizer.state_dict()`; sharded: the full state in the same layout (collective).

        Under DeepSpeed ZeRO the AdamW moments are partitioned across the ranks inside DeepSpeed's
        own optimiser; they are not saved (a marker is), and a resumed run restarts them.
        """
        if self.sharded:
            return full_optimizer_state(self._online_module(), optimizer)
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            if self.is_main_process:
                logger.warning("DeepSpeed ZeRO partitions the optimiser state: the checkpoint holds no AdamW "
                               "moments (a resumed run restarts them); FSDP2 checkpoints keep them")
            return {DEEPSPEED_MARKER: True}
        return optimizer.state_dict()

    def _load_optimizer_state_dict(self, optimizer: Any, state: dict[str, Any]) -> None:
        if state.get(DEEPSPEED_MARKER):
            warnings.warn("the checkpoint was written under DeepSpeed ZeRO and holds no optimiser state: "
                          "AdamW's moments start fresh (weights, EMA, schedule and counters are restored)",
                          stacklevel=3)
            return
        if self.sharded:
            model = self._online_module()
            load_optimizer_state(optimizer, state, load=lambda st: load_full_optimizer_state(model, optimizer, st))
        else:
            load_optimizer_state(optimizer, state)

    def _full_params(self, module: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
        """Context for calling methods other than `forward` (sampling) on the online model."""
        if self.sharded and module is self._online_module():
            return unsharded(module)
        return contextlib.nullcontext(module)

    def _optimizer_step(self, optimizer: Any) -> bool:
        """`optimizer.step()`; returns whether the parameters were updated.

        With an fp16 grad scaler the step is skipped when the scaled gradients overflowed. accelerate
        notices that only for optimizers whose `step` the scaler does not call; a fused optimizer is
        always called (its kernel skips the update itself), so the scaler's backed-off scale is what
        tells. The wrapped optimizer's `step_was_skipped` is set to match.
        """
        scaler = self.accelerator.scaler
        if scaler is None:
            optimizer.step()
            return not getattr(optimizer, "step_was_skipped", False)
        before = scaler.get_scale()
        optimizer.step()
        skipped = bool(getattr(optimizer, "step_was_skipped", False)) or scaler.get_scale() < before
        if hasattr(optimizer, "_is_overflow"):
            optimizer._is_overflow = skipped
        return not skipped


def check_finite_state(state: dict[str, torch.Tensor], what: str) -> None:
    """Raises RuntimeError naming the first non-finite floating-point entry of a state dict."""
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise RuntimeError(f"refusing to save a checkpoint: {what} parameter {name} has non-finite values")
