"""Metric / image / file loggers. Only the main process logs; the others are silent no-ops."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dalle2_pytorch.training.trackers.images import is_main_process, make_image_grid

__all__ = ["BaseLogger", "ConsoleLogger", "WandbLogger", "create_logger"]

_log = logging.getLogger("dalle2_pytorch.tracker")


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            value = value.item() if value.numel() == 1 else value.tolist()
        out[key] = value
    return out


class BaseLogger:
    """Common interface.

    Args:
        data_path: local folder for logger files.
        resume: resume an existing run (wandb).
        auto_resume: kept for the reference's config schema (resume is handled by `Tracker`).
        verbose: also print log lines (wandb).
        accelerator: decides which process is the main one (default: accelerate's `PartialState`).
    """

    def __init__(
        self,
        data_path: str | os.PathLike = ".tracker_data",
        resume: bool = False,
        auto_resume: bool = False,
        verbose: bool = False,
        accelerator: Any = None,
    ) -> None:
        self.data_path = Path(data_path)
        self.resume = resume
        self.auto_resume = auto_resume
        self.verbose = verbose
        self.enabled = is_main_process(accelerator)

    def init(self, full_config: Any = None, extra_config: Mapping[str, Any] | None = None) -> None:
        """Starts the run (`full_config`: the training config, a pydantic model or a dict)."""

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        raise NotImplementedError

    def log_images(
        self,
        images: torch.Tensor,
        captions: Sequence[str] | None = None,
        image_section: str = "images",
        step: int | None = None,
    ) -> None:
        raise NotImplementedError

    def log_file(self, file_path: str | os.PathLike) -> None:
        raise NotImplementedError

    def log_error(self, error_string: str) -> None:
        if self.enabled:
            _log.error(error_string)

    def finish(self) -> None:
        """Ends the run."""


class ConsoleLogger(BaseLogger):
    """Prints metrics; image grids are written as PNGs under `data_path/images/` (if `save_images`)."""

    def __init__(self, *args: Any, save_images: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_images = save_images

    def init(self, full_config: Any = None, extra_config: Mapping[str, Any] | None = None) -> None:
        if self.enabled:
            print("logging to the console", flush=True)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        items = ", ".join(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in _scalars(metrics).items())
        print(f"[step {step}] {items}" if step is not None else items, flush=True)

    def log_images(self, images, captions=None, image_section="images", step=None) -> None:
        if not (self.enabled and self.save_images):
            return
        folder = self.data_path / "images"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{image_section}_{step:08d}.png" if step is not None else f"{image_section}.png"
        make_image_grid(images).save(folder / name.replace("/", "_"))

    def log_file(self, file_path: str | os.PathLike) -> None:
        if self.enabled:
            print(f"file: {file_path}", flush=True)


class WandbLogger(BaseLogger):
    """Weights & Biases logger (works offline with `WANDB_MODE=offline`).

    Args:
        wandb_project: project name (required).
        wandb_entity: user or team; None: the account's default.
        wandb_run_id: id of the run to resume (with `resume=True`).
        wandb_run_name: display name of a new run.
    """

    def __init__(
        self,
        data_path: str | os.PathLike = ".tracker_data",
        wandb_project: str | None = None,
        wandb_entity: str | None = None,
        wandb_run_id: str | None = None,
        wandb_run_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_path, **kwargs)
        if not wandb_project:
            raise ValueError("WandbLogger needs wandb_project")
        if self.resume and not wandb_run_id:
            raise ValueError("WandbLogger(resume=True) needs wandb_run_id")
        self.wandb_project, self.wandb_entity = wandb_project, wandb_entity
        self.wandb_run_id, self.wandb_run_name = wandb_run_id, wandb_run_name
        self.run = None

    def init(self, full_config: Any = None, extra_config: Mapping[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        import wandb

        config = full_config.model_dump() if hasattr(full_config, "model_dump") else dict(full_config or {})
        config.update(extra_config or {})
        self.data_path.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.wandb_project,
            entity=self.wandb_entity,
            id=self.wandb_run_id,
            name=self.wandb_run_name,
            resume="must" if self.resume else None,
            config=config,
            dir=str(self.data_path),
        )
        self.wandb_run_id = self.run.id

    def _require_run(self) -> Any:
        if self.run is None:
            raise RuntimeError("WandbLogger.init() must be called before logging")
        return self.run

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        scalars = _scalars(metrics)
        self._require_run().log(scalars, step=step)
        if self.verbose:
            print(scalars, flush=True)

    def log_images(self, images, captions=None, image_section="images", step=None) -> None:
        """Logs one `wandb.Image` grid; its caption lists the per-image captions in grid order."""
        if not self.enabled:
            return
        import wandb

        caption = " | ".join(f"{i}: {c}" for i, c in enumerate(captions)) if captions else None
        self._require_run().log({image_section: wandb.Image(make_image_grid(images), caption=caption)}, step=step)

    def log_file(self, file_path: str | os.PathLike) -> None:
        if not self.enabled:
            return
        path = Path(file_path).resolve()
        self._require_run().save(str(path), base_path=str(path.parent), policy="now")

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def create_logger(log_type: str, data_path: str | os.PathLike, **kwargs: Any) -> BaseLogger:
    """'console' → :class:`ConsoleLogger`, 'wandb' → :class:`WandbLogger`."""
    if log_type == "console":
        return ConsoleLogger(data_path, **kwargs)
    if log_type == "wandb":
        return WandbLogger(data_path, **kwargs)
    raise ValueError(f"unknown log_type {log_type!r}; expected 'console' or 'wandb'")
