"""`DiffusionPriorTrainer`: optimiser, LR schedule, EMA, chunked accumulation and checkpoints for a
`DiffusionPrior` (same public names and main methods as the reference 1.15.6 trainer)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from dalle2_pytorch.serialization import safe_torch_load
from dalle2_pytorch.training.base import TrainerBase
from dalle2_pytorch.training.batching import cast_inputs, split_batch
from dalle2_pytorch.training.ema import ema_state_dict, load_ema_state_dict, make_ema
from dalle2_pytorch.training.optim import get_lr_scheduler, get_optimizer
from dalle2_pytorch.training.performance import enable_gradient_checkpointing
from dalle2_pytorch.training.reference_files import match_reference_state_dict, reference_metadata

__all__ = ["DiffusionPriorTrainer"]


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Puts `module` in eval mode and restores its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class DiffusionPriorTrainer(TrainerBase):
    """Trains a `DiffusionPrior`.

    Args:
        diffusion_prior: the prior (any module whose forward returns a scalar loss).
        accelerator: an `accelerate.Accelerator`; built from `accelerator_*` kwargs if None.
        use_ema: keep an EMA copy (used by `sample` / `p_sample_loop` and exports).
        lr, wd, eps: AdamW settings (ndim < 2 parameters get no weight decay when `group_wd_params`).
        max_grad_norm: clip the gradient norm to this value (None: no clipping).
        warmup_steps: linear LR warm-up length in optimiser steps.
        cosine_decay_max_steps: cosine-decay the LR to 0 over this many optimiser steps.
        amp: mixed precision through accelerate: "auto" (default: bf16 on GPUs with native bf16,
            float32 on CPU and older GPUs, the launcher's choice when it made one), True (bf16 where
            supported, else fp16), False, or "no" / "fp16" / "bf16".
        gradient_accumulation_steps: optimiser step every this many `update()` calls.
        keep_last_checkpoints: checkpoints kept under a root by `save`.
        compile: torch.compile the prior network: False, True / "blocks" (each transformer layer's
            attention and feed-forward), "model" (the whole network); see `training.performance`.
            The first training step includes the compilation (`compile_seconds`).
        gradient_checkpointing: recompute each transformer layer in backward (less activation memory).
        device: accepted for compatibility; the accelerator decides the device.
        **kwargs: `ema_*` → `ema_pytorch.EMA` (beta, update_after_step, update_every, ...),
            `accelerator_*` → `Accelerator`, `betas` / `fused` → the optimiser (`get_optimizer`).
            Anything else: TypeError.
    """

    _kind = "prior"

    def __init__(
        self,
        diffusion_prior: nn.Module,
        accelerator: Accelerator | None = None,
        use_ema: bool = True,
        lr: float = 3e-4,
        wd: float = 1e-2,
        eps: float = 1e-6,
        max_grad_norm: float | None = None,
        group_wd_params: bool = True,
        warmup_steps: int | None = None,
        cosine_decay_max_steps: int | None = None,
        *,
        amp: bool | str = "auto",
        gradient_accumulation_steps: int = 1,
        keep_last_checkpoints: int = 2,
        compile: bool | str = False,
        gradient_checkpointing: bool = False,
        device: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(diffusion_prior, nn.Module):
            raise TypeError(f"diffusion_prior must be an nn.Module, got {type(diffusion_prior).__name__}")
        ema_kwargs, optimizer_kwargs = self._init_trainer(
            kwargs, accelerator=accelerator, amp=amp, device=device,
            gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm,
        )
        self.use_ema = use_ema
        self.max_grad_norm = max_grad_norm
        self.keep_last_checkpoints = keep_last_checkpoints
        self._config = dict(
            use_ema=use_ema, lr=lr, wd=wd, eps=eps, max_grad_norm=max_grad_norm,
            group_wd_params=group_wd_params, warmup_steps=warmup_steps,
            cosine_decay_max_steps=cosine_decay_max_steps, amp=amp,
            gradient_accumulation_steps=gradient_accumulation_steps,
            ema=ema_kwargs, optimizer=optimizer_kwargs, compile=compile, gradient_checkpointing=gradient_checkpointing,
        )

        prior = diffusion_prior.to(self.device)
        if gradient_checkpointing and not enable_gradient_checkpointing(prior):
            raise ValueError("gradient_checkpointing=True but the prior has no CausalTransformer to checkpoint")
        self.ema_diffusion_prior = make_ema(prior, **ema_kwargs) if use_ema else None
        optimizer = get_optimizer(
            prior.parameters(), lr=lr, wd=wd, eps=eps, group_wd_params=group_wd_params, **optimizer_kwargs
        )
        self.scheduler = get_lr_scheduler(optimizer, warmup_steps, cosine_decay_max_steps)
        self._compile([prior], compile)  # after the EMA copy: only the trained network is compiled
        self._prepare_sharding(prior, use_ema)
        self.diffusion_prior, self.optimizer = self.accelerator.prepare(prior, optimizer)
        self.register_buffer("step", torch.tensor([0]))

    # ------------------------------------------------------------------ accessors

    @property
    def unwrapped_prior(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.diffusion_prior)

    def _online_module(self) -> nn.Module:
        return self.unwrapped_prior

    def _sampling_model(self, use_non_ema: bool = False) -> nn.Module:
        if self.use_ema and not use_non_ema:
            return self.ema_diffusion_prior.ema_model
        return self.unwrapped_prior

    def num_steps_taken(self) -> int:
        return int(self.step.item())

    @contextlib.contextmanager
    def exported_model(self) -> Iterator[nn.Module]:
        """The model whose weights are released: the EMA prior (online prior without EMA)."""
        yield self._sampling_model()

    # ------------------------------------------------------------------ training

    def forward(self, *args: Any, max_batch_size: int | None = None, **kwargs: Any) -> float:
        """Loss of the batch; in training mode also accumulates its gradients.

        The batch is split into chunks of at most `max_batch_size`; each chunk's loss is scaled by
        its fraction of the batch, so the gradients equal those of the whole batch.
        """
        total, _ = self._chunked_forward(self.diffusion_prior, args, kwargs, max_batch_size)
        return total

    def update(self) -> None:
        """Clip → optimiser step → zero grad → LR step → EMA update → step += 1.

        Skipped on every process together when any process saw a non-finite loss or gradient.
        """
        if not self._should_step():
            return
        params = [p for p in self.unwrapped_prior.parameters() if p.requires_grad]
        bad = self._clip_and_check(self.optimizer, params, self.max_grad_norm)
        if self._handle_nonfinite(bad, self.optimizer, f"prior step {self.num_steps_taken()}"):
            return
        stepped = self._optimizer_step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        if stepped:
            self.scheduler.step()
        if self.use_ema:
            self.ema_diffusion_prior.update()
        self.step += 1

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def p_sample_loop(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """`DiffusionPrior.p_sample_loop` of the EMA model (online model without EMA)."""
        model = self._sampling_model()
        args, kwargs = cast_inputs(args, kwargs, self.device)
        with self._full_params(model), eval_mode(model):
            return model.p_sample_loop(*args, **kwargs)

    @torch.no_grad()
    def sample(self, *args: Any, max_batch_size: int | None = None, use_non_ema: bool = False, **kwargs: Any) -> torch.Tensor:
        """`DiffusionPrior.sample` with the EMA model, in chunks of at most `max_batch_size`.

        Returns:
            (b, image_embed_dim) image embeddings.
        """
        model = self._sampling_model(use_non_ema)
        args, kwargs = cast_inputs(args, kwargs, self.device)
        outputs = []
        with self._full_params(model), eval_mode(model):
            for _, c_args, c_kwargs in split_batch(args, kwargs, max_batch_size):
                outputs.append(model.sample(*c_args, **c_kwargs))
        return torch.cat(outputs, dim=0)

    @torch.no_grad()
    def sample_batch_size(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """`DiffusionPrior.sample_batch_size` of the EMA model (online model without EMA)."""
        model = self._sampling_model()
        args, kwargs = cast_inputs(args, kwargs, self.device)
        with self._full_params(model), eval_mode(model):
            return model.sample_batch_size(*args, **kwargs)

    @torch.no_grad()
    def embed_text(self, *args: Any, **kwargs: Any) -> Any:
        """The attached CLIP's `embed_text` (text embeddings and encodings)."""
        clip = getattr(self.unwrapped_prior, "clip", None)
        if clip is None:
            raise ValueError("embed_text needs a DiffusionPrior built with a CLIP (prior.clip is None)")
        args, kwargs = cast_inputs(args, kwargs, self.device)
        return clip.embed_text(*args, **kwargs)

    # ------------------------------------------------------------------ checkpoint hooks

    def _model_state(self) -> dict[str, torch.Tensor]:
        return self.unwrapped_prior.state_dict()

    def _ema_state(self) -> dict[str, torch.Tensor]:
        return ema_state_dict(self.ema_diffusion_prior) if self.use_ema else {}

    def _optimizer_state(self) -> dict[str, Any]:
        scaler = self.accelerator.scaler
        return {
            "optimizers": [self._optimizer_state_dict(self.optimizer)],
            "schedulers": [self.scheduler.state_dict()],
            "scaler": scaler.state_dict() if scaler is not None else None,
        }

    def _counters(self) -> dict[str, Any]:
        return {"step": self.num_steps_taken()}

    def _load_weights(self, model: dict, ema: dict, strict: bool) -> None:
        self._load_online_state(self.unwrapped_prior, model, strict)
        if self.use_ema:
            if ema:
                load_ema_state_dict(self.ema_diffusion_prior, ema, strict=strict)
            else:
                warnings.warn("checkpoint has no EMA state; EMA re-initialised from the loaded weights", stacklevel=3)
                self.ema_diffusion_prior.ema_model.load_state_dict(model, strict=strict)

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        self._load_optimizer_state_dict(self.optimizer, state["optimizers"][0])
        self.scheduler.load_state_dict(state["schedulers"][0])
        if state.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])

    def _load_counters(self, state: dict[str, Any]) -> None:
        self.step.fill_(int(state["step"]))

    def load(
        self, path: str | Path, only_model: bool = False, strict: bool = True, overwrite_lr: bool = False
    ) -> dict[str, Any]:
        """See :meth:`TrainerBase.load`. `overwrite_lr=True` (the reference's behaviour) resets
        the learning rate to this trainer's `lr` after loading, as a fine-tuning convenience."""
        out = super().load(path, only_model=only_model, strict=strict)
        if overwrite_lr:
            lr = self._config["lr"]
            self.scheduler.base_lrs = [lr for _ in self.scheduler.base_lrs]
            factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * factor
                group["initial_lr"] = lr
        return out

    def _load_reference_file(self, path: Path, strict: bool) -> dict[str, Any]:
        obj = safe_torch_load(path)
        if not isinstance(obj, dict) or "model" not in obj:
            raise ValueError(f"{path} is neither a dalle2_pytorch checkpoint directory nor a reference prior file with a 'model' entry")
        prior = self.unwrapped_prior
        online = match_reference_state_dict(obj["model"], prior, f"{path} ['model']", strict)
        self._load_online_state(prior, online, strict=False)
        if self.use_ema:
            ema_source = obj.get("ema_model", obj["model"])
            ema_sd = match_reference_state_dict(ema_source, prior, f"{path} ['ema_model']", strict)
            ema = self.ema_diffusion_prior
            ema.ema_model.load_state_dict(ema_sd, strict=False)
            ema.initted.fill_(True)
            ema_step = (obj.get("ema") or {}).get("step")
            if ema_step is not None:
                ema.step.fill_(int(ema_step))
        if "step" in obj:
            self.step.fill_(int(torch.as_tensor(obj["step"]).reshape(-1)[0]))
        if any(k in obj for k in ("optimizer", "scheduler", "warmup_scheduler")):
            warnings.warn(
                f"{path} is a reference trainer checkpoint: model and EMA weights (and the step "
                "counter) were loaded; its optimizer / LR-scheduler / warm-up state was NOT restored",
                stacklevel=3,
            )
        out = reference_metadata(obj)
        out["step"] = self.num_steps_taken()
        out["path"] = str(path)
        return out
