"""Command line of the VQGAN-VAE trainer: `train_vqgan.py` / `python -m dalle2_pytorch.training.scripts.vqgan_script`.

    python train_vqgan.py --config_file train_configs/vqgan_tiny_cpu.json [--override train.lr=1e-3]
                          [--max-steps N] [--no-resume] [--cpu]

Reads a :class:`dalle2_pytorch.config.vqgan.TrainVQGanVAEConfig`. With `data.demo` the embedded
coloured-shapes dataset is rendered first (`<data.folder>/train/*.png` from the demo's train split,
`<data.folder>/heldout/*.png` from its val split; same images as the demo's shards). After training
(resumable: restarting continues from the newest valid checkpoint) the EMA VAE is exported to
`<results_folder>/vae/` and evaluated on the held-out images: `<results_folder>/heldout_metrics.json`
holds their mean L1 and PSNR. Config problems print one line per bad key and exit with status 2.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dalle2_pytorch.training.scripts.cli import ConfigError, build_parser, load_config, parse_args, run_cli

__all__ = ["cli", "evaluate_folder", "main", "render_demo_images", "train_vqgan"]

logger = logging.getLogger("dalle2_pytorch.training.vqgan")
_MARKER = "demo_images.json"


def render_demo_images(folder: str | Path, *, num_train: int, num_heldout: int, image_size: int, seed: int) -> dict[str, Path]:
    """Writes the demo dataset's images as PNG files (skipped when `folder` already holds this set).

    Returns {"train": folder/train, "heldout": folder/heldout}.
    """
    from dalle2_pytorch.demo.shapes import DEFAULT_HELDOUT, make_sample

    folder = Path(folder)
    spec = {"num_train": num_train, "num_heldout": num_heldout, "image_size": image_size, "seed": seed}
    out = {"train": folder / "train", "heldout": folder / "heldout"}
    marker = folder / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out
    for name, split, count in (("train", "train", num_train), ("heldout", "val", num_heldout)):
        out[name].mkdir(parents=True, exist_ok=True)
        for i in range(count):
            sample = make_sample(split, i, seed=seed, image_size=image_size, heldout=DEFAULT_HELDOUT)
            (out[name] / f"{i:06d}.png").write_bytes(sample["png"])
    marker.write_text(json.dumps(spec) + "\n")
    return out


@torch.no_grad()
def evaluate_folder(vae: torch.nn.Module, folder: str | Path, batch_size: int = 64,
                    device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean reconstruction L1 and PSNR (dB) of `vae` over every image in `folder` (no flips)."""
    from torch.utils.data import DataLoader

    from dalle2_pytorch.training.vqgan_trainer import ImageDataset, reconstruction_metrics

    dataset = ImageDataset(folder, vae.image_size, channels=vae.channels, flip=False)
    totals = {"l1": 0.0, "psnr": 0.0}
    for images in DataLoader(dataset, batch_size=batch_size):
        metrics = reconstruction_metrics(vae, images.to(device))
        for key in totals:
            totals[key] += metrics[key] * len(images)
    return {key: value / len(dataset) for key, value in totals.items()} | {"num_images": len(dataset)}


def train_vqgan(config: Any, *, resume: bool = True, max_steps: int | None = None, cpu: bool = False,
                log_every: int = 10) -> dict[str, Any]:
    """Runs a training config; returns the held-out metrics (or the last logs without held-out data)."""
    from dalle2_pytorch.training.vqgan_trainer import VQGanVAETrainer

    data, train = config.data, config.train
    folder, heldout = Path(data.folder), data.heldout_folder
    if data.demo is not None:
        folders = render_demo_images(folder, **data.demo.model_dump())
        folder, heldout = folders["train"], heldout or folders["heldout"]
    torch.manual_seed(train.seed)
    vae = config.vae.create()
    trainer_kwargs = train.model_dump(exclude={"seed", "keep_last"})
    if max_steps is not None:
        trainer_kwargs["num_train_steps"] = min(max_steps, train.num_train_steps)
    trainer = VQGanVAETrainer(
        vae, folder=folder, num_workers=data.num_workers, seed=train.seed, keep_last=train.keep_last, resume=resume,
        device="cpu" if cpu else None, **trainer_kwargs,
    )
    Path(train.results_folder, "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    start, t0 = trainer.num_steps, time.perf_counter()

    def log(logs: dict[str, Any]) -> None:
        step = logs["step"]
        if step % log_every == 0 or "valid_psnr" in logs:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "step" and isinstance(v, float))
            print(f"step {step}: {shown}", flush=True)

    logs = trainer.train(log)
    elapsed = time.perf_counter() - t0
    result: dict[str, Any] = {"steps": trainer.num_steps, "steps_this_run": trainer.num_steps - start,
                              "seconds_this_run": round(elapsed, 1), "last_logs": logs}
    if heldout is not None:
        ema = trainer.ema_vae.ema_model
        result["heldout"] = evaluate_folder(ema, heldout, device=trainer.device)
        result["heldout_online"] = evaluate_folder(trainer.vae, heldout, device=trainer.device)
        print(f"held-out reconstruction (EMA): PSNR {result['heldout']['psnr']:.2f} dB, "
              f"L1 {result['heldout']['l1']:.4f} over {result['heldout']['num_images']} images", flush=True)
    Path(train.results_folder, "heldout_metrics.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from dalle2_pytorch.config.vqgan import TrainVQGanVAEConfig

    parser = build_parser("train_vqgan.py", "Train a VQGAN-VAE on a folder of images (or the demo dataset).")
    args = parse_args(parser, argv)
    if args.dry_run:
        raise ConfigError("--dry-run is not supported by the VQGAN-VAE trainer; use --max-steps 1")
    config = load_config(TrainVQGanVAEConfig, args.config_file, args.override)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train_vqgan(config, resume=args.resume, max_steps=args.max_steps, cpu=args.cpu, log_every=args.log_every)
    return 0


def cli() -> int:
    return run_cli(main, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(cli())
