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
keep their `.tmp-` name and are ignored (and removed by the next successful write). A write that
fails with an error (disk full, I/O error) is rolled back before the error propagates. All file
operations go through a :class:`Storage` (the seam tests use to inject such errors).

Reading (:func:`find_latest_valid_checkpoint`, :func:`load_checkpoint`): a checkpoint counts only
if its manifest exists and every listed file has the recorded size and hash; otherwise the
previous one is used and a warning names the problem. Loaded tensors must be finite. `.pt` files
are opened with :func:`dalle2_pytorch.serialization.safe_torch_load` only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dalle2_pytorch.integrity import (
    MANIFEST,
    MANIFEST_FORMAT,
    MANIFEST_FORMAT_VERSION,
    CorruptCheckpointError,
    check_finite,
    sha256_file,
    verify_manifest,
)
from dalle2_pytorch.serialization import CheckpointError, safe_torch_load
from dalle2_pytorch.training.state_files import _jsonable, to_safetensors_dict  # noqa: F401  (re-exported)

__all__ = [
    "CHECKPOINT_FILES",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "LoadedCheckpoint",
    "Storage",
    "checkpoint_dir_name",
    "checkpoint_problems",
    "find_latest_valid_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
    "to_safetensors_dict",
    "use_storage",
    "verify_checkpoint",
    "write_checkpoint",
    "write_file_atomic",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json")
_STEP_DIR = re.compile(r"^step_(\d+)(\.old-[0-9a-f]+)?$")
_TMP_DIR = re.compile(r"^(.+)\.tmp-[0-9a-f]+$")


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint or export failed (disk full, I/O error, ...); it was rolled back, so
    what was there before is intact. Exit status 3 in the commands."""

    exit_status = 3


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"[Errno {error.errno}] {error.strerror}"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


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


class Storage:
    """The file-system operations of a checkpoint or export write.

    This is the seam through which faults are injected in tests: every file of
    :func:`write_checkpoint` (hence of `save_checkpoint`, `export_model`) and of
    `export_reference_model` is written, fsync'd and renamed through the active storage (see
    :func:`use_storage`). The default performs the real operations on the local file system.
    """

    def mkdir(self, path: Path) -> None:
        path.mkdir()

    def write_file(self, path: Path, write: Callable[[Path], None]) -> None:
        """Creates the file `path` by calling `write(path)`."""
        write(path)

    def fsync_file(self, path: Path) -> None:
        _fsync_file(path)

    def fsync_dir(self, path: Path) -> None:
        _fsync_dir(path)

    def replace(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)


_active_storage: Storage = Storage()


def current_storage() -> Storage:
    """The storage writes go through (the local file system unless :func:`use_storage` is active)."""
    return _active_storage


@contextlib.contextmanager
def use_storage(storage: Storage) -> Iterator[Storage]:
    """Routes checkpoint and export writes through `storage` inside the block (process-wide)."""
    global _active_storage
    previous, _active_storage = _active_storage, storage
    try:
        yield storage
    finally:
        _active_storage = previous


def write_checkpoint(final_dir: str | os.PathLike, writers: Mapping[str, Callable[[Path], None]], **manifest_extra: Any) -> Path:
    """Atomically creates the directory `final_dir` holding one file per `writers` entry.

    Any failure (a full disk, an I/O error, an exception in a writer) leaves what was there before:
    the temporary directory is removed, an existing `final_dir` that had been moved aside is put
    back, and a directory renamed into place just before the failure is taken back out. So a
    directory named `final_dir` whose manifest verifies is always one complete write.

    Args:
        final_dir: the checkpoint directory to create (replaced if it exists).
        writers: `{file name: fn(path)}`; each function writes its file at `path`.
        manifest_extra: JSON-serialisable values stored in the manifest (e.g. `step`).

    Returns:
        `final_dir` as a `Path`.
    """
    storage = current_storage()
    final_dir = Path(final_dir)
    parent = final_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{final_dir.name}.tmp-{secrets.token_hex(4)}"
    old: Path | None = None
    placed = False
    current = ""
    try:
        storage.mkdir(tmp)
        files = {}
        for name, write in writers.items():
            if "/" in name or name == MANIFEST:
                raise ValueError(f"invalid checkpoint file name {name!r}")
            current = name
            path = tmp / name
            storage.write_file(path, write)
            storage.fsync_file(path)
            files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_FORMAT_VERSION,
            **_jsonable(manifest_extra, "manifest"),
            "files": files,
        }
        current = MANIFEST
        storage.write_file(tmp / MANIFEST, lambda p: _write_json(p, manifest))
        storage.fsync_file(tmp / MANIFEST)
        current = ""
        storage.fsync_dir(tmp)
        if final_dir.exists():  # same name written twice: move the old one aside until replaced
            old = parent / f"{final_dir.name}.old-{secrets.token_hex(4)}"
            storage.replace(final_dir, old)
        storage.replace(tmp, final_dir)
        placed = True
        storage.fsync_dir(parent)
    except BaseException as e:
        _roll_back(final_dir, tmp, old, placed)
        if isinstance(e, Exception) and not isinstance(e, (ValueError, TypeError)):
            where = f" ({current})" if current else ""
            raise CheckpointWriteError(
                f"could not write {final_dir}{where}: {_reason(e)}; the partial write was removed and what "
                "was there before is intact"
            ) from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _remove_stale_temporaries(parent, final_dir.name)
    return final_dir


def write_file_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Writes one file atomically through the storage seam: `write(tmp)` into a sibling temporary file,
    fsync, rename over `path` (a failure leaves the previous file and raises CheckpointWriteError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = current_storage()
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        storage.write_file(tmp, write)
        storage.fsync_file(tmp)
        storage.replace(tmp, path)
        storage.fsync_dir(path.parent)
    except Exception as e:
        raise CheckpointWriteError(f"could not write {path}: {_reason(e)}; the previous file is intact") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _roll_back(final_dir: Path, tmp: Path, old: Path | None, placed: bool) -> None:
    """Best effort after a failed write (plain `os` calls, not the storage that just failed)."""
    with contextlib.suppress(OSError):
        if placed:  # the new directory got its name but the write is reported failed: take it out
            os.replace(final_dir, tmp)
        if old is not None and old.exists() and not final_dir.exists():
            os.replace(old, final_dir)
    shutil.rmtree(tmp, ignore_errors=True)


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
    """Checks a checkpoint directory against its manifest and returns the manifest
    (:func:`dalle2_pytorch.integrity.verify_manifest`).

    Raises:
        CorruptCheckpointError: naming the problem (missing manifest, missing / truncated /
            modified file).
    """
    return verify_manifest(path, check_hashes=check_hashes)


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


def checkpoint_problems(root: str | os.PathLike, check_hashes: bool = True) -> list[tuple[Path, str | None]]:
    """The checkpoints under `root` from the newest down to the newest valid one, each with what is
    wrong with it (None for the valid one, which ends the list; older ones are not checked).

    Logs nothing (see :func:`find_latest_valid_checkpoint`).
    """
    out: list[tuple[Path, str | None]] = []
    for candidate in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(candidate, check_hashes=check_hashes)
        except CorruptCheckpointError as e:
            out.append((candidate, str(e)))
            continue
        out.append((candidate, None))
        break
    return out


def find_latest_valid_checkpoint(root: str | os.PathLike, check_hashes: bool = True) -> Path | None:
    """The newest checkpoint under `root` whose manifest verifies; None if there is none.

    Damaged checkpoints are skipped with one warning each naming the problem.
    """
    for candidate, problem in checkpoint_problems(root, check_hashes=check_hashes):
        if problem is None:
            return candidate
        logger.warning("skipping damaged checkpoint: %s", problem)
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
    """Deletes older checkpoints under `root`, keeping the `keep_last` newest complete ones.

    Only checkpoints whose files have the sizes their manifest records count towards `keep_last`
    (a damaged checkpoint never takes the place of a good one). `protect` (the one just written)
    and every checkpoint newer than it (damaged ones a resumed run skipped: the user may still
    repair them; the run overwrites them when it gets there) are never deleted.

    Returns the deleted directories.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    candidates = list_checkpoints(root)
    complete = [c for c in candidates if _is_complete(c)]
    keep = set(complete[-keep_last:])
    if protect is not None:
        protect = Path(protect)
        keep.add(protect)
        if protect in candidates:
            keep.update(candidates[candidates.index(protect) + 1 :])
    oldest_kept = min((candidates.index(c) for c in keep if c in candidates), default=len(candidates))
    deleted = []
    for c in candidates[:oldest_kept]:
        shutil.rmtree(c, ignore_errors=True)
        deleted.append(c)
    if deleted:
        _fsync_dir(Path(root))
    return deleted


def _is_complete(path: Path) -> bool:
    try:
        verify_checkpoint(path, check_hashes=False)
    except CorruptCheckpointError:
        return False
    return True


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

    The files are checked against the manifest (sizes and sha256) before anything is read, and
    every floating tensor read must be finite. With `only_model`, the optimizer and RNG files are
    not read (returned empty).

    Raises:
        CorruptCheckpointError: the directory does not match its manifest.
        NonFiniteTensorError: a weight or optimiser tensor holds NaN / inf (naming file and tensor).
    """
    path = Path(path)
    if (path / MANIFEST).exists():
        ckpt = path
        verify_checkpoint(ckpt)
    else:
        ckpt = resolve_checkpoint(path)  # the newest checkpoint that verifies
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    model = load_file(str(ckpt / "model.safetensors"), device="cpu")
    check_finite(model, str(ckpt / "model.safetensors"))
    ema = load_file(str(ckpt / "ema.safetensors"), device="cpu")
    check_finite(ema, str(ckpt / "ema.safetensors"))
    optimizer: dict[str, Any] = {}
    rng: dict[str, Any] = {}
    if not only_model:
        optimizer = safe_torch_load(ckpt / "optimizer.pt")
        check_finite(optimizer, str(ckpt / "optimizer.pt"))
        rng = safe_torch_load(ckpt / "rng.pt")
    return LoadedCheckpoint(path=ckpt, model=model, ema=ema, optimizer=optimizer, rng=rng, trainer_state=state)
