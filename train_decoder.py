#!/usr/bin/env python
"""Train a DALL-E 2 decoder (cascade of unets) on webdataset image shards.

    python train_decoder.py --config_file train_configs/decoder_tiny_cpu.json
    accelerate launch train_decoder.py --config_file my_decoder.json --override train.epochs=5

See `dalle2_pytorch/training/scripts/decoder_script.py` for what the run does and
`python train_decoder.py --help` for the options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from dalle2_pytorch.training.scripts.decoder_script import cli
from dalle2_pytorch.training.scripts.decoder_script import main as _main


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the decoder training script with `argv` (default: the command line); returns the exit status."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(cli())
