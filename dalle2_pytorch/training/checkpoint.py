"""Crash-safe training checkpoints: one directory per checkpoint, written atomically.

Layout of `<root>/step_{N:08d}/`:

| file | content |
|---|---|
| `model.safetensors` | online model weights |
| `ema.safetensors` | EMA state (`ema_model.*`, `initted`, `step`; decoder: prefixed by the unet index `{i}.`) |
| `optimizer.pt` | `torch.save` of optimiser / LR-scheduler / grad-scaler state dicts (tensors and primitives) |
| `rng.pt` | torch / CUDA / NumPy / Python RNG states of every process (tensors and primitives) |
| `trainer_state.json` | step counters, epoch, samples seen, best val loss, config, versions, user metadata |
| `manifest.json` | written **last**: size and sha256 of every other file |

Writing (:func:`write_checkpoint`): every file goes into a fresh `step_N.tmp-<random>/` sibling and
is fsync'd, the manifest (hashes computed by reading the files back) is written and fsync'd, the
temporary directory is `os.replace`d to its final name and the parent directory is fsync'd. A crash
at any point leaves either the previous state or a complete checkpoint; half-written directories
keep their `.tmp-` name and are ignored (and removed by the next successful write).

Reading (:func:`find_latest_valid_checkpoint`, :func:`load_checkpoint`): a checkpoint counts only
if its manifest exists and every listed file has the recorded size and hash; otherwise the
previous one is used and a warning names the problem. `.pt` files are opened with
:func:`dalle2_pytorch.serialization.safe_torch_load` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dalle2_pytorch.serialization import CheckpointError, safe_torch_load

__all__ = [
    "CHECKPOINT_FILES",
    "CorruptCheckpointError",
    "LoadedCheckpoint",
    "checkpoint_dir_name",
    "find_latest_valid_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
    "to_safetensors_dict",
    "verify_checkpoint",
    "write_checkpoint",
    "write_file_atomic",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "dalle2_pytorch.checkpoint"
MANIFEST_FORMAT_VERSION = 1
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json")
_STEP_DIR = re.compile(r"^step_(\d+)(\.old-[0-9a-f]+)?$")
_TMP_DIR = re.compile(r"^(.+)\.tmp-[0-9a-f]+$")
_HASH_CHUNK = 1 << 20


class CorruptCheckpointError(CheckpointError):
    """A checkpoint directory is incomplete or does not match its manifest."""


def checkpoint_dir_name(step: int) -> str:
    """`step_{step:08d}`."""
    return f"step_{int(step):08d}"


# ---------------------------------------------------------------------------------------------
# low-level durable writes


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def to_safetensors_dict(state_dict: Mapping[str, Any], what: str = "state dict") -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors sharing storage are cloned (safetensors refuses
    shared tensors).

    Raises:
        TypeError: a value is not a tensor.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{what}: entry {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu().contiguous()
        ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() > 0 and ident in seen:
            t = t.clone()
        else:
            seen.add(ident)
        out[key] = t
    return out


def _jsonable(value: Any, where: str) -> Any:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return value.item()
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and value != value:  # NaN is not valid JSON
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "model_dump"):  # pydantic models (configs)
        return _jsonable(value.model_dump(), where)
    raise TypeError(f"{where} is a {type(value).__name__}; checkpoint metadata must be JSON-serialisable")


def write_checkpoint(final_dir: str | os.PathLike, writers: Mapping[str, Callable[[Path], None]], **manifest_extra: Any) -> Path:
    """Atomically creates the directory `final_dir` holding one file per `writers` entry.

    Args:
        final_dir: the checkpoint directory to create (replaced if it exists).
        writers: `{file name: fn(path)}`; each function writes its file at `path`.
        manifest_extra: JSON-serialisable values stored in the manifest (e.g. `step`).

    Returns:
        `final_dir` as a `Path`.
    """
    final_dir = Path(final_dir)
    parent = final_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{final_dir.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        files = {}
        for name, write in writers.items():
            if "/" in name or name == MANIFEST:
                raise ValueError(f"invalid checkpoint file name {name!r}")
            path = tmp / name
            write(path)
            _fsync_file(path)
            files[name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            **_jsonable(manifest_extra, "manifest"),
            "files": files,
        }
        _write_json(tmp / MANIFEST, manifest)
        _fsync_file(tmp / MANIFEST)
        _fsync_dir(tmp)
        old = None
        if final_dir.exists():  # same name written twice: move the old one aside until replaced
            old = parent / f"{final_dir.name}.old-{secrets.token_hex(4)}"
            os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale_temporaries(parent, final_dir.name)
    return final_dir


def write_file_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Writes one file atomically: `write(tmp)` into a sibling temporary file, fsync, `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _remove_stale_temporaries(parent: Path, just_written: str) -> None:
    """Removes leftovers of interrupted writes (`<step dir or this name>.tmp-<hex>`)."""
    for entry in parent.iterdir():
        m = _TMP_DIR.match(entry.name)
        if m and entry.is_dir() and (m.group(1) == just_written or _STEP_DIR.match(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# verification and discovery


def verify_checkpoint(path: str | os.PathLike, check_hashes: bool = True) -> dict[str, Any]:
    """Checks a checkpoint directory against its manifest and returns the manifest.

    Raises:
        CorruptCheckpointError: naming the problem (missing manifest, missing / truncated /
            modified file).
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
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(f"{path}: unreadable {MANIFEST}: {e}") from e
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptCheckpointError(f"{path}: {MANIFEST} is not a {MANIFEST_FORMAT} manifest")
    for name, info in files.items():
        fp = path / name
        if not fp.exists():
            raise CorruptCheckpointError(f"{path}: file {name} listed in the manifest is missing")
        size = fp.stat().st_size
        if size != info["size"]:
            raise CorruptCheckpointError(
                f"{path}: {name} has {size} bytes, manifest says {info['size']} (truncated or modified)"
            )
        if check_hashes and _sha256(fp) != info["sha256"]:
            raise CorruptCheckpointError(f"{path}: {name} does not match its sha256 in the manifest")
    return manifest


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Checkpoint directories under `root`, oldest first (`step_N` before its `.old-` leftovers are
    ignored unless no final directory of that step exists)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: dict[int, list[Path]] = {}
    for entry in root.iterdir():
        m = _STEP_DIR.match(entry.name)
        if m and entry.is_dir():
            found.setdefault(int(m.group(1)), []).append(entry)
    out = []
    for step in sorted(found):
        # final name first, then `.old-` leftovers of an interrupted overwrite
        out.extend(sorted(found[step], key=lambda p: (".old-" in p.name, p.name), reverse=True))
    return out


def find_latest_valid_checkpoint(root: str | os.PathLike, check_hashes: bool = True) -> Path | None:
    """The newest checkpoint under `root` whose manifest verifies; None if there is none.

    Damaged checkpoints are skipped with a warning naming the problem.
    """
    for candidate in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(candidate, check_hashes=check_hashes)
        except CorruptCheckpointError as e:
            logger.warning("skipping damaged checkpoint: %s", e)
            continue
        return candidate
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """`path` if it is a checkpoint directory (has a manifest), else the newest valid checkpoint
    under it.

    Raises:
        FileNotFoundError: nothing usable at `path`.
    """
    path = Path(path)
    if (path / MANIFEST).exists():
        return path
    if path.is_dir():
        latest = find_latest_valid_checkpoint(path)
        if latest is not None:
            return latest
        if list_checkpoints(path):
            raise CorruptCheckpointError(f"no valid checkpoint under {path}: every candidate is damaged")
        if any(path.glob("*.tmp-*")) or any(path.glob(CHECKPOINT_FILES[0])):
            raise CorruptCheckpointError(f"{path} holds only an incomplete checkpoint (no manifest)")
    raise FileNotFoundError(f"no dalle2_pytorch checkpoint found at {path}")


def prune_checkpoints(root: str | os.PathLike, keep_last: int, protect: Path | None = None) -> list[Path]:
    """Deletes all but the `keep_last` newest checkpoints under `root`; `protect` is never deleted.

    Returns the deleted directories.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    candidates = list_checkpoints(root)
    keep = set(candidates[-keep_last:])
    if protect is not None:
        keep.add(Path(protect))
    deleted = []
    for c in candidates:
        if c not in keep:
            shutil.rmtree(c, ignore_errors=True)
            deleted.append(c)
    if deleted:
        _fsync_dir(Path(root))
    return deleted


# ---------------------------------------------------------------------------------------------
# the trainer checkpoint


@dataclass
class LoadedCheckpoint:
    """The contents of one checkpoint directory."""

    path: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    trainer_state: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    step: int,
    model_state: Mapping[str, torch.Tensor],
    ema_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any],
    rng_state: Mapping[str, Any],
    trainer_state: Mapping[str, Any],
    keep_last: int | None = 2,
    exact_path: bool = False,
) -> Path:
    """Writes a trainer checkpoint directory (see the module docstring).

    Args:
        path: the checkpoint root (`path/step_{N:08d}/` is written) or, with `exact_path=True`,
            the checkpoint directory itself.
        step: the step counter the checkpoint is named after.
        keep_last: after writing, keep only this many checkpoints under the root (None: keep all;
            ignored with `exact_path`).

    Returns:
        The written checkpoint directory.
    """
    path = Path(path)
    final = path if exact_path else path / checkpoint_dir_name(step)
    model_t = to_safetensors_dict(model_state, "model state")
    ema_t = to_safetensors_dict(ema_state, "EMA state")
    state_json = _jsonable(dict(trainer_state), "trainer_state")
    writers = {
        "model.safetensors": lambda p: save_file(model_t, str(p), metadata={"format": "pt"}),
        "ema.safetensors": lambda p: save_file(ema_t, str(p), metadata={"format": "pt"}),
        "optimizer.pt": lambda p: torch.save(dict(optimizer_state), p),
        "rng.pt": lambda p: torch.save(dict(rng_state), p),
        "trainer_state.json": lambda p: _write_json(p, state_json),
    }
    written = write_checkpoint(final, writers, step=int(step))
    if not exact_path and keep_last is not None:
        prune_checkpoints(path, keep_last, protect=written)
    return written


def load_checkpoint(path: str | os.PathLike, only_model: bool = False) -> LoadedCheckpoint:
    """Verifies and reads a checkpoint directory (or the newest valid one under a root).

    With `only_model`, the optimizer and RNG files are not read (returned empty).
    """
    path = Path(path)
    if (path / MANIFEST).exists():
        ckpt = path
        verify_checkpoint(ckpt)
    else:
        ckpt = resolve_checkpoint(path)  # the newest checkpoint that verifies
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    model = load_file(str(ckpt / "model.safetensors"), device="cpu")
    ema = load_file(str(ckpt / "ema.safetensors"), device="cpu")
    optimizer: dict[str, Any] = {}
    rng: dict[str, Any] = {}
    if not only_model:
        optimizer = safe_torch_load(ckpt / "optimizer.pt")
        rng = safe_torch_load(ckpt / "rng.pt")
    return LoadedCheckpoint(path=ckpt, model=model, ema=ema, optimizer=optimizer, rng=rng, trainer_state=state)
