"""Progress bars for long sampling runs (tqdm), on by default only when stderr is a terminal."""

from __future__ import annotations

import sys
from typing import Any, Callable

__all__ = ["ProgressBar", "progress_enabled"]


def progress_enabled(progress: bool | None) -> bool:
    """`progress` if given, else whether stderr is an interactive terminal."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class ProgressBar:
    """A tqdm bar over sampling steps (steps/s shown) whose `callback` fits the samplers' callback.

    Use as a context manager; with `enabled=False` nothing is printed and the callback only chains
    to `then`.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool, then: Callable[..., Any] | None = None):
        self.total, self.desc, self.enabled, self.then = int(total), desc, enabled, then
        self._bar = None

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="step", leave=False, dynamic_ncols=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def callback(self, *args: Any) -> None:
        if self._bar is not None:
            self._bar.update(1)
        if self.then is not None:
            self.then(*args)
