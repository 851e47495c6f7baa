"""`train_prior.py`: trains a `DiffusionPrior` on precomputed CLIP embeddings.

Differences from the reference script (reference-inventory §3.6), all deliberate fixes:

* the "online" validation loss really uses the online model (the reference evaluated the EMA
  model twice); validation losses are **means**, computed in eval mode without conditioning
  dropout and with a fixed generator, so they are comparable between evaluations;
* priors not conditioned on text encodings train from precomputed text embeddings
  (`data.text_url`) and call the prior with `text_embed=` (broken in the reference);
* `use_ema=false` works; `eval_timesteps` may be any step count up to `prior.timesteps`;
* resume restores the step, epoch, samples seen, best validation loss **and** the data position
  of every rank inside its own slice (the reference applied one global offset to every rank);
* checkpoints are crash-safe directories; a damaged newest checkpoint falls back to the previous.

Loop: per batch the text is embedded by CLIP (captions) or read (text embeddings), the trainer
takes a step (non-finite losses are skipped by the trainer and logged), metrics go to
`metrics.jsonl` and the logger; validation + cosine report every `data.eval_every_seconds` (or
`--eval-every-steps`), a checkpoint every `train.save_every_seconds` (or `--save-every-steps`).
At the end: validation, test loss, final checkpoint, export (`export/` + `model.pth`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dalle2_pytorch.config import TrainDiffusionPriorConfig
from dalle2_pytorch.training import DiffusionPriorTrainer
from dalle2_pytorch.training.scripts.cli import (
    ConfigError,
    RunOptions,
    build_parser,
    load_config,
    parse_args,
    positive_int,
    run_cli,
)
from dalle2_pytorch.training.scripts.clip_loading import build_clip
from dalle2_pytorch.training.scripts.prior_data import (
    PriorConditioner,
    PriorData,
    cosine_report,
    first_batch,
    iterate_batches,
    validation_loss,
)
from dalle2_pytorch.training.scripts.runtime import (
    GracefulStop,
    MetricsLog,
    Periodic,
    RunState,
    ScriptLoop,
    ThreadsOnSignal,
    all_ranks_agree,
    any_rank,
    build_accelerator,
    build_tracker,
    log_run_start,
    reduce_mean,
    reduce_sum,
    seed_everything,
    setup_logging,
)
from dalle2_pytorch.training.scripts.run_folder import prepare_run_folder_on_all_ranks

__all__ = ["check_config", "cli", "main", "train_prior"]

logger = logging.getLogger("dalle2_pytorch.scripts.prior")

_EVAL_SEED_OFFSET = 10_007  # validation / sampling generators: fixed, independent of training draws


def main(argv: Sequence[str] | None = None) -> int:
    """`train_prior.py` entry point. Returns the exit status: 0 finished or reached --max-steps,
    1 stopped by SIGTERM / SIGUSR1 after saving a checkpoint.

    Raises:
        ConfigError: invalid config (every bad key is named).
        RunFolderError: the run folder cannot be continued / started as asked.
        CheckpointWriteError: a checkpoint or export could not be written (rolled back).
    """
    parser = build_parser("train_prior.py", "Train a DALL-E 2 diffusion prior on precomputed CLIP embeddings.")
    parser.add_argument("--eval-every-steps", "--eval_every_steps", dest="eval_every_steps", type=positive_int,
                        default=None, help="validate every N steps instead of every data.eval_every_seconds")
    parser.add_argument("--save-every-steps", "--save_every_steps", dest="save_every_steps", type=positive_int,
                        default=None, help="checkpoint every N steps instead of every train.save_every_seconds")
    args = parse_args(parser, argv)
    config = load_config(TrainDiffusionPriorConfig, args.config_file, args.override)
    if args.check_config:
        print(check_config(config, args.config_file), flush=True)
        return 0
    return train_prior(config, RunOptions.from_args(args))


def cli(argv: Sequence[str] | None = None) -> int:
    """Console entry point: like `main`, but every error is one line on stderr and an exit status
    (see :mod:`dalle2_pytorch.command_line`)."""
    return run_cli(main, argv, prog="train_prior.py")


def check_config(config: TrainDiffusionPriorConfig, source: str = "config") -> str:
    """`--check-config`: builds the prior network on the meta device (no memory, no weights) and
    returns a one-line summary."""
    try:
        with torch.device("meta"):
            prior = config.prior.create(build_clip=False)
    except (ValueError, TypeError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"{source}: the prior network cannot be built from this config: {e}") from e
    params = sum(p.numel() for p in prior.parameters())
    return (f"config OK: {source}: prior with {params:,} parameters; batch size {config.data.batch_size}, "
            f"{config.train.epochs} epoch(s); run folder {config.tracker.data_path}")


def build_trainer(config: TrainDiffusionPriorConfig, accelerator: Any) -> DiffusionPriorTrainer:
    """The `DiffusionPriorTrainer` of a config (prior built without CLIP; its config attached)."""
    t = config.train
    prior = config.prior.create(build_clip=False)
    prior.config = config.prior.model_dump(mode="json")  # exported with the weights
    return DiffusionPriorTrainer(
        prior, accelerator=accelerator, use_ema=t.use_ema, lr=t.lr, wd=t.wd, max_grad_norm=t.max_grad_norm,
        warmup_steps=t.warmup_steps, cosine_decay_max_steps=t.cosine_decay_max_steps, amp=t.amp,
        ema_beta=t.ema_beta, ema_update_after_step=t.ema_update_after_step, ema_update_every=t.ema_update_every,
        compile=t.compile, gradient_checkpointing=t.gradient_checkpointing,
    )


def train_prior(config: TrainDiffusionPriorConfig, options: RunOptions | None = None) -> int:
    """Runs (or, with `options.dry_run`, checks) a prior training run. Returns the exit status."""
    options = options or RunOptions()
    t = config.train
    accelerator = build_accelerator(cpu=options.cpu, amp=t.amp)
    setup_logging(accelerator.is_main_process)
    device = accelerator.device
    seed_everything(t.random_seed)  # same initial weights on every rank
    clip = build_clip(config.prior.clip, device) if PriorData.uses_clip(config) else None
    trainer = build_trainer(config, accelerator)
    data = PriorData(config, clip, trainer.unwrapped_prior.image_embed_dim, accelerator.process_index,
                     accelerator.num_processes)
    conditioner = PriorConditioner(clip, config.prior.condition_on_text_encodings, device)
    seed_everything(t.random_seed + accelerator.process_index)  # different noise / timesteps per rank

    if options.dry_run:
        return _dry_run(trainer, data, conditioner, device)

    resume_from = prepare_run_folder_on_all_ranks(accelerator, config.tracker.data_path, resume=options.resume,
                                                  start_over=options.start_over)
    log_run_start(accelerator, "prior", trainer.unwrapped_prior, [trainer.unwrapped_prior], config.tracker.data_path,
                  resume_from, clip=clip)
    tracker = build_tracker(config.tracker, accelerator)
    meta = tracker.recall(trainer, checkpoint=resume_from)
    if meta is not None:
        state = RunState.from_metadata(meta)
        logger.info("resumed from %s at step %d (epoch %d, %d samples seen)", meta.get("path"),
                    trainer.num_steps_taken(), state.epoch, state.samples_seen)
    else:
        state = RunState(epoch=t.current_epoch, samples_seen=t.num_samples_seen, best_val_loss=t.best_validation_loss)
    resumed_checkpoint = meta is not None and meta.get("epoch_offset") is not None
    data_path = Path(config.tracker.data_path)
    metrics = MetricsLog(data_path / "metrics.jsonl", accelerator.is_main_process,
                         keep_until_step=trainer.num_steps_taken() if resumed_checkpoint else None)
    tracker.save_config(config)
    tracker.init(config, {"num_processes": accelerator.num_processes, "device": str(device),
                          "data_sizes": data.sizes()})
    run = _PriorLoop(config, options, trainer, tracker, data, conditioner, metrics, state)
    try:
        return run.run()
    finally:
        tracker.finish()


def _dry_run(
    trainer: DiffusionPriorTrainer, data: PriorData, conditioner: PriorConditioner, device: torch.device
) -> int:
    batch = first_batch(data.train)
    if batch is None:
        raise ConfigError("the training split is empty (check data.num_data_points and data.splits)")
    image_embed, text = batch
    cond = conditioner(text)
    with torch.no_grad():
        loss = trainer.unwrapped_prior(image_embed=image_embed.to(device), **cond)
    params = sum(p.numel() for p in trainer.unwrapped_prior.parameters())
    shapes = {k: tuple(v.shape) for k, v in cond.items()}
    print(f"dry run: prior with {params:,} parameters; splits {data.sizes()}; batch image_embed "
          f"{tuple(image_embed.shape)}, {shapes}; loss {float(loss):.4f}", flush=True)
    return 0


class _PriorLoop(ScriptLoop):
    """The training loop and its periodic evaluation / saving."""

    logger = logger

    def __init__(
        self,
        config: TrainDiffusionPriorConfig,
        options: RunOptions,
        trainer: DiffusionPriorTrainer,
        tracker: Any,
        data: PriorData,
        conditioner: PriorConditioner,
        metrics: MetricsLog,
        state: RunState,
    ) -> None:
        self.config, self.options, self.trainer, self.tracker = config, options, trainer, tracker
        self.data, self.conditioner, self.metrics_log, self.state = data, conditioner, metrics, state
        self.accelerator = trainer.accelerator
        self.device = self.accelerator.device
        self.eval_seed = config.train.random_seed + _EVAL_SEED_OFFSET
        self.config_dump = config.model_dump(mode="json")
        self.start_time = time.time()
        self._last_eval: tuple[int, bool] | None = None  # (step, was best) of the latest evaluation
        self.compile_logged = False

    # ------------------------------------------------------------------ bookkeeping
    @property
    def step(self) -> int:
        return self.trainer.num_steps_taken()

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        t, o = self.config.train, self.options
        eval_every = Periodic(o.eval_every_steps, None if o.eval_every_steps else self.config.data.eval_every_seconds)
        save_every = Periodic(o.save_every_steps, None if o.save_every_steps else t.save_every_seconds)
        eval_every.reset(self.step)
        save_every.reset(self.step)
        dataset = self.data.train_dataset
        if self.state.epoch_offset:
            dataset.set_start(dataset.range_start + self.state.epoch_offset)
        with GracefulStop() as stop, ThreadsOnSignal():
            while self.state.epoch < t.epochs:
                if o.max_steps is not None and self.step >= o.max_steps:
                    break
                batches = iterate_batches(self.data.train)
                while True:
                    batch = next(batches, None)
                    if not all_ranks_agree(self.accelerator, batch is not None):
                        break
                    self.train_step(batch)
                    self.state.epoch_offset = dataset.get_start() - dataset.range_start
                    eval_due, save_due, interrupted = any_rank(
                        self.accelerator, eval_every.due(self.step), save_every.due(self.step), stop.requested
                    )
                    if eval_due:
                        self.evaluate()
                        eval_every.reset(self.step)
                    halt = o.max_steps is not None and self.step >= o.max_steps
                    if (save_due and not halt) or interrupted:  # at --max-steps, finish() saves (once)
                        self.save()
                        save_every.reset(self.step)
                    if interrupted:
                        logger.warning("stopped by a signal at step %d after saving a checkpoint", self.step)
                        return 1
                    if halt:
                        break
                if o.max_steps is not None and self.step >= o.max_steps and self.state.epoch_offset:
                    break  # stopped inside the epoch: resume continues it
                self.state.epoch += 1
                self.state.epoch_offset = 0
        self.finish()
        return 0

    def train_step(self, batch: Any) -> None:
        image_embed, text = batch
        cond = self.conditioner(text)
        loss = self.trainer(image_embed=image_embed, **cond)
        skips_before = self.trainer.num_nonfinite_skips
        self.trainer.update()
        b = image_embed.shape[0]
        self.state.samples_seen += int(reduce_sum(self.accelerator, b))
        mean = reduce_mean(self.accelerator, {"loss": loss}, {"loss": b})["loss"]
        values: dict[str, Any] = {
            "train/loss": mean,
            "train/lr": self.trainer.optimizer.param_groups[0]["lr"],
            "train/nonfinite_skips": self.trainer.num_nonfinite_skips,
            "data/skipped_samples": self.data.skipped.samples,
        }
        if self.trainer.num_nonfinite_skips > skips_before:
            values["train/skipped_step"] = True
            logger.warning("step skipped: non-finite loss %s (the weights were not updated)", loss)
        if self.trainer.use_ema:
            values["train/ema_decay"] = float(self.trainer.ema_diffusion_prior.get_current_decay())
        if self.trainer.compile_seconds is not None and not self.compile_logged:
            values["train/compile_seconds"] = self.trainer.compile_seconds
            self.compile_logged = True
        self.log(values, console=self.step % self.options.log_every == 0)

    # ------------------------------------------------------------------ evaluation
    def _split_loss(self, loader: Any, model: torch.nn.Module) -> float:
        loss, count = validation_loss(model, loader, self.conditioner, self.eval_seed, self.device)
        return reduce_mean(self.accelerator, {"l": loss}, {"l": count})["l"]

    def evaluate(self) -> bool:
        """Validation losses (online and EMA), the cosine report, and a "best" checkpoint when the
        (EMA) validation loss improved. Returns whether it did."""
        trainer = self.trainer
        values: dict[str, Any] = {"val/loss": self._split_loss(self.data.val, trainer.unwrapped_prior)}
        if trainer.use_ema:
            values["val/loss_ema"] = self._split_loss(self.data.val, trainer.ema_diffusion_prior.ema_model)
        batch = first_batch(self.data.val)
        if batch is not None:
            report = cosine_report(trainer.p_sample_loop, batch, self.conditioner, self.config.train.eval_timesteps,
                                   self.eval_seed, self.device, phase="val")
            values.update(reduce_mean(self.accelerator, report))
        score = values.get("val/loss_ema", values["val/loss"])
        is_best = math.isfinite(score) and score < self.state.best_val_loss
        if is_best:
            self.state.best_val_loss = score
        values["val/best_loss"] = self.state.best_val_loss
        self.log(values)
        if is_best:
            self.save(is_best=True, is_latest=False)
        self._last_eval = (self.step, is_best)
        return is_best

    def finish(self) -> None:
        """Final evaluation (unless one just ran), test loss, final checkpoint and the exports."""
        if self._last_eval is None or self._last_eval[0] != self.step:
            self.evaluate()
        trainer = self.trainer
        model = trainer.ema_diffusion_prior.ema_model if trainer.use_ema else trainer.unwrapped_prior
        self.log({"test/loss" + ("_ema" if trainer.use_ema else ""): self._split_loss(self.data.test, model)})
        self.save()
        self.export(Path(self.config.tracker.data_path))
