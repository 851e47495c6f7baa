"""Helpers of the demo tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

from pathlib import Path

import torch


def reset_accelerate() -> None:
    """accelerate keeps process-wide state; the training scripts each build an Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_tiny_demo(output: Path, **kwargs) -> tuple[dict, list[str]]:
    """`run_demo` with the TINY preset on two threads (two training lanes of one thread each, the
    `make demo` layout); returns (report, progress lines)."""
    from dalle2_pytorch.demo.run import TINY, run_demo

    lines: list[str] = []
    threads = torch.get_num_threads()
    reset_accelerate()
    try:
        result = run_demo(output, kwargs.pop("preset", TINY), threads=kwargs.pop("threads", 2), echo=lines.append, **kwargs)
    finally:
        reset_accelerate()
        torch.set_num_threads(threads)
    return result, lines
