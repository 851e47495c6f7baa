"""VQGAN-VAE configs: the model (`VQGanVAE` constructor), its image-folder data and its trainer.

`python train_vqgan.py --config_file train_configs/vqgan_tiny_cpu.json` reads a
:class:`TrainVQGanVAEConfig`. The reference had no config for its VAE; the field names follow the
`VQGanVAE` and `VQGanVAETrainer` constructors.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from .base import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, StrictModel, load_json

__all__ = ["DemoImagesConfig", "TrainVQGanVAEConfig", "VQGanVAEConfig", "VQGanVAEDataConfig", "VQGanVAETrainConfig"]


class VQGanVAEConfig(StrictModel):
    """`VQGanVAE`. Defaults equal the constructor's. Extra `vq_*` / `encdec_*` keys (e.g.
    `encdec_layer_mults`, `vq_kmeans_iters`) are collected into `vq_kwargs` / `encdec_kwargs`."""

    dim: PositiveInt
    """Encoder width (resnet: first stage; ViT: token width)."""
    image_size: PositiveInt
    """Side of the square training images."""
    channels: PositiveInt = 3
    """Image channels."""
    layers: PositiveInt = 4
    """Resnet stride-2 stages (latent side = image_size / 2**layers) or ViT transformer layers."""
    l2_recon_loss: bool = False
    """MSE reconstruction loss instead of L1."""
    use_hinge_loss: bool = True
    """Hinge GAN losses instead of the logistic ones."""
    vq_codebook_dim: PositiveInt = 256
    """Width of the codebook vectors (the latent map is projected to it)."""
    vq_codebook_size: PositiveInt = 512
    """Number of codebook vectors."""
    vq_decay: Probability = 0.8
    """EMA decay of the codebook updates."""
    vq_commitment_weight: NonNegativeFloat = 1.0
    """Weight of the commitment loss."""
    vq_kmeans_init: bool = True
    """Initialise the codebook with k-means on the first batch."""
    vq_use_cosine_sim: bool = True
    """Cosine-similarity code lookup (ViT-VQGAN) instead of Euclidean."""
    use_vgg_and_gan: bool = True
    """Train with a VGG16 perceptual loss and a discriminator."""
    vae_type: Literal["resnet", "vit"] = "resnet"
    """Encoder/decoder type."""
    discr_layers: PositiveInt = 4
    """Stride-2 stages of the discriminator."""
    vgg_weights: str | None = None
    """Local VGG16 weights file (torchvision's vgg16-397923af.pth) for the perceptual loss."""
    vq_kwargs: dict[str, Any] = {}
    """Other `vector_quantize_pytorch.VectorQuantize` options (without the `vq_` prefix)."""
    encdec_kwargs: dict[str, Any] = {}
    """Encoder/decoder options (without the `encdec_` prefix), e.g. {"layer_mults": [1, 2]}."""

    @model_validator(mode="before")
    @classmethod
    def _collect_prefixed(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for prefix, target in (("vq_", "vq_kwargs"), ("encdec_", "encdec_kwargs")):
            extra = {k: data.pop(k) for k in [k for k in data if k.startswith(prefix) and k not in cls.model_fields]}
            if extra:
                data[target] = {**dict(data.get(target) or {}), **{k[len(prefix):]: v for k, v in extra.items()}}
        return data

    def constructor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `VQGanVAE(**kwargs)`."""
        out = self.model_dump(exclude={"vq_kwargs", "encdec_kwargs", "vgg_weights"})
        out.update({f"vq_{k}": v for k, v in self.vq_kwargs.items()})
        out.update({f"encdec_{k}": v for k, v in self.encdec_kwargs.items()})
        if self.vgg_weights is not None:
            out["vgg_weights"] = self.vgg_weights
        return out

    def create(self, **kwargs: Any) -> Any:
        """Builds `dalle2_pytorch.vqgan_vae.VQGanVAE` (`kwargs`, e.g. `vgg=`, are added)."""
        from dalle2_pytorch.vqgan_vae import VQGanVAE

        return VQGanVAE(**self.constructor_kwargs(), **kwargs)


class DemoImagesConfig(StrictModel):
    """Render the embedded coloured-shapes dataset (`dalle2_pytorch.demo.shapes`) as PNG folders."""

    num_train: PositiveInt = 1024
    """Training images (split 'train')."""
    num_heldout: PositiveInt = 64
    """Held-out images (split 'val'), used for the final reconstruction PSNR."""
    image_size: PositiveInt = 32
    """Rendered side length."""
    seed: NonNegativeInt = 0
    """Dataset seed (the images are a pure function of it)."""


class VQGanVAEDataConfig(StrictModel):
    """Where the training images come from: a folder (jpg/jpeg/png, searched recursively), or the
    demo dataset rendered into `folder` (train/ and heldout/ subfolders) when `demo` is set."""

    folder: str
    """Image folder (with `demo`: where the rendered images are written)."""
    demo: DemoImagesConfig | None = None
    """Render the demo dataset first (skipped when the folder already holds it)."""
    heldout_folder: str | None = None
    """Images never trained on, for the final PSNR (default with `demo`: `<folder>/heldout`)."""
    num_workers: NonNegativeInt = 0
    """DataLoader worker processes."""


class VQGanVAETrainConfig(StrictModel):
    """`VQGanVAETrainer` options (the reference's constructor; defaults equal it where it has them)."""

    num_train_steps: PositiveInt
    """Optimiser steps in total."""
    lr: PositiveFloat = 3e-4
    """Learning rate of the autoencoder and of the discriminator."""
    batch_size: PositiveInt = 16
    """Images per forward pass."""
    grad_accum_every: PositiveInt = 1
    """Forward passes accumulated per optimiser step."""
    wd: NonNegativeFloat = 0.0
    """Weight decay (0: Adam, as the reference)."""
    max_grad_norm: PositiveFloat | None = None
    """Clip gradient norms (None: no clipping)."""
    save_results_every: PositiveInt = 100
    """Steps between reconstruction grids (and validation metrics)."""
    save_model_every: PositiveInt = 1000
    """Steps between crash-safe checkpoints."""
    results_folder: str = "./results"
    """Run folder: checkpoints/, samples/, the final export vae/ and vae.pt."""
    valid_frac: Probability = 0.05
    """Fraction of the training folder held back for validation grids and metrics."""
    random_split_seed: NonNegativeInt = 42
    """Seed of the train/validation split."""
    ema_beta: Probability = 0.995
    """EMA decay."""
    ema_update_after_step: NonNegativeInt = 500
    """Steps before the EMA starts following the weights."""
    ema_update_every: PositiveInt = 10
    """Steps between EMA updates."""
    apply_grad_penalty_every: PositiveInt = 4
    """Discriminator steps between gradient penalties."""
    amp: bool = False
    """bfloat16 autocast."""
    seed: NonNegativeInt = 0
    """Seed of initialisation and data order."""
    keep_last: PositiveInt = 2
    """Checkpoints kept under results_folder/checkpoints/."""


class TrainVQGanVAEConfig(StrictModel):
    """A VQGAN-VAE training run: `vae`, `data`, `train`."""

    vae: VQGanVAEConfig
    data: VQGanVAEDataConfig
    train: VQGanVAETrainConfig

    @model_validator(mode="after")
    def _check_sizes(self) -> TrainVQGanVAEConfig:
        if self.data.demo is not None and self.data.demo.image_size != self.vae.image_size:
            raise ValueError(
                f"data.demo.image_size ({self.data.demo.image_size}) must equal vae.image_size ({self.vae.image_size})"
            )
        return self

    @classmethod
    def from_json_path(cls, path: str) -> TrainVQGanVAEConfig:
        return cls.model_validate(load_json(path))

    def validate_paths(self) -> None:
        """The image folder must exist unless the demo dataset is rendered into it."""
        from pathlib import Path

        if self.data.demo is None and not Path(self.data.folder).is_dir():
            raise FileNotFoundError(f"data.folder {self.data.folder} does not exist")
        if self.data.heldout_folder is not None and self.data.demo is None and not Path(self.data.heldout_folder).is_dir():
            raise FileNotFoundError(f"data.heldout_folder {self.data.heldout_folder} does not exist")
