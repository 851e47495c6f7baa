"""`VQGanVAETrainer`: a folder of images → a trained `VQGanVAE` (the reference's trainer API).

Each `train_step` takes one optimiser step of the autoencoder (reconstruction + commitment, and with
`use_vgg_and_gan` the VGG perceptual loss and the adaptively weighted GAN loss), then one of the
discriminator (hinge/logistic loss, gradient penalty every `apply_grad_penalty_every` steps), then
updates the EMA of the weights (ema-pytorch). Every `save_results_every` steps it writes a grid of
validation images next to their reconstructions (EMA and online weights) under
`results_folder/samples/` and logs the validation L1 / PSNR; every `save_model_every` steps a
crash-safe checkpoint (`training.checkpoint`) under `results_folder/checkpoints/`. `train` resumes
from the newest valid checkpoint and ends by exporting the EMA VAE (`results_folder/vae/`, read by
`VQGanVAE.from_checkpoint`) and the reference's state-dict file (`results_folder/vae.pt`).

Differences from the reference (whose trainer did not run, see reference-inventory §1.9): nothing is
ever deleted (the reference offered to wipe `results_folder`; here a run resumes), the EMA honours
`ema_beta`, a VAE without discriminator trains, the perceptual network is never optimised,
`amp` means bfloat16 autocast (no GradScaler), and one process on one device (`device=`).

CLI: ``python train_vqgan.py --config_file train_configs/vqgan_tiny_cpu.json`` (or
``python -m dalle2_pytorch.training.scripts.vqgan_script ...``; see that module).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, random_split

from dalle2_pytorch.training.checkpoint import (
    _jsonable,
    _write_json,
    find_latest_valid_checkpoint,
    load_checkpoint,
    save_checkpoint,
    to_safetensors_dict,
    write_checkpoint,
    write_file_atomic,
)
from dalle2_pytorch.training.ema import ema_state_dict, load_ema_state_dict, make_ema
from dalle2_pytorch.training.optim import get_optimizer
from dalle2_pytorch.training.rng import capture_rng_state, restore_rng_state
from dalle2_pytorch.version import __version__

__all__ = ["ImageDataset", "VQGanVAETrainer", "export_vqgan_vae", "reconstruction_metrics"]

logger = logging.getLogger("dalle2_pytorch.training.vqgan")

IMAGE_EXTS = ("jpg", "jpeg", "png")


class ImageDataset(Dataset):
    """Images under `folder` (searched recursively), resized, randomly flipped, centre-cropped.

    Args:
        folder: the image folder.
        image_size: output side.
        exts: file extensions (case-insensitive).
        channels: 3 (RGB) or 1 (grayscale).
        flip: random horizontal flips (training).

    Raises:
        ValueError: no images found.
    """

    def __init__(self, folder: str | os.PathLike, image_size: int, exts: Sequence[str] = IMAGE_EXTS,
                 channels: int = 3, flip: bool = True):
        import torchvision.transforms as T

        super().__init__()
        self.folder = Path(folder)
        suffixes = {f".{e.lower().lstrip('.')}" for e in exts}
        self.paths = sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not self.paths:
            raise ValueError(f"no images ({', '.join(sorted(suffixes))}) found under {self.folder}")
        self.mode = {3: "RGB", 1: "L"}.get(channels)
        if self.mode is None:
            raise ValueError(f"channels must be 1 or 3 for image folders, got {channels}")
        steps = [T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()]
        if flip:
            steps.insert(1, T.RandomHorizontalFlip())
        self.transform = T.Compose(steps)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return self.transform(img.convert(self.mode))
        except OSError as e:
            raise ValueError(f"cannot read image {path}: {e}") from e


def _cycle(loader: DataLoader) -> Iterator[torch.Tensor]:
    while True:
        yield from loader


@torch.no_grad()
def reconstruction_metrics(vae: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Mean L1 and PSNR (dB, images in [0, 1], per image then averaged) of `vae(images)`."""
    was_training = vae.training
    vae.eval()
    recons = vae(images).clamp(0, 1)
    vae.train(was_training)
    mse = (recons - images).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return {"l1": float((recons - images).abs().mean()), "psnr": float((-10 * torch.log10(mse)).mean())}


def export_vqgan_vae(vae: nn.Module, directory: str | os.PathLike, *, reference_file: str | os.PathLike | None = None) -> Path:
    """Writes `vae` as `directory/` (`model.safetensors` + `config.json`, atomically, with a
    manifest) and optionally the reference's `torch.save(vae.state_dict())` file."""
    header = {"format": "dalle2_pytorch", "kind": "vqgan_vae", "version": __version__,
              "config": _jsonable(dict(vae.config), "config")}
    weights = to_safetensors_dict(vae.state_dict(), "VQGanVAE state dict")
    from safetensors.torch import save_file

    out = write_checkpoint(directory, {
        "model.safetensors": lambda p: save_file(weights, str(p), metadata={"format": "pt", "kind": "vqgan_vae"}),
        "config.json": lambda p: _write_json(p, header),
    }, kind="vqgan_vae")
    if reference_file is not None:
        write_file_atomic(reference_file, lambda p: torch.save(weights, p))
    return out


class VQGanVAETrainer(nn.Module):
    """Trains a `VQGanVAE` on a folder of images (reference signature, plus keyword extensions).

    Args:
        vae: the `VQGanVAE` (trained in place; its EMA copy is `trainer.ema_vae.ema_model`).
        num_train_steps: steps `train()` runs to (counting resumed steps).
        lr, wd: optimiser settings (wd 0: Adam; else AdamW without decay on vectors).
        batch_size, grad_accum_every: images per forward pass, forward passes per step.
        folder: training images (jpg/jpeg/png, recursive).
        save_results_every, save_model_every: steps between sample grids / checkpoints.
        results_folder: run folder.
        valid_frac, random_split_seed: validation split of `folder` (0: validate on training images).
        ema_beta, ema_update_after_step, ema_update_every: EMA settings.
        apply_grad_penalty_every: discriminator steps between gradient penalties.
        amp: bfloat16 autocast.
        max_grad_norm: (extension) gradient-norm clipping of both optimisers.
        device: (extension) default CUDA when available, else CPU.
        num_workers, seed, keep_last, resume: (extensions) loader workers, seed of the data order,
            checkpoints kept, resume from the newest valid checkpoint in `results_folder`.
    """

    def __init__(
        self,
        vae: nn.Module,
        *,
        num_train_steps: int,
        lr: float,
        batch_size: int,
        folder: str | os.PathLike,
        grad_accum_every: int,
        wd: float = 0.0,
        save_results_every: int = 100,
        save_model_every: int = 1000,
        results_folder: str | os.PathLike = "./results",
        valid_frac: float = 0.05,
        random_split_seed: int = 42,
        ema_beta: float = 0.995,
        ema_update_after_step: int = 500,
        ema_update_every: int = 10,
        apply_grad_penalty_every: int = 4,
        amp: bool = False,
        max_grad_norm: float | None = None,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        seed: int = 0,
        keep_last: int = 2,
        resume: bool = True,
    ):
        super().__init__()
        from dalle2_pytorch.vqgan_vae import VQGanVAE

        if not isinstance(vae, VQGanVAE):
            raise TypeError(f"vae must be a dalle2_pytorch VQGanVAE, got {type(vae).__name__}")
        for name, value in (("num_train_steps", num_train_steps), ("batch_size", batch_size),
                            ("grad_accum_every", grad_accum_every), ("save_results_every", save_results_every),
                            ("save_model_every", save_model_every), ("apply_grad_penalty_every", apply_grad_penalty_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not 0 <= valid_frac < 1:
            raise ValueError(f"valid_frac must be in [0, 1), got {valid_frac}")
        if vae.use_vgg_and_gan and vae.vgg is None:
            logger.warning("the VAE has no perceptual network: training without the VGG perceptual loss")
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.vae = vae.to(self.device)
        self.num_train_steps = num_train_steps
        self.batch_size = batch_size
        self.grad_accum_every = grad_accum_every
        self.save_results_every = save_results_every
        self.save_model_every = save_model_every
        self.apply_grad_penalty_every = apply_grad_penalty_every
        self.amp = amp
        self.max_grad_norm = max_grad_norm
        self.keep_last = keep_last
        self.results_folder = Path(results_folder)
        self.register_buffer("steps", torch.tensor([0]))

        vgg, vae.vgg = vae.vgg, None  # the EMA copy never needs the perceptual network
        try:
            self.ema_vae = make_ema(vae, beta=ema_beta, update_after_step=ema_update_after_step, update_every=ema_update_every)
        finally:
            vae.vgg = vgg
        discr_params = list(vae.discr.parameters()) if vae.discr is not None else []
        discr_ids = {id(p) for p in discr_params}
        self.optim = get_optimizer([p for p in vae.parameters() if id(p) not in discr_ids], lr=lr, wd=wd)
        self.discr_optim = get_optimizer(discr_params, lr=lr, wd=wd) if discr_params else None

        generator = torch.Generator().manual_seed(seed)
        dataset = ImageDataset(folder, vae.image_size, channels=vae.channels)
        if valid_frac > 0:
            valid_size = max(1, int(round(valid_frac * len(dataset))))
            if valid_size >= len(dataset):
                raise ValueError(f"{len(dataset)} images are too few to hold back valid_frac={valid_frac}")
            self.ds, self.valid_ds = random_split(dataset, [len(dataset) - valid_size, valid_size],
                                                  generator=torch.Generator().manual_seed(random_split_seed))
        else:
            self.ds = self.valid_ds = dataset
        loader_kwargs = dict(batch_size=batch_size, num_workers=num_workers, drop_last=len(self.ds) >= batch_size)
        self.dl = _cycle(DataLoader(self.ds, shuffle=True, generator=generator, **loader_kwargs))
        self.valid_dl = _cycle(DataLoader(self.valid_ds, shuffle=True, generator=torch.Generator().manual_seed(seed + 1),
                                          batch_size=batch_size, num_workers=num_workers,
                                          drop_last=len(self.valid_ds) >= batch_size))
        self.results_folder.mkdir(parents=True, exist_ok=True)
        if resume and find_latest_valid_checkpoint(self.checkpoint_root) is not None:
            self.load(self.checkpoint_root)

    # ------------------------------------------------------------------ helpers
    @property
    def checkpoint_root(self) -> Path:
        return self.results_folder / "checkpoints"

    @property
    def num_steps(self) -> int:
        return int(self.steps.item())

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _optimise(self, optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> None:
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ training
    def train_step(self) -> dict[str, Any]:
        """One autoencoder step, one discriminator step, the EMA update; sample grids and
        checkpoints when due. Returns the logs (losses; validation metrics when computed)."""
        steps = self.num_steps
        apply_penalty = steps % self.apply_grad_penalty_every == 0
        self.vae.train()
        logs: dict[str, Any] = {"step": steps}

        vae_params = [p for group in self.optim.param_groups for p in group["params"]]
        loss_sum = 0.0
        for _ in range(self.grad_accum_every):
            img = next(self.dl).to(self.device)
            with self._autocast():
                loss = self.vae(img, return_loss=True)
            (loss / self.grad_accum_every).backward()
            loss_sum += float(loss.detach()) / self.grad_accum_every
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"step {steps}: the VQGAN-VAE loss is {loss_sum}; lower the learning rate")
        self._optimise(self.optim, vae_params)
        logs["loss"] = loss_sum

        if self.discr_optim is not None:
            discr_params = list(self.vae.discr.parameters())
            discr_sum = 0.0
            for _ in range(self.grad_accum_every):
                img = next(self.dl).to(self.device)
                with self._autocast():
                    loss = self.vae(img, return_discr_loss=True, add_gradient_penalty=apply_penalty)
                (loss / self.grad_accum_every).backward()
                discr_sum += float(loss.detach()) / self.grad_accum_every
            self._optimise(self.discr_optim, discr_params)
            logs["discr_loss"] = discr_sum

        self.ema_vae.update()

        if steps % self.save_results_every == 0:
            logs.update(self.save_results(steps))
        self.steps += 1
        if self.num_steps % self.save_model_every == 0:
            self.save()
        return logs

    def train(self, log_fn: Callable[[dict[str, Any]], None] | bool = lambda logs: None):  # type: ignore[override]
        """Trains until `num_train_steps`, checkpoints, exports the EMA VAE; returns the last logs.

        (`train(True/False)`, as `nn.Module.eval()` calls it, only sets the mode.)
        """
        if isinstance(log_fn, bool):
            return super().train(log_fn)
        logs: dict[str, Any] = {}
        while self.num_steps < self.num_train_steps:
            logs = self.train_step()
            log_fn(logs)
        if find_latest_valid_checkpoint(self.checkpoint_root) is None or self.num_steps % self.save_model_every:
            self.save()
        self.export()
        logger.info("training complete at step %d; EMA VAE exported to %s", self.num_steps, self.results_folder / "vae")
        return logs

    @torch.no_grad()
    def save_results(self, steps: int | None = None) -> dict[str, float]:
        """Writes `samples/{steps}.png` (online) and `samples/{steps}.ema.png`: rows of validation
        images beside their reconstructions; returns the validation metrics of both models."""
        from dalle2_pytorch.training.trackers import make_image_grid

        steps = self.num_steps if steps is None else steps
        images = next(self.valid_dl).to(self.device)
        out: dict[str, float] = {}
        folder = self.results_folder / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        for model, suffix, prefix in ((self.ema_vae.ema_model, ".ema", "valid_ema_"), (self.vae, "", "valid_")):
            model.eval()
            recons = model(images).clamp(0, 1)
            pairs = torch.stack((images, recons), dim=1).flatten(0, 1)  # image, reconstruction, image, ...
            make_image_grid(pairs.float(), nrow=2 * max(1, int(math.sqrt(len(images))))).save(folder / f"{steps}{suffix}.png")
            out.update({prefix + k: v for k, v in reconstruction_metrics(model, images).items()})
        self.vae.train()
        return out

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Writes a crash-safe checkpoint (`results_folder/checkpoints/step_N/` by default)."""
        trainer_state = {
            "kind": "vqgan_vae", "version": __version__, "steps": self.num_steps,
            "model_config": dict(self.vae.config),
        }
        optimizer_state = {"optim": self.optim.state_dict()}
        if self.discr_optim is not None:
            optimizer_state["discr_optim"] = self.discr_optim.state_dict()
        root, exact = (self.checkpoint_root, False) if path is None else (Path(path), True)
        return save_checkpoint(
            root, step=self.num_steps, model_state=self.vae.state_dict(), ema_state=ema_state_dict(self.ema_vae),
            optimizer_state=optimizer_state, rng_state={"process_0": capture_rng_state()},
            trainer_state=trainer_state, keep_last=self.keep_last, exact_path=exact,
        )

    def load(self, path: str | os.PathLike, only_model: bool = False) -> dict[str, Any]:
        """Restores a checkpoint written by `save` (a step directory or a root); returns its state."""
        ckpt = load_checkpoint(path, only_model=only_model)
        state = ckpt.trainer_state
        if state.get("kind") != "vqgan_vae":
            raise ValueError(f"{ckpt.path} is not a VQGAN-VAE trainer checkpoint (kind {state.get('kind')!r})")
        self.vae.load_state_dict(ckpt.model, strict=True)
        load_ema_state_dict(self.ema_vae, ckpt.ema)
        if not only_model:
            self.optim.load_state_dict(ckpt.optimizer["optim"])
            if self.discr_optim is not None:
                self.discr_optim.load_state_dict(ckpt.optimizer["discr_optim"])
            restore_rng_state(ckpt.rng["process_0"])
            self.steps.fill_(int(state["steps"]))
        logger.info("resumed VQGAN-VAE training from %s (step %s)", ckpt.path, state["steps"])
        return state

    def export(self, directory: str | os.PathLike | None = None) -> Path:
        """Exports the EMA VAE (with its discriminator, without VGG): `results_folder/vae/` and the
        reference-layout state dict `results_folder/vae.pt`."""
        directory = Path(directory) if directory is not None else self.results_folder / "vae"
        ema = self.ema_vae.ema_model
        ema.config = dict(self.vae.config)
        out = export_vqgan_vae(ema, directory, reference_file=directory.parent / f"{directory.name}.pt")
        (self.results_folder / "export_info.json").write_text(json.dumps(
            {"steps": self.num_steps, "export": str(out), "reference_state_dict": str(directory.parent / f"{directory.name}.pt")},
            indent=2) + "\n")
        return out

    def eval_vae(self) -> nn.Module:
        """A frozen eval copy of the EMA VAE (no discriminator), e.g. for a latent decoder stage."""
        ema = copy.deepcopy(self.ema_vae.ema_model)
        ema.config = dict(self.vae.config)
        return ema.copy_for_eval()

