"""Run-time pieces shared by the training scripts: accelerator, seeding, run folder, metrics file,
resume state, stop signals, cross-rank agreement and periodic triggers.

Run folder (`tracker.data_path`) written by the scripts (main process only)::

    config.json            the validated config of the run (overrides applied)
    metrics.jsonl          one JSON object per line: {"step", "epoch", "samples_seen", "time", ...}
    checkpoints/step_N/    crash-safe trainer checkpoints (newest two kept)
    best.ckpt/             checkpoint with the best validation loss
    samples/*.png          sample grids (decoder) — also sent to the logger
    export/                released weights: model.safetensors + config.json (+ manifest.json)
    model.pth              the same weights in the reference's tracker "model" layout
    wandb/                 wandb files when tracker.log.log_type is "wandb"
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch import nn

from dalle2_pytorch.training.base import resolve_mixed_precision
from dalle2_pytorch.training.trackers import Tracker, create_logger, make_image_grid

__all__ = [
    "GracefulStop",
    "MetricsLog",
    "Periodic",
    "RunState",
    "ScriptLoop",
    "ThreadsOnSignal",
    "all_ranks_agree",
    "any_rank",
    "build_accelerator",
    "build_tracker",
    "log_run_start",
    "no_cond_dropout",
    "reduce_mean",
    "reduce_sum",
    "save_grid",
    "seed_everything",
    "setup_logging",
]

logger = logging.getLogger("dalle2_pytorch.scripts")

_DROP_ATTRS = ("text_cond_drop_prob", "image_cond_drop_prob", "cond_drop_prob")


def build_accelerator(
    *,
    cpu: bool = False,
    amp: bool | str | None = False,
    find_unused_parameters: bool = True,
    static_graph: bool = False,
) -> Accelerator:
    """An `Accelerator` with the run's mixed precision and DDP settings (`amp="auto"` leaves an
    unresolved choice to the launcher's config, see `resolve_mixed_precision`)."""
    mixed = resolve_mixed_precision(amp, cpu=cpu)
    if mixed is None and amp != "auto":
        mixed = "no"
    handler = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters, static_graph=static_graph)
    return Accelerator(cpu=cpu, mixed_precision=mixed, kwargs_handlers=[handler])


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices) with `seed`."""
    set_seed(int(seed))


def reduce_mean(
    accelerator: Accelerator, values: Mapping[str, float], counts: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Across processes: `sum(value * count) / sum(count)` per key (plain mean without counts).

    Non-finite local values are ignored (count 0); a key with no finite value anywhere gives NaN.
    """
    keys = sorted(values)
    if not keys:
        return {}
    device = accelerator.device
    num, den = [], []
    for k in keys:
        v = float(values[k])
        c = float(counts[k]) if counts is not None else 1.0
        ok = math.isfinite(v) and c > 0
        num.append(v * c if ok else 0.0)
        den.append(c if ok else 0.0)
    t = torch.tensor([num, den], dtype=torch.float64, device=device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return {k: (t[0, i] / t[1, i]).item() if t[1, i] > 0 else float("nan") for i, k in enumerate(keys)}


def reduce_sum(accelerator: Accelerator, value: float) -> float:
    """Sum of `value` over all processes."""
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item())


def setup_logging(is_main_process: bool) -> None:
    """INFO-level console logging for the package on the main process (WARNING elsewhere), unless
    the application configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("dalle2_pytorch").setLevel(logging.INFO if is_main_process else logging.WARNING)


def all_ranks_agree(accelerator: Accelerator, flag: bool) -> bool:
    """True only when `flag` is True on every process (one tiny all-reduce when distributed)."""
    if accelerator.num_processes == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() == accelerator.num_processes)


def any_rank(accelerator: Accelerator, *flags: bool) -> bool | tuple[bool, ...]:
    """For each flag: True when it is True on at least one process (one all-reduce for all).

    Decisions that lead into collectives (evaluate, save, stop) must be taken together: a
    wall-clock trigger can fire on one rank and not yet on another.
    """
    if accelerator.num_processes == 1:
        out = tuple(bool(f) for f in flags)
    else:
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=accelerator.device)
        out = tuple(bool(v > 0) for v in accelerator.reduce(t, reduction="sum").tolist())
    return out[0] if len(out) == 1 else out


@contextlib.contextmanager
def no_cond_dropout(*models: nn.Module) -> Iterator[None]:
    """Evaluation context: eval mode and classifier-free-guidance dropout probabilities set to 0.

    Validation losses are then deterministic given the generator (the reference kept the
    conditioning dropout on in validation, so its validation loss was noisy).
    """
    saved: list[tuple[nn.Module, str, Any]] = []
    modes = [(m, m.training) for m in models]
    try:
        for m in models:
            m.eval()
            for attr in _DROP_ATTRS:
                if isinstance(getattr(m, attr, None), (int, float)):
                    saved.append((m, attr, getattr(m, attr)))
                    setattr(m, attr, 0.0)
        yield
    finally:
        for m, attr, value in reversed(saved):
            setattr(m, attr, value)
        for m, mode in modes:
            m.train(mode)


@dataclass
class RunState:
    """Loop position saved with every checkpoint (as JSON metadata) and restored on resume.

    Attributes:
        epoch: current epoch (0-based).
        epoch_offset: progress inside the epoch: rows of this rank's slice (prior) or batches
            (decoder) already consumed.
        samples_seen: training samples seen, all processes together.
        best_val_loss: best validation loss so far (inf: none yet).
        next_task: decoder per-epoch phase to run next ("train" or "val").
    """

    epoch: int = 0
    epoch_offset: int = 0
    samples_seen: int = 0
    best_val_loss: float = math.inf
    next_task: str = "train"

    def metadata(self) -> dict[str, Any]:
        out = asdict(self)
        out["best_val_loss"] = None if not math.isfinite(self.best_val_loss) else self.best_val_loss
        return out

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> RunState:
        best = meta.get("best_val_loss")
        return cls(
            epoch=int(meta.get("epoch") or 0),
            epoch_offset=int(meta.get("epoch_offset") or 0),
            samples_seen=int(meta.get("samples_seen") or 0),
            best_val_loss=math.inf if best is None else float(best),
            next_task=str(meta.get("next_task") or "train"),
        )


class MetricsLog:
    """`metrics.jsonl` of the run folder (main process only; a no-op elsewhere).

    Args:
        path: the file.
        enabled: write (main process).
        keep_until_step: on resume, records with a larger `step` (written after the checkpoint the
            run resumes from) are dropped; None starts the file afresh.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool, keep_until_step: int | None = None) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            return
        kept: list[str] = []
        if keep_until_step is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if int(record.get("step", 0)) <= keep_until_step:
                    kept.append(line)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: _json_value(v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean, sort_keys=True) + "\n")


class ScriptLoop:
    """Bookkeeping shared by the training scripts' loops: metrics records, checkpoints, the exports.

    Subclasses set ``trainer``, ``tracker``, ``state`` (a :class:`RunState`), ``accelerator``,
    ``config_dump``, ``start_time``, ``metrics_log`` (None: not written yet) and ``logger``, and
    define the ``step`` property.
    """

    metrics_log: MetricsLog | None = None
    logger: logging.Logger = logger

    def log(self, values: dict[str, Any], console: bool = True) -> None:
        """Writes one ``metrics.jsonl`` record (step, epoch, samples seen, seconds, ``values``)."""
        record = {"step": self.step, "epoch": self.state.epoch, "samples_seen": self.state.samples_seen,
                  "time": round(time.time() - self.start_time, 3), **values}
        if self.metrics_log is not None:
            self.metrics_log.write(record)
        if console:
            self.tracker.log(record, step=self.step)

    def save(self, is_best: bool = False, is_latest: bool = True) -> None:
        """Checkpoints the run; a latest checkpoint identical to the one just written (same step,
        same loop state, e.g. `--max-steps` followed by the final save) is not written again."""
        key = (self.step, json.dumps(self.state.metadata(), sort_keys=True))
        if is_latest and not is_best and key == getattr(self, "_last_saved", None):
            return
        self.tracker.save(self.trainer, is_best=is_best, is_latest=is_latest, **self.state.metadata(),
                          config=self.config_dump)
        if is_latest:
            self._last_saved = key

    def export(self, data_path: Path, **reference_kwargs: Any) -> None:
        """``export/`` (safetensors + JSON) and ``model.pth`` (the reference's layout); logs both."""
        exported = self.trainer.export_model(data_path / "export")
        reference = self.trainer.export_reference_model(data_path / "model.pth", **reference_kwargs)
        if self.accelerator.is_main_process:
            self.logger.info("finished at step %d: exported %s and %s", self.step, exported, reference)
        self.log({"event": "finished", "export": str(exported), "reference_model": str(reference)}, console=False)


def _json_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN / inf
    return value


@dataclass
class Periodic:
    """Fires every `every_steps` steps or every `every_seconds` seconds (steps take precedence)."""

    every_steps: int | None = None
    every_seconds: float | None = None
    _last_step: int = 0
    _last_time: float = field(default_factory=time.monotonic)

    def due(self, step: int) -> bool:
        if self.every_steps is not None:
            return step - self._last_step >= self.every_steps
        if self.every_seconds is not None:
            return time.monotonic() - self._last_time >= self.every_seconds
        return False

    def reset(self, step: int) -> None:
        self._last_step = step
        self._last_time = time.monotonic()


class GracefulStop:
    """Turns SIGTERM / SIGUSR1 (schedulers' pre-emption notices) into a flag the loop checks, so a
    checkpoint can be written before exiting. Handlers are installed only in the main thread and
    restored on exit."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        logger.warning("received signal %d: stopping after the current step (a checkpoint will be saved)", signum)
        self.requested = True

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class ThreadsOnSignal:
    """SIGUSR2 -> this process uses every CPU it may run on (``torch.set_num_threads``), or the count
    in ``$DALLE2_THREADS_ON_SIGNAL``, from the next operation on. A scheduler that started this run
    beside others (the demo: one CPU thread per run) sends it when the others have finished, so the
    last run does not leave CPUs idle.

    A parent that may signal early starts the child with SIGUSR2 blocked: the signal then waits until
    the handler is installed here, which unblocks it. After the loop the signal is ignored rather
    than left to its default action (which would end the process while it saves). A no-op where the
    platform has no SIGUSR2 or outside the main thread."""

    SIGNAL = getattr(signal, "SIGUSR2", None)
    #: set by a scheduler to the thread count it lends (default: every usable CPU)
    ENV = "DALLE2_THREADS_ON_SIGNAL"

    def __init__(self) -> None:
        self._installed = False

    @staticmethod
    def _handle(signum: int, frame: Any) -> None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        wanted = os.environ.get(ThreadsOnSignal.ENV, "")
        if wanted.isdigit() and int(wanted) >= 1:
            cpus = int(wanted)
        if cpus != torch.get_num_threads():
            logger.info("received signal %d: %d CPU threads from now on (was %d)", signum, cpus, torch.get_num_threads())
            torch.set_num_threads(cpus)

    def __enter__(self) -> ThreadsOnSignal:
        if self.SIGNAL is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.SIGNAL, self._handle)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [self.SIGNAL])
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(self.SIGNAL, signal.SIG_IGN)
            self._installed = False


def build_tracker(tracker_config: Any, accelerator: Accelerator, resume: bool = False) -> Tracker:
    """The run's `Tracker`: logger from `tracker.log` (console grids are not written twice: the
    scripts save PNGs under `samples/` themselves). The scripts decide what to resume from
    themselves (:mod:`.run_folder`) and pass it to `Tracker.recall`, so `resume` (the tracker's
    own search for the newest checkpoint) is off by default."""
    log = tracker_config.log
    common = dict(resume=log.resume, auto_resume=log.auto_resume, verbose=log.verbose, accelerator=accelerator)
    if log.log_type == "wandb":
        run_logger = create_logger(
            "wandb", tracker_config.data_path, wandb_project=log.wandb_project, wandb_entity=log.wandb_entity,
            wandb_run_id=log.wandb_run_id, wandb_run_name=log.wandb_run_name, **common,
        )
    else:
        run_logger = create_logger("console", tracker_config.data_path, save_images=False, **common)
    tracker = Tracker(
        tracker_config.data_path,
        logger=run_logger,
        accelerator=accelerator,
        save_configs=tracker_config.save_configs,
        load_config=tracker_config.load,
        auto_resume=resume,
        overwrite_data_path=tracker_config.overwrite_data_path,
    )
    if accelerator.is_main_process:
        tracker.checkpoint_root.mkdir(parents=True, exist_ok=True)  # marks the folder as a run folder
    accelerator.wait_for_everyone()
    return tracker


def log_run_start(
    accelerator: Accelerator,
    what: str,
    model: nn.Module,
    trained: list[nn.Module],
    data_path: str | os.PathLike,
    resume_from: str | os.PathLike | None,
    clip: nn.Module | None = None,
) -> str:
    """Logs (main process) and returns one line: run folder, device, precision, world size and the
    parameter counts (trainable = parameters of the trained modules that require grad)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for m in trained for p in m.parameters() if p.requires_grad)
    precision = accelerator.mixed_precision if accelerator.mixed_precision != "no" else "fp32"
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        precision += " (runs as fp32 on CPU)"
    clip_note = f"; CLIP {sum(p.numel() for p in clip.parameters()):,} (frozen)" if clip is not None else ""
    start = f"continuing from {resume_from}" if resume_from is not None else "starting at step 0"
    line = (f"run folder {Path(data_path).resolve()} ({start}); device {accelerator.device}, precision {precision}, "
            f"world size {accelerator.num_processes}; {what} parameters: {trainable:,} trainable / {total:,} total"
            f"{clip_note}")
    if accelerator.is_main_process:
        logger.info(line)
    return line


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int) -> Path:
    """Writes a PNG grid of (b, c, h, w) images in [0, 1] (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    make_image_grid(images, nrow=nrow).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
