"""What a training script may do with its run folder (`tracker.data_path`) before it starts.

Decided once, on the main process, before anything is written (:func:`prepare_run_folder`):

| the folder holds | default (`--resume`) | `--no-resume` | `--start-over` |
|---|---|---|---|
| nothing (or does not exist) | start at step 0 | start at step 0 | start at step 0 |
| a valid checkpoint | continue from the newest valid one (damaged newer ones: one warning each) | **refused** | folder moved aside, start at step 0 |
| checkpoints, all damaged | **refused**, naming each and why | **refused** | folder moved aside, start at step 0 |
| no checkpoint, only the partial results of a run stopped before its first checkpoint (`metrics.jsonl`, `best.ckpt`) | those files moved aside (`<name>.old-<time>`), start at step 0 | same | folder moved aside, start at step 0 |
| no checkpoint but the exports of a finished run (`export/`, `model.pth`) | **refused** | **refused** | folder moved aside, start at step 0 |

A refusal is one line (:class:`RunFolderError`, exit status 2) naming what is there and the two
ways on: repair (or `--resume`), or `--start-over`, which renames the folder to
`<folder>.old-<YYYYmmdd-HHMMSS>`. Nothing is ever deleted, and a run that starts at step 0 never
overwrites the `best.ckpt`, `metrics.jsonl` or exports of an earlier run; yet a run killed before
its first checkpoint restarts with the same command (a scheduler's requeue works). A folder that
cannot be written (read-only, no permission) is refused at the start too, before any training.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from dalle2_pytorch.command_line import UserError
from dalle2_pytorch.training.checkpoint import checkpoint_problems, list_checkpoints

__all__ = ["FINAL_NAMES", "RESULT_NAMES", "RunFolderError", "move_run_aside", "prepare_run_folder",
           "prepare_run_folder_on_all_ranks"]

logger = logging.getLogger("dalle2_pytorch.scripts")

#: files / folders of a run folder that hold results of a run (besides `checkpoints/step_*`)
RESULT_NAMES = ("best.ckpt", "metrics.jsonl", "export", "model.pth")
#: results written only when a run finishes
FINAL_NAMES = ("export", "model.pth")


class RunFolderError(UserError):
    """The run folder cannot be used as asked; nothing was written (exit status 2)."""


def _problem_text(path: Path, problem: str) -> str:
    prefix = f"{path}: "
    return problem[len(prefix):] if problem.startswith(prefix) else problem


def _earlier_results(data_path: Path) -> list[str]:
    found = []
    steps = [p.name for p in list_checkpoints(data_path / "checkpoints")]
    if steps:
        found.append(f"checkpoints {', '.join(steps)}")
    for name in RESULT_NAMES:
        path = data_path / name
        if name == "metrics.jsonl":
            if path.is_file() and path.stat().st_size > 0:
                found.append(name)
        elif path.exists():
            found.append(name)
    return found


def _aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.old-{stamp}-{n}")
    try:
        os.rename(path, target)
    except OSError as e:
        raise RunFolderError(f"could not move {path} aside to {target}: {e.strerror or e}") from e
    return target


def move_run_aside(data_path: str | os.PathLike) -> Path | None:
    """Renames a non-empty run folder to `<name>.old-<YYYYmmdd-HHMMSS>` (`-2`, `-3`, ... if taken).

    Returns the new path, or None when there was nothing to move.
    """
    data_path = Path(data_path)
    if not data_path.is_dir() or not any(data_path.iterdir()):
        return None
    return _aside(data_path)


def _check_writable(data_path: Path) -> None:
    """Creates the folder if needed and writes (then removes) a probe file in it and in
    `checkpoints/`; refuses a folder that cannot be written."""
    try:
        data_path.mkdir(parents=True, exist_ok=True)
        for folder in (data_path, data_path / "checkpoints"):
            if folder.is_dir():
                fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
                os.close(fd)
                os.unlink(probe)
    except OSError as e:
        reason = e.strerror or str(e)
        where = e.filename or data_path
        raise RunFolderError(
            f"run folder {data_path} cannot be written ({reason}: {where}); make it writable or choose another "
            "tracker.data_path (e.g. --override tracker.data_path=DIR)"
        ) from e


def prepare_run_folder(data_path: str | os.PathLike, *, resume: bool = True, start_over: bool = False) -> Path | None:
    """Applies the table in the module docstring (main process only).

    Returns:
        The checkpoint to continue from, or None to start at step 0.

    Raises:
        RunFolderError: the folder is refused (nothing was changed).
    """
    data_path = Path(data_path)
    if data_path.exists() and not data_path.is_dir():
        raise RunFolderError(f"run folder {data_path} is a file, not a folder; choose another tracker.data_path")
    if start_over:
        moved = move_run_aside(data_path)
        if moved is not None:
            logger.warning("--start-over: moved the previous run %s to %s (nothing was deleted)", data_path, moved)
    _check_writable(data_path)
    root = data_path / "checkpoints"
    problems = checkpoint_problems(root) if resume else []
    valid = next((path for path, problem in problems if problem is None), None)
    damaged = [(path, problem) for path, problem in problems if problem is not None]
    if valid is not None:
        for path, problem in damaged:
            logger.warning("skipping damaged checkpoint: %s", problem)
        return valid
    ways_on = (f"start over with --start-over, which moves {data_path} aside to {data_path.name}.old-<time>/ "
               "(nothing is deleted), or choose another tracker.data_path")
    if damaged:
        listed = "; ".join(f"{path.name}: {_problem_text(path, problem)}" for path, problem in damaged)
        raise RunFolderError(
            f"cannot resume {data_path}: every checkpoint is damaged ({listed}). Repair them (put back the "
            f"damaged files, e.g. from a copy of the run folder), or {ways_on}"
        )
    earlier = _earlier_results(data_path)
    if any(name.startswith("checkpoints") for name in earlier):  # (only reached with --no-resume)
        raise RunFolderError(
            f"--no-resume, but {data_path} holds an earlier run ({'; '.join(earlier)}): continue it with --resume "
            f"(the default), or {ways_on}"
        )
    if any(name in FINAL_NAMES for name in earlier):
        raise RunFolderError(
            f"refusing to start at step 0 over a finished run: {data_path} holds {'; '.join(earlier)} but no "
            f"checkpoint to continue from; {ways_on}"
        )
    for name in earlier:  # partial results of a run stopped before its first checkpoint
        moved = _aside(data_path / name)
        logger.warning("no checkpoint to continue from: moved the earlier partial %s to %s (nothing was deleted); "
                       "starting at step 0", name, moved)
    return None


def prepare_run_folder_on_all_ranks(accelerator: Any, data_path: str | os.PathLike, *, resume: bool,
                                    start_over: bool) -> Path | None:
    """:func:`prepare_run_folder` on the main process; every process gets its decision (or its
    refusal, raised on every process alike)."""
    outcome: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            found = prepare_run_folder(data_path, resume=resume, start_over=start_over)
            outcome = [("ok", None if found is None else str(found))]
        except RunFolderError as e:
            outcome = [("refused", str(e))]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(outcome)
    kind, value = outcome[0]
    if kind == "refused":
        raise RunFolderError(value)
    return None if value is None else Path(value)
