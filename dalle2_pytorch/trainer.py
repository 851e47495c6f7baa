"""Compatibility module: the reference exposes its trainers as `dalle2_pytorch.trainer.*`."""

from dalle2_pytorch.training.decoder_trainer import DecoderTrainer
from dalle2_pytorch.training.optim import get_optimizer
from dalle2_pytorch.training.prior_trainer import DiffusionPriorTrainer

__all__ = ["DecoderTrainer", "DiffusionPriorTrainer", "get_optimizer"]
