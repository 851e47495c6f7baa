"""A stand-in training script for the scheduler test: it waits (up to a minute) for the signal that
gives it more CPU threads, writes an export, and prints the threads it ended with."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dalle2_pytorch.training.scripts.runtime import ThreadsOnSignal


def cli() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config_file", required=True)
    args, _ = parser.parse_known_args()
    run_dir = Path(json.loads(Path(args.config_file).read_text())["run_dir"])
    started = torch.get_num_threads()
    with ThreadsOnSignal():
        deadline = time.monotonic() + 60
        while torch.get_num_threads() == started and time.monotonic() < deadline:
            time.sleep(0.05)
    (run_dir / "export").mkdir(parents=True, exist_ok=True)
    (run_dir / "export" / "model.safetensors").write_bytes(b"")
    print(f"threads {started} -> {torch.get_num_threads()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
