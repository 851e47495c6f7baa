#!/usr/bin/env python
"""Train a VQGAN-VAE (for latent decoder stages) on a folder of images or the embedded demo dataset.

    python train_vqgan.py --config_file train_configs/vqgan_tiny_cpu.json
    python -m dalle2_pytorch.training.scripts.vqgan_script --config_file my_vqgan.json --max-steps 100

See `dalle2_pytorch/training/scripts/vqgan_script.py` for what the run does and
`python train_vqgan.py --help` for the options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dalle2_pytorch.training.scripts.vqgan_script import cli
from dalle2_pytorch.training.scripts.vqgan_script import main as _main


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the VQGAN-VAE training script with `argv` (default: the command line); returns the exit status."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(cli())
