"""Compatibility module: reference users import loggers, loaders, savers and the `Tracker` from here."""

from dalle2_pytorch.training.trackers import BaseLogger, ConsoleLogger, Tracker, WandbLogger, create_logger
from dalle2_pytorch.training.trackers.targets import (
    DEFAULT_DATA_PATH,
    BaseLoader,
    BaseSaver,
    HuggingfaceSaver,
    LocalLoader,
    LocalSaver,
    UrlLoader,
    WandbLoader,
    WandbSaver,
    create_loader,
    create_saver,
    loader_type_map,
    saver_type_map,
)

#: log_type -> logger class (the reference's table)
logger_type_map = {"console": ConsoleLogger, "wandb": WandbLogger}

__all__ = [
    "DEFAULT_DATA_PATH",
    "BaseLoader",
    "BaseLogger",
    "BaseSaver",
    "ConsoleLogger",
    "HuggingfaceSaver",
    "LocalLoader",
    "LocalSaver",
    "Tracker",
    "UrlLoader",
    "WandbLoader",
    "WandbLogger",
    "WandbSaver",
    "create_loader",
    "create_logger",
    "create_saver",
    "loader_type_map",
    "logger_type_map",
    "saver_type_map",
]
