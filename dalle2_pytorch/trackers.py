"""Compatibility module: reference users import loggers and the `Tracker` from here."""

from dalle2_pytorch.training.trackers import BaseLogger, ConsoleLogger, Tracker, WandbLogger, create_logger

__all__ = ["BaseLogger", "ConsoleLogger", "Tracker", "WandbLogger", "create_logger"]
