#!/usr/bin/env python
"""Train a DALL-E 2 diffusion prior on precomputed CLIP embeddings.

    python train_prior.py --config_file train_configs/prior_tiny_cpu.json
    accelerate launch train_prior.py --config_file my_prior.json --override train.lr=3e-4

See `dalle2_pytorch/training/scripts/prior_script.py` for what the run does and
`python train_prior.py --help` for the options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dalle2_pytorch.training.scripts.prior_script import cli
from dalle2_pytorch.training.scripts.prior_script import main as _main


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the prior training script with `argv` (default: the command line); returns the exit status."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(cli())
