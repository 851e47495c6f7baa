"""Importing a package that is `dalle2_pytorch`'s public API, in a benchmark worker process.

Our package is imported from the repository (the worker gets the repository root on PYTHONPATH).
The reference (`dalle2-pytorch` 1.15.6, installed in a separate scratch virtual environment) imports
OpenAI's `clip` package at import time; `clip-anytorch` needs `pkg_resources`, which recent
setuptools no longer ship. Nothing the benchmarks run uses OpenAI CLIP, so when that import fails
we put an empty stand-in `clip` module in `sys.modules` and import again. Only this worker process
is affected; nothing from the reference is copied anywhere.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

__all__ = ["import_package"]


def _stub_clip() -> None:
    stub = types.ModuleType("clip")

    def _unavailable(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("OpenAI `clip` is stubbed out in the benchmark worker (not needed by the benchmarks)")

    stub.load = _unavailable  # type: ignore[attr-defined]
    stub.tokenize = _unavailable  # type: ignore[attr-defined]
    stub.available_models = lambda: []  # type: ignore[attr-defined]
    sys.modules["clip"] = stub


def import_package(side: str) -> tuple[Any, str]:
    """Imports `dalle2_pytorch` for `side` ("ours" or "reference").

    Returns:
        (module, note): the imported package and a note saying whether `clip` had to be stubbed.

    Raises:
        RuntimeError: the imported package is not the one the side asks for (e.g. the reference
            interpreter found the repository's package, or ours found an installed reference).
    """
    note = ""
    try:
        pkg = importlib.import_module("dalle2_pytorch")
    except (ImportError, AttributeError) as err:
        if side != "reference":
            raise
        for name in [m for m in sys.modules if m == "dalle2_pytorch" or m.startswith("dalle2_pytorch.")]:
            del sys.modules[name]
        _stub_clip()
        note = f"stubbed `clip` ({type(err).__name__}: {err})"
        pkg = importlib.import_module("dalle2_pytorch")
    has_compat = importlib.util.find_spec("dalle2_pytorch.compat") is not None
    if side == "ours" and not has_compat:
        raise RuntimeError(f"expected this repository's dalle2_pytorch, imported {pkg.__file__}")
    if side == "reference" and has_compat:
        raise RuntimeError(f"expected the reference dalle2_pytorch, imported this repository's ({pkg.__file__})")
    return pkg, note
