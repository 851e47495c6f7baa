"""`train_decoder.py`: trains the unets of a `Decoder` on webdataset shards.

Per epoch: **train** (every batch, every trained unet: forward + update; a checkpoint and a
train sample grid every `train.save_every_n_samples` samples; at most `train.epoch_samples`
samples) → **val** (per-unet loss of the online and EMA unets over `train.validation_samples`,
deterministic) → **eval** (torchmetrics FID/IS/KID/LPIPS, CLIP score on `evaluate.n_evaluation_samples`
generated validation images, see :mod:`.image_metrics`) → **sample** (validation grid) → a
"best" checkpoint if the mean validation loss improved, and the latest checkpoint.
At the end: test loss, final checkpoint, export (`export/` + `model.pth`).

Fixes relative to the reference script (reference-inventory §3.7): `train.cond_scale` reaches
sampling; text encodings always come from CLIP (never pooled embeddings, issue #241); evaluation
samples are generated in chunks of `data.batch_size` with a fixed generator (comparable between
evaluations, no single giant batch); validation is deterministic; resume continues inside the
epoch (the consumed batches are skipped) with step counters, epoch and samples seen restored.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dalle2_pytorch.config import TrainDecoderConfig
from dalle2_pytorch.data import create_decoder_dataloaders
from dalle2_pytorch.training import DecoderTrainer
from dalle2_pytorch.training.scripts.cli import ConfigError, RunOptions, build_parser, load_config, parse_args, run_cli
from dalle2_pytorch.training.scripts.clip_loading import build_clip
from dalle2_pytorch.training.scripts.decoder_data import (
    DecoderConditioner,
    iterate_limited,
    side_by_side,
    take_samples,
    unet_validation_losses,
)
from dalle2_pytorch.training.scripts.image_metrics import ImageMetrics, build_image_metrics
from dalle2_pytorch.training.scripts.runtime import (
    GracefulStop,
    MetricsLog,
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
    save_grid,
    seed_everything,
    setup_logging,
)
from dalle2_pytorch.training.scripts.run_folder import prepare_run_folder_on_all_ranks

__all__ = ["build_trainer", "check_config", "cli", "main", "train_decoder"]

logger = logging.getLogger("dalle2_pytorch.scripts.decoder")

_EVAL_SEED_OFFSET = 10_007


def main(argv: Sequence[str] | None = None) -> int:
    """`train_decoder.py` entry point. Returns the exit status: 0 finished or reached --max-steps,
    1 stopped by SIGTERM / SIGUSR1 after saving a checkpoint.

    Raises:
        ConfigError: invalid config (every bad key is named).
        RunFolderError: the run folder cannot be continued / started as asked.
        CheckpointWriteError: a checkpoint or export could not be written (rolled back).
    """
    parser = build_parser("train_decoder.py", "Train a DALL-E 2 decoder on webdataset image shards.")
    args = parse_args(parser, argv)
    config = load_config(TrainDecoderConfig, args.config_file, args.override)
    if args.check_config:
        print(check_config(config, args.config_file), flush=True)
        return 0
    return train_decoder(config, RunOptions.from_args(args))


def cli(argv: Sequence[str] | None = None) -> int:
    """Console entry point: like `main`, but every error is one line on stderr and an exit status
    (see :mod:`dalle2_pytorch.command_line`)."""
    return run_cli(main, argv, prog="train_decoder.py")


def check_config(config: TrainDecoderConfig, source: str = "config") -> str:
    """`--check-config`: builds each Unet on the meta device (no memory, no weights) and returns a
    one-line summary (the Decoder itself computes its noise schedules eagerly, so it is not built)."""
    _single_grad_norm(config.train.max_grad_norm)
    try:
        with torch.device("meta"):
            unets = [unet.create() for unet in config.decoder.unets]
    except (ValueError, TypeError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"{source}: a Unet cannot be built from this config: {e}") from e
    params = [sum(p.numel() for p in unet.parameters()) for unet in unets]
    sizes = config.decoder.output_image_sizes
    return (f"config OK: {source}: decoder with {len(unets)} unet(s) of {', '.join(f'{n:,}' for n in params)} "
            f"parameters, image sizes {list(sizes) if sizes else 'from CLIP'}; batch size {config.data.batch_size}, "
            f"{config.train.epochs} epoch(s); run folder {config.tracker.data_path}")


def _single_grad_norm(value: Any) -> float | None:
    if isinstance(value, tuple):
        if len(set(value)) > 1:
            raise ConfigError(
                f"train.max_grad_norm: different values per unet {list(value)} are not supported; give one value"
            )
        return value[0]
    return value


def build_trainer(config: TrainDecoderConfig, accelerator: Any) -> DecoderTrainer:
    """The `DecoderTrainer` of a config (decoder built without CLIP; its config attached)."""
    t = config.train
    decoder = config.decoder.create(build_clip=False)
    decoder.config = config.decoder.model_dump(mode="json")  # exported with the weights
    if t.channels_last:  # before the trainer copies the unets into their EMAs
        for unet, trained in zip(decoder.unets, t.unet_training_mask or [True] * len(decoder.unets)):
            if trained:
                unet.to(memory_format=torch.channels_last)
    return DecoderTrainer(
        decoder, accelerator=accelerator, use_ema=t.use_ema, lr=t.lr, wd=t.wd, warmup_steps=t.warmup_steps,
        cosine_decay_max_steps=t.cosine_decay_max_steps, max_grad_norm=_single_grad_norm(t.max_grad_norm),
        amp=t.amp, unet_training_mask=t.unet_training_mask, ema_beta=t.ema_beta,
        ema_update_after_step=t.ema_update_after_step, ema_update_every=t.ema_update_every,
        compile=t.compile, channels_last=t.channels_last, gradient_checkpointing=t.gradient_checkpointing,
    )


def train_decoder(config: TrainDecoderConfig, options: RunOptions | None = None) -> int:
    """Runs (or, with `options.dry_run`, checks) a decoder training run. Returns the exit status."""
    options = options or RunOptions()
    t = config.train
    accelerator = build_accelerator(cpu=options.cpu, amp=t.amp, find_unused_parameters=t.find_unused_parameters,
                                    static_graph=t.static_graph)
    setup_logging(accelerator.is_main_process)
    device = accelerator.device
    seed_everything(config.seed)  # same initial weights on every rank
    clip = build_clip(config.decoder.clip, device)
    trainer = build_trainer(config, accelerator)
    conditioner = DecoderConditioner(trainer.unwrapped_decoder, clip, device, _trained_numbers(trainer))
    try:
        loaders = create_decoder_dataloaders(
            config.data, rank=accelerator.process_index, world_size=accelerator.num_processes, seed=config.seed,
            extra_keys=_extra_keys(config, conditioner), sampling_batch_size=t.n_sample_images,
        )
    except ValueError as e:  # no shard found, bad split, embedding files that match no shard
        raise ConfigError(f"data: {e}") from e
    if "train" not in loaders:
        raise ConfigError("the training split has no shard (check data.start_shard / end_shard and data.splits)")
    seed_everything(config.seed + accelerator.process_index)  # different noise / crops per rank

    if options.dry_run:
        return _dry_run(trainer, loaders, conditioner)

    resume_from = prepare_run_folder_on_all_ranks(accelerator, config.tracker.data_path, resume=options.resume,
                                                  start_over=options.start_over)
    decoder = trainer.unwrapped_decoder
    trained = [unet for unet, on in zip(decoder.unets, trainer.trained_unets) if on]
    log_run_start(accelerator, "decoder", decoder, trained, config.tracker.data_path, resume_from, clip=clip)
    metrics = build_image_metrics(config.evaluate, device, clip=clip)
    tracker = build_tracker(config.tracker, accelerator)
    meta = tracker.recall(trainer, checkpoint=resume_from)
    state = RunState.from_metadata(meta) if meta is not None else RunState()
    if meta is not None:
        logger.info("resumed from %s at steps %s (epoch %d, %d samples seen)", meta.get("path"),
                    trainer.steps.tolist(), state.epoch, state.samples_seen)
    resumed_checkpoint = meta is not None and meta.get("epoch_offset") is not None
    loop = _DecoderLoop(config, options, trainer, tracker, loaders, conditioner, metrics, state)
    loop.metrics_log = MetricsLog(Path(config.tracker.data_path) / "metrics.jsonl", accelerator.is_main_process,
                                  keep_until_step=loop.step if resumed_checkpoint else None)
    tracker.save_config(config)
    tracker.init(config, {"num_processes": accelerator.num_processes, "device": str(device)})
    for name, reason in metrics.skipped.items():
        loop.log({"event": "metric_skipped", "metric": name, "reason": reason}, console=False)
        tracker.log_error(f"evaluation metric {name} skipped: {reason}")
    try:
        return loop.run()
    finally:
        tracker.finish()


def _extra_keys(config: TrainDecoderConfig, conditioner: DecoderConditioner) -> tuple[str, ...]:
    """The conditioner's fields, plus the captions when the CLIP score is evaluated."""
    keys = tuple(conditioner.extra_keys)
    return keys if config.evaluate.CLIP_SCORE is None or "txt" in keys else (*keys, "txt")


def _dry_run(trainer: DecoderTrainer, loaders: dict, conditioner: DecoderConditioner) -> int:
    batch = take_samples(loaders["train"], loaders["train"].batch_size)
    if batch is None:
        raise ConfigError("the training split yielded no sample (all skipped? see the warnings)")
    images, emb, captions = batch
    cond = conditioner(images, emb, captions)
    decoder = trainer.unwrapped_decoder
    losses = {}
    with torch.no_grad():
        for u in _trained_numbers(trainer):
            losses[u] = float(decoder(images.to(trainer.device), unet_number=u, **cond))
    params = sum(p.numel() for p in decoder.parameters())
    shapes = {k: tuple(v.shape) for k, v in cond.items()}
    print(f"dry run: decoder with {params:,} parameters, image sizes {list(decoder.image_sizes)}; splits "
          f"{sorted(loaders)}; batch images {tuple(images.shape)}, {shapes}; losses per unet {losses}", flush=True)
    return 0


def _trained_numbers(trainer: DecoderTrainer) -> list[int]:
    return [i + 1 for i, trained in enumerate(trainer.trained_unets) if trained]


class _DecoderLoop(ScriptLoop):
    """The per-epoch state machine train → val → eval → sample, with saving and resuming."""

    logger = logger

    def __init__(
        self,
        config: TrainDecoderConfig,
        options: RunOptions,
        trainer: DecoderTrainer,
        tracker: Any,
        loaders: dict[str, Any],
        conditioner: DecoderConditioner,
        metrics: ImageMetrics,
        state: RunState,
    ) -> None:
        self.config, self.options, self.trainer, self.tracker = config, options, trainer, tracker
        self.loaders, self.conditioner, self.image_metrics, self.state = loaders, conditioner, metrics, state
        self.accelerator = trainer.accelerator
        self.device = self.accelerator.device
        self.unet_numbers = _trained_numbers(trainer)
        self.eval_seed = config.seed + _EVAL_SEED_OFFSET
        self.config_dump = config.model_dump(mode="json")
        self.data_path = Path(config.tracker.data_path)
        self.start_time = time.time()
        self.metrics_log: MetricsLog | None = None
        self.skipped = loaders["train"].skipped
        self.stop = GracefulStop()
        self.compile_logged = False

    # ------------------------------------------------------------------ bookkeeping
    @property
    def step(self) -> int:
        return max(self.trainer.num_steps_taken(u) for u in self.unet_numbers)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        t = self.config.train
        if t.save_immediately and self.step == 0:
            self.save()
        with self.stop, ThreadsOnSignal():
            while self.state.epoch < t.epochs:
                if self.state.next_task == "train":
                    outcome = self.train_epoch()
                    if outcome == "interrupted":
                        return 1
                    if outcome == "halted":
                        break
                    self.state.next_task = "val"
                self.end_of_epoch()
                self.state.epoch += 1
                self.state.epoch_offset = 0
                self.state.next_task = "train"
                self.save()
                if self.options.max_steps is not None and self.step >= self.options.max_steps:
                    break
        self.finish()
        return 0

    def train_epoch(self) -> str:
        """Trains one epoch (or its remainder). Returns "done", "halted" (--max-steps) or "interrupted"."""
        t, o = self.config.train, self.options
        loader = self.loaders["train"]
        loader.set_epoch(self.state.epoch)
        batches = iter(loader)
        if self.state.epoch_offset:
            logger.info("resuming inside epoch %d: skipping %d consumed batches",
                        self.state.epoch, self.state.epoch_offset)
            with torch.random.fork_rng(devices=[]):  # re-reading them must not move the restored RNG
                for _ in range(self.state.epoch_offset):
                    next(batches, None)
        per_batch = loader.batch_size * self.accelerator.num_processes
        save_every = t.save_every_n_samples
        fresh_epoch = self.state.epoch_offset == 0
        while True:
            if o.max_steps is not None and self.step >= o.max_steps:
                self.save()
                return "halted"
            if t.epoch_samples is not None and self.state.epoch_offset * per_batch >= t.epoch_samples:
                return "done"
            batch = next(batches, None)
            if not all_ranks_agree(self.accelerator, batch is not None):
                if fresh_epoch and self.state.epoch_offset == 0:
                    raise RuntimeError(
                        f"epoch {self.state.epoch} produced no training batch on some process; skipped so far: "
                        f"{self.skipped.shards} shard(s), {self.skipped.samples} sample(s) (see the warnings; "
                        "check data.webdataset_base_url and the shards)"
                    )
                return "done"
            before = self.state.samples_seen
            self.train_step(batch)
            self.state.epoch_offset += 1
            interrupted = any_rank(self.accelerator, self.stop.requested)
            if before // save_every != self.state.samples_seen // save_every or interrupted:
                self.save()
                if not interrupted:
                    self.sample_grid("train_samples", self.loaders.get("train_sampling", loader))
            if interrupted:
                logger.warning("stopped by a signal at step %d after saving a checkpoint", self.step)
                return "interrupted"

    def train_step(self, batch: Any) -> None:
        images, emb, *extras = batch
        captions = list(extras[0]) if extras else None
        cond = self.conditioner(images, emb if isinstance(emb, dict) else {}, captions)
        skips_before = self.trainer.num_nonfinite_skips
        values: dict[str, Any] = {}
        for u in self.unet_numbers:
            loss = self.trainer(images, unet_number=u, **cond)
            self.trainer.update(u)
            values[f"train/loss_unet{u}"] = reduce_mean(self.accelerator, {"l": loss}, {"l": images.shape[0]})["l"]
            values[f"train/lr_unet{u}"] = self.trainer.optimizers[u - 1].param_groups[0]["lr"]
            if self.trainer.use_ema:
                values[f"train/ema_decay_unet{u}"] = float(self.trainer.ema_unets[u - 1].get_current_decay())
        self.state.samples_seen += int(reduce_sum(self.accelerator, images.shape[0]))
        losses = [values[f"train/loss_unet{u}"] for u in self.unet_numbers]
        values["train/loss"] = float(np.mean(losses)) if all(math.isfinite(v) for v in losses) else float("nan")
        values["train/nonfinite_skips"] = self.trainer.num_nonfinite_skips
        values["data/skipped_samples"] = self.skipped.samples
        values["data/skipped_shards"] = self.skipped.shards
        if self.trainer.num_nonfinite_skips > skips_before:
            values["train/skipped_step"] = True
        if self.trainer.compile_seconds is not None and not self.compile_logged:
            values["train/compile_seconds"] = self.trainer.compile_seconds
            self.compile_logged = True
        self.log(values, console=self.step % self.options.log_every == 0)

    # ------------------------------------------------------------------ evaluation
    def end_of_epoch(self) -> None:
        """Validation losses, sample-quality metrics, the validation grid and the best checkpoint."""
        values = self.validate("val", self.loaders.get("val"))
        values.update(self.evaluate_metrics())
        score = values.get("val/loss_ema", values.get("val/loss", float("nan")))
        is_best = math.isfinite(score) and score < self.state.best_val_loss
        if is_best:
            self.state.best_val_loss = score
        values["val/best_loss"] = self.state.best_val_loss
        values["data/skipped_samples"] = self.skipped.samples
        values["data/skipped_shards"] = self.skipped.shards
        self.log(values)
        if "val" in self.loaders:
            self.sample_grid("val_samples", self.loaders["val"])
        if is_best:
            self.save(is_best=True, is_latest=False)

    def validate(self, split: str, loader: Any) -> dict[str, float]:
        """`{split}/loss_unet{u}` (online) and `{split}/loss_ema_unet{u}`, plus their means."""
        if loader is None:
            return {}
        values: dict[str, float] = {}
        variants = [("", True)] + ([("_ema", False)] if self.trainer.use_ema else [])
        limit = self.config.train.validation_samples  # all processes together
        if limit is not None:
            limit = math.ceil(limit / self.accelerator.num_processes)
        for suffix, use_non_ema in variants:
            swapped = self.trainer.ema_unets_swapped_in(use_non_ema=use_non_ema)
            with torch.random.fork_rng(devices=[]), swapped as decoder:
                torch.manual_seed(self.eval_seed)  # same crops every evaluation; training RNG untouched
                losses, count = unet_validation_losses(decoder, loader, self.conditioner, self.unet_numbers, limit,
                                                       self.eval_seed, self.device)
            reduced = reduce_mean(self.accelerator, {str(u): v for u, v in losses.items()},
                                  {str(u): count for u in losses})
            for u in self.unet_numbers:
                values[f"{split}/loss{suffix}_unet{u}"] = reduced[str(u)]
            values[f"{split}/loss{suffix}"] = float(np.mean([reduced[str(u)] for u in self.unet_numbers]))
        return values

    def _sample(self, cond: dict[str, torch.Tensor], generator: torch.Generator, images: torch.Tensor) -> torch.Tensor:
        """Samples the cascade; a run that trains only later unets starts at its first one, from the
        real images at the previous unet's size (the base needs image embeddings it may not have)."""
        first = min(self.unet_numbers)
        extra: dict[str, Any] = {}
        if first > 1 and "image_embed" not in cond:
            size = self.trainer.unwrapped_decoder.image_sizes[first - 2]
            low = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            extra = dict(image=low.clamp(0, 1).to(self.device), start_at_unet_number=first)
        return self.trainer.sample(**cond, **extra, cond_scale=self.config.train.cond_scale, generator=generator,
                                   max_batch_size=self.config.data.batch_size)

    def evaluate_metrics(self) -> dict[str, float]:
        """FID / IS / KID / LPIPS / CLIP score of generated validation images (configured metrics only)."""
        loader = self.loaders.get("val")
        if not self.image_metrics or loader is None:
            return {}
        n = math.ceil(self.config.evaluate.n_evaluation_samples / self.accelerator.num_processes)
        self.image_metrics.reset()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.eval_seed)
            generator = torch.Generator(device=self.device).manual_seed(self.eval_seed)
            for images, emb, captions in iterate_limited(loader, n):
                generated = self._sample(self.conditioner(images, emb, captions), generator, images)
                self.image_metrics.update(generated, images.to(self.device), captions)
        values, errors = self.image_metrics.compute()
        for name, error in errors.items():
            self.tracker.log_error(f"evaluation metric {name} failed: {error}")
            self.log({"event": "metric_failed", "metric": name, "reason": error}, console=False)
        return {f"eval/{k}": v for k, v in values.items()}

    def sample_grid(self, section: str, loader: Any) -> None:
        """Real images next to samples generated from their embeddings: a PNG under `samples/`
        and an image for the logger (main process)."""
        n = self.config.train.n_sample_images
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.eval_seed)
            batch = take_samples(loader, n) if self.accelerator.is_main_process else None
            if batch is not None:
                images, emb, captions = batch
                generator = torch.Generator(device=self.device).manual_seed(self.eval_seed)
                generated = self._sample(self.conditioner(images, emb, captions), generator, images)
                pairs = side_by_side(images, generated)
                path = save_grid(pairs, self.data_path / "samples" / f"{section}_{self.step:08d}.png", nrow=2)
                with Image.open(path) as png:
                    grid = torch.from_numpy(np.asarray(png.convert("RGB")).copy()).permute(2, 0, 1)
                labels = [f"real | sample: {c}" for c in captions] if captions else None
                self.tracker.log_images(grid[None].float() / 255, captions=labels, image_section=section,
                                        step=self.step)
        self.accelerator.wait_for_everyone()

    def finish(self) -> None:
        """Test loss, final checkpoint and the exports."""
        values = self.validate("test", self.loaders.get("test"))
        if values:
            self.log(values)
        self.save()
        self.export(self.data_path, config=self.config_dump)
