"""`DecoderTrainer`: one optimiser, LR schedule and EMA per unet of a cascaded `Decoder` (same
public names and main methods as the reference 1.15.6 trainer)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from dalle2_pytorch._helpers import cast_tuple
from dalle2_pytorch.serialization import safe_torch_load
from dalle2_pytorch.training.base import TrainerBase
from dalle2_pytorch.training.batching import cast_inputs, split_batch
from dalle2_pytorch.training.ema import ema_state_dict, load_ema_state_dict, make_ema
from dalle2_pytorch.training.optim import get_lr_scheduler, get_optimizer
from dalle2_pytorch.training.performance import enable_gradient_checkpointing, to_channels_last
from dalle2_pytorch.training.prior_trainer import eval_mode
from dalle2_pytorch.training.reference_files import (
    convert_reference_unet_state,
    match_reference_state_dict,
    reference_metadata,
)

__all__ = ["DecoderTrainer"]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


class DecoderTrainer(TrainerBase):
    """Trains the unets of a `Decoder`.

    Args:
        decoder: the decoder (`.unets` ModuleList, `forward(..., unet_number=...) -> loss`).
        accelerator: an `accelerate.Accelerator`; built from `accelerator_*` kwargs if None.
        dataloaders: optional `{"train": ..., "val": ...}`; prepared by the accelerator and stored
            in `self.dataloaders` (also `train_loader` / `val_loader`).
        use_ema: keep one EMA per trained unet (used by `sample` and exports).
        lr, wd, eps, warmup_steps, cosine_decay_max_steps: one value or one per unet.
        max_grad_norm: per-unet gradient-norm clip (over that unet's parameters only); None: off.
        amp: mixed precision through accelerate: "auto" (default: bf16 on GPUs with native bf16,
            float32 on CPU and older GPUs, the launcher's choice when it made one), True (bf16 where
            supported, else fp16), False, or "no" / "fp16" / "bf16".
        unet_training_mask: one bool per unet; unets marked False (and parameter-less unets such
            as `nn.Identity`) get no optimiser, scheduler or EMA and are frozen.
        gradient_accumulation_steps: optimiser step every this many `update(unet)` calls.
        keep_last_checkpoints: checkpoints kept under a root by `save`.
        compile: torch.compile the trained unets: False, True / "blocks" (each resnet and attention
            block), "model" (each unet whole); see `training.performance`. The first training step
            includes the compilation (`compile_seconds`).
        channels_last: store the unets (and their EMA copies) channels-last, the layout of cuDNN's
            bf16 convolutions (pays on GPUs, mostly together with `compile`).
        gradient_checkpointing: turn on the unets' `checkpoint_during_training`.
        **kwargs: `ema_*` → `ema_pytorch.EMA`, `accelerator_*` → `Accelerator`, `betas` / `fused`
            → the optimisers (`get_optimizer`). Anything else: TypeError.
    """

    _kind = "decoder"

    def __init__(
        self,
        decoder: nn.Module,
        accelerator: Accelerator | None = None,
        dataloaders: dict[str, Any] | None = None,
        use_ema: bool = True,
        lr: float | Sequence[float] = 1e-4,
        wd: float | Sequence[float] = 1e-2,
        eps: float | Sequence[float] = 1e-8,
        warmup_steps: int | None | Sequence[int | None] = None,
        cosine_decay_max_steps: int | None | Sequence[int | None] = None,
        max_grad_norm: float | None = 0.5,
        amp: bool | str = "auto",
        group_wd_params: bool = True,
        *,
        unet_training_mask: Sequence[bool] | None = None,
        gradient_accumulation_steps: int = 1,
        keep_last_checkpoints: int = 2,
        compile: bool | str = False,
        channels_last: bool = False,
        gradient_checkpointing: bool = False,
        device: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(decoder, nn.Module) or not hasattr(decoder, "unets"):
            raise TypeError(f"decoder must be a Decoder (an nn.Module with .unets), got {type(decoder).__name__}")
        ema_kwargs, optimizer_kwargs = self._init_trainer(
            kwargs, accelerator=accelerator, amp=amp, device=device,
            gradient_accumulation_steps=gradient_accumulation_steps, max_grad_norm=max_grad_norm,
        )

        self.num_unets = n = len(decoder.unets)
        lrs, wds, epss = (cast_tuple(v, n) for v in (lr, wd, eps))
        warmups, cosines = cast_tuple(warmup_steps, n), cast_tuple(cosine_decay_max_steps, n)
        mask = cast_tuple(True if unet_training_mask is None else unet_training_mask, n)
        self.use_ema = use_ema
        self.max_grad_norm = max_grad_norm
        self.keep_last_checkpoints = keep_last_checkpoints
        self._config = dict(
            use_ema=use_ema, lr=list(lrs), wd=list(wds), eps=list(epss), warmup_steps=list(warmups),
            cosine_decay_max_steps=list(cosines), max_grad_norm=max_grad_norm, amp=amp,
            group_wd_params=group_wd_params, unet_training_mask=[bool(m) for m in mask],
            gradient_accumulation_steps=gradient_accumulation_steps, ema=ema_kwargs, optimizer=optimizer_kwargs,
            compile=compile, channels_last=channels_last, gradient_checkpointing=gradient_checkpointing,
        )

        decoder = decoder.to(self.device)
        self.trained_unets = tuple(bool(m) and _has_params(u) for m, u in zip(mask, decoder.unets))
        if not any(self.trained_unets):
            raise ValueError("DecoderTrainer has no unet to train (all masked out or parameter-less)")
        trained = [u for u, t in zip(decoder.unets, self.trained_unets) if t]
        if channels_last:  # before the EMA copies, so that sampling with them is channels-last too
            to_channels_last(trained)
        if gradient_checkpointing:
            for unet in trained:
                enable_gradient_checkpointing(unet)
        optimizers: list[torch.optim.Optimizer | None] = []
        self.schedulers: list[Any] = []
        emas: list[nn.Module] = []
        for i, unet in enumerate(decoder.unets):
            if not self.trained_unets[i]:
                unet.requires_grad_(False)
                optimizers.append(None)
                self.schedulers.append(None)
                emas.append(nn.Identity())
                continue
            opt = get_optimizer(
                unet.parameters(), lr=lrs[i], wd=wds[i], eps=epss[i], group_wd_params=group_wd_params,
                **optimizer_kwargs,
            )
            optimizers.append(opt)
            self.schedulers.append(get_lr_scheduler(opt, warmups[i], cosines[i]))
            emas.append(make_ema(unet, **ema_kwargs) if use_ema else nn.Identity())
        self.ema_unets = nn.ModuleList(emas)
        self._compile(trained, compile)  # after the EMA copies: only the trained unets are compiled
        frozen = [u for u, t in zip(decoder.unets, self.trained_unets) if not t]
        self._prepare_sharding(decoder, use_ema, frozen=frozen)

        prepared = self.accelerator.prepare(decoder, *[o for o in optimizers if o is not None])
        self.decoder = prepared[0]
        it = iter(prepared[1:])
        self.optimizers = [next(it) if o is not None else None for o in optimizers]
        for i, opt in enumerate(self.optimizers):  # reference attribute names optim{i} / sched{i}
            setattr(self, f"optim{i}", opt)
            setattr(self, f"sched{i}", self.schedulers[i])

        self.dataloaders = {}
        for name, loader in (dataloaders or {}).items():
            self.dataloaders[name] = self.accelerator.prepare(loader)
        self.train_loader = self.dataloaders.get("train")
        self.val_loader = self.dataloaders.get("val")
        self.register_buffer("steps", torch.zeros(n, dtype=torch.long))

    # ------------------------------------------------------------------ accessors

    @property
    def unwrapped_decoder(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.decoder)

    def _online_module(self) -> nn.Module:
        return self.unwrapped_decoder

    @property
    def unets(self) -> nn.ModuleList:
        """EMA unets where available (online unets otherwise)."""
        online = self.unwrapped_decoder.unets
        return nn.ModuleList(
            self.ema_unets[i].ema_model if self._has_ema(i) else online[i] for i in range(self.num_unets)
        )

    def _has_ema(self, index: int) -> bool:
        return self.use_ema and self.trained_unets[index]

    def validate_and_return_unet_number(self, unet_number: int | None = None) -> int:
        if unet_number is None:
            if self.num_unets != 1:
                raise ValueError(f"unet_number is required: the decoder has {self.num_unets} unets")
            unet_number = 1
        if not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"unet_number must be an int in [1, {self.num_unets}], got {unet_number!r}")
        return unet_number

    def _trained_index(self, unet_number: int | None) -> int:
        number = self.validate_and_return_unet_number(unet_number)
        if not self.trained_unets[number - 1]:
            raise ValueError(f"unet {number} is not trained by this trainer (unet_training_mask / no parameters)")
        return number - 1

    def num_steps_taken(self, unet_number: int | None = None) -> int:
        """Optimiser steps taken by unet `unet_number` (1-based)."""
        number = self.validate_and_return_unet_number(unet_number)
        return int(self.steps[number - 1].item())

    # ------------------------------------------------------------------ training

    def forward(
        self,
        *args: Any,
        unet_number: int | None = None,
        max_batch_size: int | None = None,
        return_lowres_cond_image: bool = False,
        **kwargs: Any,
    ) -> float | tuple[float, torch.Tensor]:
        """Loss of unet `unet_number` on the batch; in training mode also accumulates gradients.

        Returns:
            The loss (float), plus the (b, c, h, w) low-resolution conditioning images when
            `return_lowres_cond_image` (None for the first unet, which has no such condition).
        """
        index = self._trained_index(unet_number)
        kwargs["unet_number"] = index + 1
        if return_lowres_cond_image:
            kwargs["return_lowres_cond_image"] = True
        total, extras = self._chunked_forward(
            self.decoder, args, kwargs, max_batch_size, collect_extra=return_lowres_cond_image
        )
        if return_lowres_cond_image:
            return total, (None if any(e is None for e in extras) else torch.cat(extras, dim=0))
        return total

    def update(self, unet_number: int | None = None) -> None:
        """For unet `unet_number`: clip (its own parameters) → step → zero grad → LR step → EMA
        update → its step counter += 1. Skipped on every process together after a non-finite
        loss or gradient."""
        index = self._trained_index(unet_number)
        if not self._should_step():
            return
        optimizer = self.optimizers[index]
        unet = self.unwrapped_decoder.unets[index]
        params = [p for p in unet.parameters() if p.requires_grad]
        bad = self._clip_and_check(optimizer, params, self.max_grad_norm)
        if self._handle_nonfinite(bad, optimizer, f"unet {index + 1} step {int(self.steps[index])}"):
            return
        stepped = self._optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        if stepped:
            self.schedulers[index].step()
        if self._has_ema(index):
            self.ema_unets[index].update()
        self.steps[index] += 1

    # ------------------------------------------------------------------ inference

    @contextlib.contextmanager
    def ema_unets_swapped_in(self, use_non_ema: bool = False) -> Iterator[nn.Module]:
        """Temporarily puts the EMA unets into the (unwrapped) decoder, in eval mode."""
        decoder = self.unwrapped_decoder
        originals = list(decoder.unets)
        try:
            if not use_non_ema:
                for i in range(self.num_unets):
                    if self._has_ema(i):
                        decoder.unets[i] = self.ema_unets[i].ema_model
            with self._full_params(decoder) if use_non_ema else contextlib.nullcontext(), eval_mode(decoder):
                yield decoder
        finally:
            for i, unet in enumerate(originals):
                decoder.unets[i] = unet

    def exported_model(self) -> contextlib.AbstractContextManager[nn.Module]:
        """The decoder with its EMA unets swapped in (the weights that are released)."""
        return self.ema_unets_swapped_in()

    @torch.no_grad()
    def sample(self, *args: Any, use_non_ema: bool = False, max_batch_size: int | None = None, **kwargs: Any) -> torch.Tensor:
        """`Decoder.sample` with the EMA unets (online ones with `use_non_ema`), in chunks of at
        most `max_batch_size` (an unconditional `batch_size` is chunked too).

        Returns:
            (b, c, h, w) images in [0, 1].
        """
        args, kwargs = cast_inputs(args, kwargs, self.device)
        chunks = list(split_batch(args, kwargs, max_batch_size))
        if len(chunks) == 1 and max_batch_size and isinstance(kwargs.get("batch_size"), int):
            total = kwargs["batch_size"]
            chunks = [
                (0.0, args, {**kwargs, "batch_size": min(max_batch_size, total - start)})
                for start in range(0, total, max_batch_size)
            ]
        outputs = []
        with self.ema_unets_swapped_in(use_non_ema) as decoder:
            for _, c_args, c_kwargs in chunks:
                outputs.append(decoder.sample(*c_args, **c_kwargs))
        return torch.cat(outputs, dim=0)

    @torch.no_grad()
    def embed_text(self, *args: Any, **kwargs: Any) -> Any:
        """The attached CLIP's `embed_text`."""
        args, kwargs = cast_inputs(args, kwargs, self.device)
        return self._clip("embed_text").embed_text(*args, **kwargs)

    @torch.no_grad()
    def embed_image(self, *args: Any, **kwargs: Any) -> Any:
        """The attached CLIP's `embed_image`."""
        args, kwargs = cast_inputs(args, kwargs, self.device)
        return self._clip("embed_image").embed_image(*args, **kwargs)

    def _clip(self, what: str) -> nn.Module:
        clip = getattr(self.unwrapped_decoder, "clip", None)
        if clip is None:
            raise ValueError(f"{what} needs a Decoder built with a CLIP (decoder.clip is None)")
        return clip

    # ------------------------------------------------------------------ checkpoint hooks

    def _model_state(self) -> dict[str, torch.Tensor]:
        return self.unwrapped_decoder.state_dict()

    def _ema_state(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i in range(self.num_unets):
            if self._has_ema(i):
                out.update(ema_state_dict(self.ema_unets[i], prefix=f"{i}."))
        return out

    def _optimizer_state(self) -> dict[str, Any]:
        scaler = self.accelerator.scaler
        return {
            "optimizers": [self._optimizer_state_dict(o) if o is not None else None for o in self.optimizers],
            "schedulers": [s.state_dict() if s is not None else None for s in self.schedulers],
            "scaler": scaler.state_dict() if scaler is not None else None,
        }

    def _counters(self) -> dict[str, Any]:
        steps = [int(s) for s in self.steps.tolist()]
        return {"step": max(steps), "steps": steps}

    def _load_weights(self, model: dict, ema: dict, strict: bool) -> None:
        self._load_online_state(self.unwrapped_decoder, model, strict)
        for i in range(self.num_unets):
            if not self._has_ema(i):
                continue
            prefix = f"{i}."
            part = {k[len(prefix) :]: v for k, v in ema.items() if k.startswith(prefix)}
            if part:
                load_ema_state_dict(self.ema_unets[i], part, strict=strict)
            else:
                warnings.warn(f"checkpoint has no EMA state for unet {i + 1}; EMA re-initialised from its weights", stacklevel=3)
                own = f"unets.{i}."
                self.ema_unets[i].ema_model.load_state_dict({k[len(own):]: v for k, v in model.items() if k.startswith(own)})

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        for i in range(self.num_unets):
            opt_state, sched_state = state["optimizers"][i], state["schedulers"][i]
            if self.optimizers[i] is None:
                continue
            if opt_state is None:
                warnings.warn(f"checkpoint has no optimizer state for unet {i + 1}; it starts fresh", stacklevel=3)
                continue
            self._load_optimizer_state_dict(self.optimizers[i], opt_state)
            self.schedulers[i].load_state_dict(sched_state)
        if state.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])

    def _load_counters(self, state: dict[str, Any]) -> None:
        steps = state.get("steps") or [state["step"]] * self.num_unets
        if len(steps) != self.num_unets:
            raise ValueError(f"checkpoint has step counters for {len(steps)} unets, the decoder has {self.num_unets}")
        self.steps.copy_(torch.tensor(steps, dtype=torch.long))

    def _load_reference_file(self, path: Path, strict: bool) -> dict[str, Any]:
        obj = safe_torch_load(path)
        if not isinstance(obj, dict) or "model" not in obj:
            raise ValueError(f"{path} is neither a dalle2_pytorch checkpoint directory nor a reference decoder file with a 'model' entry")
        decoder = self.unwrapped_decoder
        online = match_reference_state_dict(obj["model"], decoder, f"{path} ['model']", strict)
        self._load_online_state(decoder, online, strict=False)
        ema_obj = obj.get("ema") or {}
        for i in range(self.num_unets):
            if not self._has_ema(i):
                continue
            ema = self.ema_unets[i]
            prefix = f"{i}.ema_model."
            part = {k[len(prefix) :]: v for k, v in ema_obj.items() if k.startswith(prefix)}
            if part:  # trainer checkpoint: its EMA weights; model file: the file's (EMA) weights
                part = convert_reference_unet_state(part, i)
                part = match_reference_state_dict(part, ema.ema_model, f"{path} ['ema'] unet {i + 1}", strict)
                ema.ema_model.load_state_dict(part, strict=False)
            else:
                own = f"unets.{i}."
                ema.ema_model.load_state_dict({k[len(own):]: v for k, v in online.items() if k.startswith(own)}, strict=False)
            ema.initted.fill_(True)
            if f"{i}.step" in ema_obj:
                ema.step.fill_(int(ema_obj[f"{i}.step"]))
        if "steps" in obj:
            steps = torch.as_tensor(obj["steps"]).reshape(-1)
            if len(steps) == self.num_unets:
                self.steps.copy_(steps.long())
        if any(k.startswith(("optim", "sched")) for k in obj):
            warnings.warn(
                f"{path} is a reference trainer checkpoint: model and EMA weights (and step counters) "
                "were loaded; its optimizer / LR-scheduler state was NOT restored",
                stacklevel=3,
            )
        out = reference_metadata(obj)
        out["steps"] = [int(s) for s in self.steps.tolist()]
        out["path"] = str(path)
        return out
