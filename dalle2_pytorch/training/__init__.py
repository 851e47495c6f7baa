"""Trainers, optimiser and LR schedule, EMA, crash-safe checkpoints and trackers (the `[train]` extra)."""

from dalle2_pytorch._extras import require_extra

require_extra("train", "accelerate", "ema_pytorch", what="dalle2_pytorch.training")

from dalle2_pytorch.training.checkpoint import (
    CheckpointWriteError,
    CorruptCheckpointError,
    Storage,
    find_latest_valid_checkpoint,
    load_checkpoint,
    save_checkpoint,
    use_storage,
    verify_checkpoint,
)
from dalle2_pytorch.training.decoder_trainer import DecoderTrainer
from dalle2_pytorch.training.export import export_model, export_reference_model
from dalle2_pytorch.training.optim import get_lr_scheduler, get_optimizer
from dalle2_pytorch.training.prior_trainer import DiffusionPriorTrainer
from dalle2_pytorch.training.trackers import (
    ConsoleLogger,
    Tracker,
    WandbLogger,
    create_logger,
    make_image_grid,
    progress,
)

__all__ = [
    "CheckpointWriteError",
    "ConsoleLogger",
    "CorruptCheckpointError",
    "DecoderTrainer",
    "DiffusionPriorTrainer",
    "Tracker",
    "WandbLogger",
    "create_logger",
    "export_model",
    "export_reference_model",
    "find_latest_valid_checkpoint",
    "get_lr_scheduler",
    "get_optimizer",
    "load_checkpoint",
    "make_image_grid",
    "progress",
    "save_checkpoint",
    "Storage",
    "use_storage",
    "verify_checkpoint",
]
