"""Compatibility module: the reference's `dalle2_pytorch.vqgan_vae_trainer` (see `training.vqgan_trainer`)."""

from dalle2_pytorch.training.vqgan_trainer import ImageDataset, VQGanVAETrainer
from dalle2_pytorch.vqgan_vae import VQGanVAE

__all__ = ["ImageDataset", "VQGanVAE", "VQGanVAETrainer"]
