#!/usr/bin/env python
"""The reference's name for `train_prior.py` (same script, same options).

    python train_diffusion_prior.py --config_file train_configs/prior_tiny_cpu.json
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
