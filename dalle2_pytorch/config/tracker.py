"""Tracker configs (logging, resuming, saving) and the train/val/test split config.

The reference declared the log/load/save configs with `extra="allow"` and received the real options
(wandb names, file paths, saver targets) as extras. Here every real option is an explicit field and
anything else is an error.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import model_validator

from .base import Flag, Probability, StrictModel


def _trackers(submodule: str | None = None) -> Any:
    """The training trackers (applications layer), imported by name: configs sit below the
    applications, and `create()` is the reference's one-line façade onto them."""
    import importlib

    name = "dalle2_pytorch.training.trackers" + (f".{submodule}" if submodule else "")
    return importlib.import_module(name)

__all__ = [
    "TrainSplitConfig",
    "TrackerLogConfig",
    "TrackerLoadConfig",
    "TrackerSaveConfig",
    "TrackerConfig",
]


class TrainSplitConfig(StrictModel):
    """Fractions of the data used for training, validation and test; they must sum to 1."""

    train: Probability = 0.75
    """Fraction of the data used for training."""
    val: Probability = 0.15
    """Fraction of the data used for validation."""
    test: Probability = 0.1
    """Fraction of the data used for the final test."""

    @model_validator(mode="after")
    def _check_sum(self) -> TrainSplitConfig:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-6):
            raise ValueError(
                f"splits must sum to 1, got train={self.train} + val={self.val} + test={self.test} = {total:g}"
            )
        return self


class TrackerLogConfig(StrictModel):
    """Where metrics go: the console or Weights & Biases."""

    _renamed_keys = {"wandb_resume": "resume"}

    log_type: Literal["console", "wandb"] = "console"
    """Logger: 'console' (print) or 'wandb'."""
    resume: Flag = False
    """Resume the logger run given by `wandb_run_id` (wandb)."""
    auto_resume: Flag = False
    """Resume automatically from `<data_path>/auto_resume.json` after a crash or requeue."""
    verbose: Flag = False
    """Also print log lines when logging to wandb."""
    wandb_entity: str | None = None
    """wandb entity (user or team); None uses the default entity of the logged-in account."""
    wandb_project: str | None = None
    """wandb project; required when `log_type` is 'wandb'."""
    wandb_run_id: str | None = None
    """wandb run id to resume (with `resume`)."""
    wandb_run_name: str | None = None
    """Display name of a new wandb run."""

    @model_validator(mode="after")
    def _check_wandb(self) -> TrackerLogConfig:
        if self.log_type == "wandb" and not self.wandb_project:
            raise ValueError("tracker.log.log_type='wandb' needs tracker.log.wandb_project")
        return self

    def create(self, data_path: str) -> Any:
        """The logger (`ConsoleLogger` / `WandbLogger`), as the reference's `create`."""
        create_logger = _trackers().create_logger
        kwargs = self.model_dump(exclude={"log_type"})
        if self.log_type != "wandb":
            kwargs = {k: v for k, v in kwargs.items() if not k.startswith("wandb_")}
        return create_logger(self.log_type, data_path, **kwargs)


class TrackerLoadConfig(StrictModel):
    """Where to load a checkpoint from before training (resume or fine-tune)."""

    load_from: Literal["local", "url", "wandb"] | None = None
    """Source of the checkpoint: 'local' (file_path), 'url' (url), 'wandb' (wandb_file_path); None: don't load."""
    only_auto_resume: Flag = False
    """Load only when the run is being auto-resumed (see TrackerLogConfig.auto_resume)."""
    file_path: str | None = None
    """Local checkpoint file (load_from='local')."""
    url: str | None = None
    """URL of the checkpoint (load_from='url')."""
    wandb_file_path: str | None = None
    """Path of the checkpoint inside the wandb run (load_from='wandb')."""
    wandb_run_path: str | None = None
    """wandb run holding the file, 'entity/project/run_id' (load_from='wandb')."""

    @model_validator(mode="after")
    def _check_source(self) -> TrackerLoadConfig:
        required = {"local": "file_path", "url": "url", "wandb": "wandb_file_path"}
        if self.load_from is not None and not getattr(self, required[self.load_from]):
            raise ValueError(
                f"tracker.load.load_from={self.load_from!r} needs tracker.load.{required[self.load_from]}"
            )
        return self

    def create(self, data_path: str) -> Any:
        """The loader (`LocalLoader` / `UrlLoader` / `WandbLoader`), or None when `load_from` is null."""
        return _trackers("targets").loader_from_config(self, data_path)


class TrackerSaveConfig(StrictModel):
    """One save target. Paths may contain `{}`-style fields filled at save time (e.g. `{epoch}`)."""

    save_to: Literal["local", "wandb", "huggingface"] = "local"
    """Target: 'local' (copy under the path), 'wandb' (run files) or 'huggingface' (Hub repo)."""
    save_all: Flag = False
    """Kept for schema compatibility (the reference never read it)."""
    save_latest: Flag = True
    """Kept for schema compatibility; saving the latest file is controlled by `save_latest_to`."""
    save_best: Flag = True
    """Kept for schema compatibility; saving the best file is controlled by `save_best_to`."""
    save_latest_to: str | Literal[False] | None = None
    """Where the latest file is written; None/false: don't save the latest."""
    save_best_to: str | Literal[False] | None = None
    """Where the best (lowest validation loss) file is written; None/false: don't save it."""
    save_meta_to: str | None = None
    """Folder for the run's config JSON; None: don't save it."""
    save_type: Literal["checkpoint", "model"] = "checkpoint"
    """'checkpoint': full trainer state (resumable); 'model': EMA weights only, CLIP removed."""
    huggingface_repo: str | None = None
    """Hub repository 'owner/name'; required when `save_to` is 'huggingface'."""
    token_path: str | None = None
    """File with a Hub token; None uses the logged-in token."""
    wandb_run_path: str | None = None
    """wandb run to save into; None: the current run."""

    @model_validator(mode="after")
    def _check_target(self) -> TrackerSaveConfig:
        if self.save_to == "huggingface" and not self.huggingface_repo:
            raise ValueError("tracker.save.save_to='huggingface' needs tracker.save.huggingface_repo")
        return self

    def create(self, data_path: str) -> Any:
        """The saver (`LocalSaver` / `WandbSaver` / `HuggingfaceSaver`), as the reference's `create`."""
        return _trackers("targets").saver_from_config(self, data_path)


class TrackerConfig(StrictModel):
    """Logging, checkpoint loading and saving for a training run."""

    _legacy_keys = {
        "tracker_type": "pre-1.0 schema; use tracker.log.log_type",
        "init_config": "pre-1.0 schema; no longer used",
        "wandb_entity": "pre-1.0 schema; use tracker.log.wandb_entity",
        "wandb_project": "pre-1.0 schema; use tracker.log.wandb_project",
        "verbose": "pre-1.0 schema; use tracker.log.verbose",
    }

    data_path: str = ".tracker_data"
    """Local folder for checkpoints, downloads and auto-resume state."""
    overwrite_data_path: Flag = False
    """Allow reusing an existing, non-empty `data_path`."""
    log: TrackerLogConfig
    """Logger settings."""
    load: TrackerLoadConfig | None = None
    """Checkpoint to load before training; None: start fresh."""
    save: TrackerSaveConfig | list[TrackerSaveConfig]
    """One save target or a list of them."""

    def create(self, full_config: Any = None, extra_config: dict | None = None, dummy_mode: bool = False,
               accelerator: Any = None) -> Any:
        """A started `Tracker` (logger, loader and savers from this config), as the reference's
        `create`; `dummy_mode` (the reference's non-main processes) skips starting the logger."""
        tracker = _trackers().Tracker(
            self.data_path, logger=self.log.create(self.data_path), accelerator=accelerator,
            save_configs=[save.create(self.data_path) for save in self.save_configs],
            load_config=self.load.create(self.data_path) if self.load is not None else None,
            auto_resume=self.log.auto_resume, overwrite_data_path=self.overwrite_data_path,
        )
        if not dummy_mode:
            tracker.init(full_config, extra_config)
        return tracker

    @property
    def save_configs(self) -> list[TrackerSaveConfig]:
        """`save` as a list."""
        return list(self.save) if isinstance(self.save, list) else [self.save]

    def local_path_fields(self) -> list[tuple[str, str | None]]:
        """(field name, value) of the tracker's local paths that must exist before training."""
        items: list[tuple[str, str | None]] = []
        if self.load is not None and self.load.load_from == "local" and not self.load.only_auto_resume:
            items.append(("tracker.load.file_path", self.load.file_path))
        items += [(f"tracker.save[{i}].token_path", save.token_path) for i, save in enumerate(self.save_configs)]
        return items
