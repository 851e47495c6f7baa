"""Integrity checks of the files this package writes: manifests (sizes + sha256) and finite tensors.

Every checkpoint directory and every export carries a `manifest.json`, written last, that records
the size and sha256 of each of its files. :func:`verify_manifest` checks a folder against it; the
loaders (`training.checkpoint.load_checkpoint` for resume, `compat.files.read_weights` for
`from_checkpoint` / `dream`) call it before reading any weight, so a truncated, bit-flipped or
half-written file is one clear error naming the file instead of silently wrong weights.
:func:`check_finite` refuses weights holding NaN or ±inf (a model that can only produce black
images or NaN losses).

This module sits beside `serialization.py` in the loading layer: it imports nothing of the package
above it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dalle2_pytorch.serialization import CheckpointError

__all__ = [
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_VERSION",
    "CorruptCheckpointError",
    "NonFiniteTensorError",
    "check_finite",
    "sha256_file",
    "verify_manifest",
]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dalle2_pytorch.checkpoint"
MANIFEST_FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 20


class CorruptCheckpointError(CheckpointError):
    """A checkpoint or export directory is incomplete or does not match its manifest."""


class NonFiniteTensorError(CheckpointError):
    """A tensor to be saved or just loaded holds NaN or ±inf values."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_manifest(path: str | os.PathLike, check_hashes: bool = True) -> dict[str, Any]:
    """Checks a checkpoint / export directory against its `manifest.json`; returns the manifest.

    Args:
        path: the directory.
        check_hashes: also compare sha256 (False: sizes only, a cheap first look).

    Raises:
        CorruptCheckpointError: naming the directory and the problem (no manifest, unreadable
            manifest, a listed file missing, truncated / extended, or with another sha256).
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise CorruptCheckpointError(f"{path} is not a checkpoint directory")
    if not manifest_path.exists():
        raise CorruptCheckpointError(f"{path}: no {MANIFEST} (the write did not finish)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        entries = [(str(name), int(info["size"]), str(info["sha256"])) for name, info in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptCheckpointError(f"{path}: unreadable {MANIFEST} ({type(e).__name__}: {e})") from e
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptCheckpointError(f"{path}: {MANIFEST} is not a {MANIFEST_FORMAT} manifest")
    for name, size, digest in entries:
        fp = path / name
        if "/" in name or name in ("", ".", "..") or not fp.is_file():
            raise CorruptCheckpointError(f"{path}: file {name} listed in the manifest is missing")
        actual = fp.stat().st_size
        if actual != size:
            raise CorruptCheckpointError(
                f"{path}: {name} has {actual} bytes, manifest says {size} (truncated or modified)"
            )
        if check_hashes and sha256_file(fp) != digest:
            raise CorruptCheckpointError(f"{path}: {name} does not match its sha256 in the manifest (modified or damaged)")
    return manifest


def _first_non_finite(value: Any, where: str) -> str | None:
    if isinstance(value, torch.Tensor):
        if (value.is_floating_point() or value.is_complex()) and value.numel() and not bool(torch.isfinite(value).all()):
            return where
        return None
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = _first_non_finite(v, f"{where}.{k}" if where else str(k))
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _first_non_finite(v, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def check_finite(state: Any, source: str) -> None:
    """Raises :class:`NonFiniteTensorError` when any floating tensor in `state` (a tensor, or
    nested dicts / lists of them) holds NaN or ±inf. `source` names the file in the message."""
    found = _first_non_finite(state, "")
    if found is not None:
        raise NonFiniteTensorError(f"{source}: tensor {found or '<tensor>'} holds NaN or infinite values")
