"""Machinery shared by `DiffusionPriorTrainer` and `DecoderTrainer`.

* Accelerator construction (`accelerator_*` kwargs, `amp` → accelerate mixed precision).
* Chunked gradient accumulation (`max_batch_size`) with loss scaling by the chunk fraction, and
  optional accumulation over several `forward`/`update` calls (`gradient_accumulation_steps`).
* Non-finite losses / gradients: the optimiser step is skipped on **all** processes together (the
  flag is summed across ranks first, so no rank waits in a collective the others skipped), counted
  in `num_nonfinite_skips` and logged.
* Gathering per-process RNG states for checkpoints (rank 0 writes; every rank must call `save`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object
from torch import nn

from dalle2_pytorch.training.batching import cast_inputs, split_batch
from dalle2_pytorch.integrity import NonFiniteTensorError
from dalle2_pytorch.training.checkpoint import MANIFEST, CheckpointWriteError, load_checkpoint, save_checkpoint
from dalle2_pytorch.training.ema import pop_prefixed
from dalle2_pytorch.training.performance import FirstStepTimer
from dalle2_pytorch.training.precision import AMP_CHOICES, resolve_mixed_precision
from dalle2_pytorch.training.sharding import check_sharding_support, to_full_tensor
from dalle2_pytorch.training.trainer_parallel import DEEPSPEED_MARKER, ParallelMixin, check_finite_state
from dalle2_pytorch.training.rng import capture_rng_state, restore_rng_state
from dalle2_pytorch.version import REFERENCE_VERSION, __version__

__all__ = ["AMP_CHOICES", "DEEPSPEED_MARKER", "TrainerBase", "resolve_mixed_precision"]

logger = logging.getLogger("dalle2_pytorch.training")

_OPTIMIZER_KWARGS = ("betas", "fused")


def _accelerator_option_names() -> set[str]:
    return {n for n in inspect.signature(Accelerator.__init__).parameters if n != "self"}


class _ExportMixin:
    """`export_model` / `export_reference_model` of the EMA weights (main process writes)."""

    def exported_model(self) -> contextlib.AbstractContextManager[nn.Module]:  # pragma: no cover
        raise NotImplementedError

    def export_model(self, directory: str | os.PathLike, **kwargs: Any) -> Path | None:
        """This package's released-weights directory of the EMA model (see `training.export`)."""
        from dalle2_pytorch.training.export import export_model

        out = None
        with self.exported_model() as model:
            if self.is_main_process:
                out = export_model(model, directory, kind=self._kind, **kwargs)
        self.accelerator.wait_for_everyone()
        return out

    def export_reference_model(self, path: str | os.PathLike, **kwargs: Any) -> Path | None:
        """The reference's tracker "model" `.pth` of the EMA model (see `training.export`)."""
        from dalle2_pytorch.training.export import export_reference_model

        out = None
        with self.exported_model() as model:
            if self.is_main_process:
                out = export_reference_model(model, path, kind=self._kind, **kwargs)
        self.accelerator.wait_for_everyone()
        return out


class TrainerBase(_ExportMixin, ParallelMixin, nn.Module):
    """Common state and helpers; subclasses build the model, optimisers, schedulers and EMAs."""

    def _init_common(
        self,
        accelerator: Accelerator | None,
        accelerator_kwargs: dict[str, Any],
        amp: bool | str | None,
        device: Any,
        gradient_accumulation_steps: int,
        find_unused_parameters: bool,
    ) -> None:
        if not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be an int >= 1, got {gradient_accumulation_steps!r}")
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self._accum_count = 0
        self._pending_nonfinite = False
        self._last_nonfinite_loss: float | None = None
        self.num_nonfinite_skips = 0
        self.consecutive_nonfinite_skips = 0
        self._unscaled = False
        self._first_step = FirstStepTimer("training", enabled=False)
        mixed = resolve_mixed_precision(amp, cpu=bool(accelerator_kwargs.get("cpu")))

        if accelerator is None:
            unknown = sorted(set(accelerator_kwargs) - _accelerator_option_names())
            if unknown:
                raise TypeError(f"unknown Accelerator option(s): {', '.join('accelerator_' + k for k in unknown)}")
            if mixed is not None:
                given = accelerator_kwargs.get("mixed_precision")
                if given is not None and given != mixed:
                    raise ValueError(f"amp={amp!r} conflicts with accelerator_mixed_precision={given!r}")
                accelerator_kwargs["mixed_precision"] = mixed
            if find_unused_parameters and "kwargs_handlers" not in accelerator_kwargs:
                accelerator_kwargs["kwargs_handlers"] = [DistributedDataParallelKwargs(find_unused_parameters=True)]
            accelerator = Accelerator(**accelerator_kwargs)
        else:
            if accelerator_kwargs:
                raise TypeError(
                    "accelerator_* options were given together with an accelerator: "
                    + ", ".join("accelerator_" + k for k in sorted(accelerator_kwargs))
                )
            if amp != "auto" and mixed not in (None, "no") and accelerator.mixed_precision == "no":
                warnings.warn(
                    f"amp={amp!r} is ignored: the given accelerator has mixed_precision='no' "
                    "(pass amp to an accelerator built with mixed_precision='bf16'/'fp16')",
                    stacklevel=3,
                )
        if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            warnings.warn("mixed_precision='fp16' has no effect on CPU (accelerate runs fp32); use 'bf16'", stacklevel=3)
        if device is not None and torch.device(device) != accelerator.device:
            warnings.warn(
                f"device={device!r} is ignored; the model is placed on the accelerator's device "
                f"{accelerator.device}",
                stacklevel=3,
            )
        self.accelerator = accelerator
        check_sharding_support(accelerator)

    # ------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------ forward

    def _chunked_forward(
        self,
        call: Callable[..., Any],
        args: tuple,
        kwargs: dict,
        max_batch_size: int | None,
        collect_extra: bool = False,
    ) -> tuple[float, list[Any]]:
        """Runs `call` on batch chunks; backward of `loss · fraction / accumulation` when training.

        Returns the batch loss (sum of chunk losses · fraction) and any extra outputs per chunk.
        """
        args, kwargs = cast_inputs(args, kwargs, self.device)
        total = 0.0
        extras = []
        grad_context = torch.enable_grad if self.training else torch.no_grad
        if self.training:
            self._first_step.start()
        for fraction, c_args, c_kwargs in split_batch(args, kwargs, max_batch_size):
            with grad_context(), self.accelerator.autocast():
                out = call(*c_args, **c_kwargs)
                if collect_extra:
                    loss, extra = out
                    extras.append(extra)
                else:
                    loss = out
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError(f"the model's forward must return a scalar loss tensor, got {type(loss).__name__}")
                loss = loss.float().reshape(()) * fraction
            value = loss.item()
            total += value
            if not math.isfinite(value):
                self._pending_nonfinite = True
                self._last_nonfinite_loss = value
            if self.training:
                # always backward, even for a non-finite loss: under DDP every rank must reach the
                # gradient all-reduce; the step is then skipped on all ranks in `update`
                self.accelerator.backward(loss / self.gradient_accumulation_steps)
        if self.training:
            self._first_step.stop(self.device)
        return total, extras

    # ------------------------------------------------------------------ update helpers

    def _should_step(self) -> bool:
        """Counts a micro-step; True when the accumulation window is complete."""
        self._accum_count += 1
        if self._accum_count < self.gradient_accumulation_steps:
            return False
        self._accum_count = 0
        return True

    def _any_across_processes(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.reduce(t, reduction="sum").item() > 0)

    def _clip_and_check(
        self, optimizer: Any, params: list[nn.Parameter], max_grad_norm: float | None
    ) -> bool:
        """Unscales (fp16 grad scaler) and clips the gradients of `params`; returns True when this
        process saw a non-finite loss or (without a grad scaler) a non-finite gradient norm.

        With a grad scaler, non-finite gradients are the scaler's business: its `step` skips the
        update and lowers the scale (a normal event in fp16 training).
        """
        scaler = self.accelerator.scaler
        grads = [p.grad for p in params if p.grad is not None]
        norm = None
        self._unscaled = False
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            if max_grad_norm is not None:
                norm = self.accelerator.clip_grad_norm_(params, max_grad_norm)
        elif grads:
            if scaler is not None:
                scaler.unscale_(getattr(optimizer, "optimizer", optimizer))
                self._unscaled = True
            if max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            elif scaler is None:
                norm = torch.nn.utils.get_total_norm(grads)
            if norm is not None:
                norm = to_full_tensor(norm)  # sharded gradients: the norm over all ranks
        bad = self._pending_nonfinite
        if norm is not None and scaler is None and not torch.isfinite(torch.as_tensor(norm)).item():
            bad = True
        self._pending_nonfinite = False
        return bad

    def _handle_nonfinite(self, local_bad: bool, optimizer: Any, what: str) -> bool:
        """Agrees on skipping across processes; on skip zeroes grads, counts and logs. True = skip."""
        skip = self._any_across_processes(local_bad)
        if not skip:
            self.consecutive_nonfinite_skips = 0
            return False
        optimizer.zero_grad(set_to_none=True)
        if self._unscaled:  # close the scaler's iteration (it backs off the scale on inf/NaN grads)
            self.accelerator.scaler.update()
            self._unscaled = False
        self.num_nonfinite_skips += 1
        self.consecutive_nonfinite_skips += 1
        if self.is_main_process:
            logger.warning(
                "non-finite loss or gradient (%s, last local loss %s): optimizer step skipped on all "
                "%d process(es); %d skip(s) so far, %d in a row",
                what,
                self._last_nonfinite_loss,
                self.accelerator.num_processes,
                self.num_nonfinite_skips,
                self.consecutive_nonfinite_skips,
            )
        self._last_nonfinite_loss = None
        return True

    # ------------------------------------------------------------------ checkpoint helpers

    def _gather_rng_states(self) -> dict[str, Any]:
        local = capture_rng_state()
        if self.accelerator.num_processes == 1:
            states = [local]
        else:
            states = gather_object([local])
        return {"num_processes": self.accelerator.num_processes, "states": list(states)}

    def _restore_rng_states(self, rng: dict[str, Any]) -> None:
        states = rng.get("states") or []
        n = rng.get("num_processes", len(states))
        rank = self.accelerator.process_index
        if n != self.accelerator.num_processes or rank >= len(states):
            warnings.warn(
                f"checkpoint RNG states were saved by {n} process(es), this run has "
                f"{self.accelerator.num_processes}; RNG states not restored (resume is not bit-exact)",
                stacklevel=3,
            )
            return
        restore_rng_state(states[rank])

    @staticmethod
    def _check_finite_params(module: nn.Module, what: str) -> None:
        for name, p in module.named_parameters():
            if p.is_floating_point() and not torch.isfinite(p).all():
                error = NonFiniteTensorError(
                    f"refusing to save a checkpoint: {what} parameter {name} has non-finite values "
                    "(training diverged; resume from the last checkpoint with a lower learning rate)"
                )
                error.exit_status = 3  # failed while running (the commands' exit status)
                raise error

    def _init_trainer(
        self,
        kwargs: dict[str, Any],
        *,
        accelerator: Accelerator | None,
        amp: bool | str | None,
        device: Any,
        gradient_accumulation_steps: int,
        max_grad_norm: float | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The trainers' shared preamble: splits the reference's prefixed keyword arguments
        (`ema_*`, `accelerator_*`, optimiser options), refuses any other, checks `max_grad_norm`
        and sets up the accelerator. Returns (ema kwargs, optimiser kwargs)."""
        ema_kwargs = pop_prefixed(kwargs, "ema_")
        accelerator_kwargs = pop_prefixed(kwargs, "accelerator_")
        optimizer_kwargs = {k: kwargs.pop(k) for k in _OPTIMIZER_KWARGS if k in kwargs}
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
        self._init_common(accelerator, accelerator_kwargs, amp, device, gradient_accumulation_steps, True)
        return ema_kwargs, optimizer_kwargs

    # ------------------------------------------------------------------ save / load (shared flow)

    _kind = "model"

    def _model_state(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ema_state(self) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _optimizer_state(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _counters(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load_weights(self, model: dict, ema: dict, strict: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    def _load_counters(self, state: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    def _load_reference_file(self, path: Path, strict: bool) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def _online_module(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _trainer_config(self) -> dict[str, Any]:
        return dict(self._config)

    def save(self, path: str | os.PathLike, keep_last: int | None = None, **metadata: Any) -> Path | None:
        """Writes a checkpoint (see :mod:`dalle2_pytorch.training.checkpoint`).

        Call it on **every** process: RNG states are gathered from all ranks; only the main process
        writes. `path` is a checkpoint root (writes `path/step_{N:08d}/` and keeps the newest
        `keep_last`, default `keep_last_checkpoints`), or, when it has a file-like suffix
        (`latest.pth`) or already is a checkpoint directory, the checkpoint directory itself.
        `metadata` (epoch, samples_seen, best_val_loss, config, ...) must be JSON-serialisable.

        Returns:
            The written directory on the main process, None elsewhere.

        Raises:
            NonFiniteTensorError: model parameters are not finite (nothing is written).
            CheckpointWriteError: the write failed (rolled back; earlier checkpoints intact).
        """
        path = Path(path)
        if not self.sharded:
            self._check_finite_params(self._online_module(), self._kind)
        rng = self._gather_rng_states()
        # sharded: every rank takes part in gathering the full states; the main process writes them
        model_state = self._online_state() if self.sharded else None
        optimizer_state = self._optimizer_state() if self.sharded else None
        exact = path.suffix != "" or (path / MANIFEST).exists()
        written, error = None, None
        if self.is_main_process:
            try:
                if model_state is None:
                    model_state = self._model_state()
                else:
                    check_finite_state(model_state, self._kind)
                written = save_checkpoint(
                    path,
                    step=self._checkpoint_step(),
                    model_state=model_state,
                    ema_state=self._ema_state(),
                    optimizer_state=optimizer_state if optimizer_state is not None else self._optimizer_state(),
                    rng_state=rng,
                    trainer_state=self._trainer_state(metadata),
                    keep_last=keep_last if keep_last is not None else self.keep_last_checkpoints,
                    exact_path=exact,
                )
                logger.info("saved checkpoint %s", written)
            except BaseException as e:  # report to the other ranks instead of leaving them waiting
                error = e
        if self._any_across_processes(error is not None):
            if error is not None:
                raise error
            raise CheckpointWriteError("saving the checkpoint failed on the main process (see its error)")
        return written

    def _checkpoint_step(self) -> int:
        return int(self._counters()["step"])

    def _trainer_state(self, metadata: dict[str, Any]) -> dict[str, Any]:
        online = self._online_module()
        state = {
            "format": "dalle2_pytorch.trainer_state",
            "kind": self._kind,
            **self._counters(),
            "num_nonfinite_skips": self.num_nonfinite_skips,
            "num_processes": self.accelerator.num_processes,
            "package_version": __version__,
            "reference_version": REFERENCE_VERSION,
            "torch_version": torch.__version__,
            "model_config": getattr(online, "config", None),
            "trainer_config": self._trainer_config(),
            "metadata": dict(metadata),
        }
        for key, aliases in _METADATA_FIELDS.items():
            state[key] = next((metadata[a] for a in aliases if a in metadata), None)
        return state

    def load(self, path: str | os.PathLike, only_model: bool = False, strict: bool = True) -> dict[str, Any]:
        """Restores a checkpoint written by :meth:`save` (a checkpoint directory, or a root whose
        newest valid checkpoint is used), or loads weights from a reference trainer/model `.pth`.

        With `only_model`, only model and EMA weights are restored. Otherwise the optimiser(s),
        LR scheduler(s), grad scaler, step counters and RNG states are restored as well, so training
        continues exactly as if it had not stopped.

        Returns:
            The saved metadata plus `step`/`steps`, `epoch`, `samples_seen`, `best_val_loss`, `path`.
        """
        path = Path(path)
        if path.is_file():
            return self._load_reference_file(path, strict)
        ckpt = load_checkpoint(path, only_model=only_model)
        state = ckpt.trainer_state
        if state.get("kind") != self._kind:
            raise ValueError(f"{ckpt.path} is a {state.get('kind')!r} checkpoint, not a {self._kind!r} one")
        self._load_weights(ckpt.model, ckpt.ema, strict)
        if not only_model:
            self._load_optimizer_state(ckpt.optimizer)
            self._load_counters(state)
            self.num_nonfinite_skips = int(state.get("num_nonfinite_skips") or 0)
            self._restore_rng_states(ckpt.rng)
        self._accum_count = 0
        self._pending_nonfinite = False
        out = dict(state.get("metadata") or {})
        out.update({k: state.get(k) for k in _METADATA_FIELDS})
        out.update(self._counters_from_state(state))
        out["path"] = str(ckpt.path)
        return out

    @staticmethod
    def _counters_from_state(state: dict[str, Any]) -> dict[str, Any]:
        return {k: state[k] for k in ("step", "steps") if k in state}


_METADATA_FIELDS = {
    "epoch": ("epoch", "current_epoch"),
    "samples_seen": ("samples_seen", "num_samples_seen"),
    "best_val_loss": ("best_val_loss", "best_validation_loss"),
}

