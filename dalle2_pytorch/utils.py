"""Compatibility module: the reference's `dalle2_pytorch.utils` helpers (timing, printing, optional imports)."""

from __future__ import annotations

import importlib
import time
from types import ModuleType

from dalle2_pytorch._helpers import exists

__all__ = ["Timer", "exists", "import_or_print_error", "print_ribbon"]


class Timer:
    """Wall-clock stopwatch: `elapsed()` seconds since construction or the last `reset()`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.last_time = time.time()

    def elapsed(self) -> float:
        return time.time() - self.last_time


def print_ribbon(s: str, symbol: str = "=", repeat: int = 40) -> str:
    """`s` between two runs of `symbol` (returned, not printed, as in the reference)."""
    flank = symbol * repeat
    return f"{flank} {s} {flank}"


def import_or_print_error(pkg_name: str, err_str: str | None = None) -> ModuleType:
    """Imports `pkg_name`; if it is missing, raises ImportError with `err_str` (e.g. the pip command).

    The reference printed the message and called `exit()`, ending the whole program; raising lets
    the caller decide.
    """
    try:
        return importlib.import_module(pkg_name)
    except ModuleNotFoundError as e:
        raise ImportError(err_str or f"{pkg_name} is not installed: pip install {pkg_name}") from e
