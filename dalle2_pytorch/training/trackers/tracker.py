"""`Tracker`: a logger plus checkpoint saving / recalling for a training run.

`save` always writes a crash-safe trainer checkpoint under `<data_path>/checkpoints/` (keeping the
newest `keep_last`), optionally a "best" checkpoint at `<data_path>/best.ckpt/` and a
reference-layout model `.pth`; then the save targets of a `TrackerConfig` (local paths, wandb run
files, a Hugging Face repository) receive what they asked for. `recall` resumes from the newest
valid local checkpoint (auto-resume) or from the configured load source.

Every process must call `save` (checkpoint RNG states are gathered from all ranks); only the main
process writes files, logs and uploads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dalle2_pytorch.training.checkpoint import find_latest_valid_checkpoint
from dalle2_pytorch.training.trackers.images import is_main_process
from dalle2_pytorch.training.trackers.loggers import BaseLogger, ConsoleLogger, create_logger
from dalle2_pytorch.training.trackers.targets import loader_from_config, saver_from_config

__all__ = ["Tracker"]

_log = logging.getLogger("dalle2_pytorch.tracker")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


class Tracker:
    """Logging and checkpointing for one run.

    Args:
        data_path: run folder (checkpoints, downloads, logger files).
        logger: a :class:`BaseLogger`; default :class:`ConsoleLogger`.
        accelerator: decides the main process (default: accelerate's `PartialState`).
        keep_last: checkpoints kept under `<data_path>/checkpoints/`.
        save_configs: `TrackerSaveConfig`s (or dicts) describing extra save targets.
        load_config: a `TrackerLoadConfig` (or dict) describing what `recall` loads.
        auto_resume: `recall` prefers the newest valid checkpoint under `<data_path>/checkpoints/`.
        overwrite_data_path: allow an existing non-empty `data_path` that has no checkpoints.
    """

    def __init__(
        self,
        data_path: str | os.PathLike = ".tracker_data",
        logger: BaseLogger | None = None,
        accelerator: Any = None,
        keep_last: int = 2,
        save_configs: Sequence[Any] = (),
        load_config: Any = None,
        auto_resume: bool = True,
        overwrite_data_path: bool = False,
    ) -> None:
        self.data_path = Path(data_path)
        self.accelerator = accelerator
        self.is_main_process = is_main_process(accelerator)
        self.logger = logger if logger is not None else ConsoleLogger(self.data_path, accelerator=accelerator)
        self.keep_last = keep_last
        self.save_configs = list(save_configs)
        self.load_config = load_config
        self.auto_resume = auto_resume
        if self.is_main_process:
            if (
                not overwrite_data_path
                and self.data_path.is_dir()
                and any(self.data_path.iterdir())
                and not self.checkpoint_root.exists()
            ):
                raise ValueError(
                    f"tracker data_path {self.data_path} exists and is not empty; pass "
                    "overwrite_data_path=True to reuse it"
                )
            self.data_path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_config(cls, config: Any, accelerator: Any = None) -> Tracker:
        """Builds a tracker from a `TrackerConfig` (or an equivalent dict)."""
        data_path = _get(config, "data_path", ".tracker_data")
        log = _get(config, "log") or {}
        log_type = _get(log, "log_type", "console")
        common = dict(
            resume=_get(log, "resume", False), auto_resume=_get(log, "auto_resume", False),
            verbose=_get(log, "verbose", False), accelerator=accelerator,
        )
        if log_type == "wandb":
            wandb_args = {k: _get(log, k) for k in ("wandb_project", "wandb_entity", "wandb_run_id", "wandb_run_name")}
            logger = create_logger("wandb", data_path, **wandb_args, **common)
        else:
            logger = create_logger(log_type, data_path, **common)
        save = _get(config, "save") or []
        return cls(
            data_path,
            logger=logger,
            accelerator=accelerator,
            save_configs=save if isinstance(save, list) else [save],
            load_config=_get(config, "load"),
            auto_resume=bool(_get(log, "auto_resume", False)),
            overwrite_data_path=bool(_get(config, "overwrite_data_path", False)),
        )

    # ------------------------------------------------------------------ the reference's assembly API
    def add_logger(self, logger: BaseLogger) -> None:
        """Replaces the logger (reference API)."""
        self.logger = logger

    def add_loader(self, loader: Any) -> None:
        """Sets what `recall` loads: a loader (`LocalLoader`, ...) or a load config (reference API)."""
        self.load_config = loader

    def add_saver(self, saver: Any) -> None:
        """Adds a save target: a saver (`LocalSaver`, ...) or a save config (reference API)."""
        self.save_configs.append(saver)

    # ------------------------------------------------------------------ logging

    @property
    def checkpoint_root(self) -> Path:
        return self.data_path / "checkpoints"

    def init(self, full_config: Any = None, extra_config: Mapping[str, Any] | None = None) -> None:
        self.logger.init(full_config, extra_config)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.logger.log(metrics, step=step)

    def log_images(self, images: Any, captions: Sequence[str] | None = None, image_section: str = "images", step: int | None = None) -> None:
        self.logger.log_images(images, captions=captions, image_section=image_section, step=step)

    def log_file(self, file_path: str | os.PathLike) -> None:
        self.logger.log_file(file_path)

    def log_error(self, error_string: str) -> None:
        self.logger.log_error(error_string)

    def save_config(self, config: Any, name: str = "config.json") -> Path | None:
        """Writes the run config as JSON under `data_path` (main process)."""
        if not self.is_main_process:
            return None
        data = config.model_dump() if hasattr(config, "model_dump") else dict(config)
        path = self.data_path / name
        path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
        return path

    # ------------------------------------------------------------------ saving

    def save(
        self,
        trainer: Any,
        *,
        is_best: bool = False,
        is_latest: bool = True,
        reference_model_path: str | os.PathLike | bool | None = None,
        **metadata: Any,
    ) -> dict[str, Path]:
        """Checkpoints `trainer` (call on every process). Returns what was written (main process).

        Args:
            trainer: a `DiffusionPriorTrainer` or `DecoderTrainer`.
            is_best: also write `<data_path>/best.ckpt/`.
            is_latest: write `<data_path>/checkpoints/step_N/` (rotated).
            reference_model_path: also export the EMA model in the reference's "model" `.pth`
                layout (True: `<data_path>/latest_model.pth`).
            metadata: JSON-serialisable values stored with the checkpoint (epoch, samples_seen,
                best_val_loss, config, ...); they also fill `{}` fields of configured paths.
        """
        written: dict[str, Path] = {}

        def record(name: str, path: Path | None) -> None:
            if path is not None:
                written[name] = path

        if is_latest:
            record("latest", trainer.save(self.checkpoint_root, keep_last=self.keep_last, **metadata))
        if is_best:
            record("best", trainer.save(self.data_path / "best.ckpt", **metadata))
        if reference_model_path:
            target = self.data_path / "latest_model.pth" if reference_model_path is True else Path(reference_model_path)
            record("reference_model", trainer.export_reference_model(target))
        for i, cfg in enumerate(self.save_configs):
            for flag, key in ((is_latest, "save_latest_to"), (is_best, "save_best_to")):
                template = _get(cfg, key)
                if flag and template:
                    record(f"target{i}_{key}", self._save_target(trainer, cfg, str(template), metadata))
        return written

    def _save_target(self, trainer: Any, cfg: Any, template: str, metadata: Mapping[str, Any]) -> Path | None:
        try:
            target = Path(template.format(**metadata))
        except (KeyError, IndexError) as e:
            raise ValueError(f"save path {template!r} needs metadata field {e} (pass it to Tracker.save)") from e
        save_to = _get(cfg, "save_to", "local")
        if save_to != "local":  # stage the files locally, then upload them
            target = self.data_path / "staged" / target.name
        if _get(cfg, "save_type", "checkpoint") == "model":
            path = trainer.export_reference_model(target)
        else:
            path = trainer.save(target, **metadata)
        if save_to == "local" or not self.is_main_process or path is None:
            return path
        try:
            self._upload(save_to, cfg, Path(path), template)
        except Exception as e:  # an upload failure must not stop training
            self.log_error(f"uploading {path} to {save_to} failed: {e}")
        return path

    def _upload(self, save_to: str, cfg: Any, path: Path, template: str) -> None:
        saver = saver_from_config(cfg, self.data_path)
        saver.init(self.logger)
        saver.save_file(path, template)

    # ------------------------------------------------------------------ recalling

    def recall(
        self, trainer: Any, only_model: bool = False, strict: bool = True, checkpoint: str | os.PathLike | None = None
    ) -> dict[str, Any] | None:
        """Loads into `trainer`: `checkpoint` when given, else the newest valid local checkpoint
        (auto-resume) or the configured load source. Returns the checkpoint metadata, or None when
        there is nothing to load. Damaged checkpoints are reported once."""
        if checkpoint is not None:
            return trainer.load(checkpoint, only_model=only_model, strict=strict)
        latest = find_latest_valid_checkpoint(self.checkpoint_root) if self.auto_resume else None
        if latest is not None:
            return trainer.load(latest, only_model=only_model, strict=strict)
        loader = loader_from_config(self.load_config, self.data_path)
        if loader is None or loader.only_auto_resume:
            return None
        path = loader.fetch(is_main_process=self.is_main_process, barrier=self._barrier)
        return trainer.load(path, only_model=only_model, strict=strict)

    def _barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def finish(self) -> None:
        self.logger.finish()
