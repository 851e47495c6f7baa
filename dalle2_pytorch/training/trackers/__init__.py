"""Loggers (console, wandb), image grids, progress bars and the checkpointing `Tracker`."""

from dalle2_pytorch.training.trackers.images import is_main_process, make_image_grid, progress
from dalle2_pytorch.training.trackers.loggers import BaseLogger, ConsoleLogger, WandbLogger, create_logger
from dalle2_pytorch.training.trackers.tracker import Tracker

__all__ = [
    "BaseLogger",
    "ConsoleLogger",
    "Tracker",
    "WandbLogger",
    "create_logger",
    "is_main_process",
    "make_image_grid",
    "progress",
]
