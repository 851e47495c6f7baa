"""How the package's commands fail: one line on stderr and a non-zero exit status, never a traceback.

Every user-facing command (`dream`, `train_prior.py`, `train_decoder.py`,
`python -m dalle2_pytorch.data.precompute`, `python -m dalle2_pytorch.demo.run`) runs its `main`
through :func:`run_command`, which turns any exception into exactly one line::

    <prog>: error: <what went wrong and what to do>

and, with `--verbose` (or `-v`) anywhere on the command line, prints the traceback before it.
Warnings are printed as one line each (`<prog>: warning: ...`). Argument errors of an
:class:`ArgumentParser` are one line too (argparse prints the usage and exits otherwise).

Exit statuses (the same for every command):

| status | meaning |
|---|---|
| 0 | success |
| 1 | training stopped by SIGTERM / SIGUSR1 after saving a checkpoint (training scripts) |
| 2 | invalid input or refused: nothing was done (bad argument, config or file; a run folder that cannot be continued) |
| 3 | failed while running (e.g. disk full, I/O error, out of memory); files written before are intact |
| 130 | interrupted (Ctrl-C) |

An error that is not one of the expected kinds (a bug) is still one line, marked "internal error",
with exit status 3 and the advice to rerun with `--verbose` and report it.

This module imports nothing heavy (no torch) and nothing of the package above the loading layer.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_STOPPED",
    "ArgumentParser",
    "UsageError",
    "UserError",
    "check_device",
    "describe_error",
    "exit_fast",
    "run_command",
]

EXIT_OK = 0
EXIT_STOPPED = 1
EXIT_INVALID = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An expected failure caused by the input (arguments, config, files): exit status 2."""

    exit_status = EXIT_INVALID


class UsageError(UserError):
    """A command-line argument is malformed."""


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors raise :class:`UsageError` (one line) instead of
    printing the usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _one_line(text: str) -> str:
    parts = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    out = "; ".join(parts)
    return out.replace(":; ", ": ")


def _is_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return (oom is not None and isinstance(error, oom)) or isinstance(error, MemoryError)


def _expected_kinds() -> tuple[type[BaseException], ...]:
    from dalle2_pytorch.serialization import CheckpointError

    return (UserError, CheckpointError, ValueError)


_INVALID_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_error(error: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) for an exception (see the module docstring).

    Expected kinds: :class:`UserError`, the package's checkpoint errors, `ValueError` (configs,
    arguments), `OSError` (files, disks), out-of-memory, and any exception with an integer
    `exit_status` attribute. Anything else is an internal error.
    """
    status = getattr(error, "exit_status", None)
    if isinstance(error, OSError) and not isinstance(status, int):
        if error.strerror:
            detail = error.strerror
            if error.filename is not None:
                detail += f": {_shorten(str(error.filename))}"
            if getattr(error, "filename2", None) is not None:
                detail += f" -> {_shorten(str(error.filename2))}"
        else:
            detail = str(error) or type(error).__name__
        return _one_line(detail), EXIT_INVALID if isinstance(error, _INVALID_OS_ERRORS) else EXIT_FAILED
    if _is_out_of_memory(error):
        return _one_line(f"out of memory: {error}"), EXIT_FAILED
    if isinstance(status, int) or isinstance(error, _expected_kinds()):
        return _one_line(str(error) or type(error).__name__), status if isinstance(status, int) else EXIT_INVALID
    return (
        _one_line(f"internal error: {type(error).__name__}: {_shorten(str(error))} (run again with --verbose for the "
                  "traceback, and please report it)"),
        EXIT_FAILED,
    )


def check_device(text: str, flag: str = "--device") -> None:
    """Refuses a device name torch does not know, or a device this machine does not have.

    Raises:
        UserError: naming the flag, the value and what to use instead.
    """
    import torch

    names = "cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"{flag} {text!r} is not a device name ({names})") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {text}: no CUDA GPU is available on this machine; use {flag} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{flag} {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError(f"{flag} {text}: Apple MPS is not available on this machine; use {flag} cpu")
        return
    module = getattr(torch, device.type, None)
    if device.type == "meta" or module is None or not hasattr(module, "is_available"):
        raise UserError(f"{flag} {text}: use {names}")
    if not module.is_available():
        raise UserError(f"{flag} {text}: no {device.type} device is available on this machine; use {flag} cpu")


def _wants_traceback(argv: Sequence[str]) -> bool:
    return any(a in ("--verbose", "-v") for a in argv) or os.environ.get("DALLE2_PYTORCH_TRACEBACK") == "1"


def _rank_prefix() -> str:
    rank = os.environ.get("RANK")
    return f"[rank {rank}] " if rank not in (None, "", "0") else ""


def run_command(prog: str, main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Runs `main(argv)` and returns its exit status, turning every exception into one stderr line.

    Args:
        prog: the command's name, the prefix of every message.
        main: the command; returns an exit status (None means 0).
        argv: arguments (default: `sys.argv[1:]`).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = _wants_traceback(args)
    previous_showwarning = warnings.showwarning

    def show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        print(f"{_rank_prefix()}{prog}: warning: {_one_line(str(message))}", file=sys.stderr, flush=True)

    warnings.showwarning = show_warning
    try:
        status = main(args)
        return EXIT_OK if status is None else int(status)
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_INVALID)
    except KeyboardInterrupt:
        print(f"{_rank_prefix()}{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BaseException as e:  # noqa: BLE001 - the point of this function
        message, status = describe_error(e)
        if verbose:
            traceback.print_exc()
        print(f"{_rank_prefix()}{prog}: error: {message}", file=sys.stderr, flush=True)
        return status
    finally:
        warnings.showwarning = previous_showwarning
        sys.stdout.flush()


def exit_fast(status: int) -> NoReturn:
    """Ends the process with `status` after the exit handlers, without the interpreter's teardown.

    Everything `atexit` holds runs first (logging's flush, `weakref.finalize` / temporary-folder
    clean-ups, servers' shutdown), then stdout and stderr are flushed and the process exits. What
    is skipped is freeing every module's objects one by one, which with torch imported takes about
    0.3 s on a 2-core CPU: a third of a short `dream` call's time beyond the import. Also skipped:
    joining non-daemon threads and `concurrent.futures` work still queued, and closing files left
    open; a command that ends with any of these must not call it (`dream` ends with none). For
    console entry points only; a library function that returns must never call it. A failed flush
    turns a success into status 120, as the interpreter's own exit does.
    """
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is not None:
        run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BrokenPipeError:  # the reader left: nothing more can be delivered
            pass
        except (OSError, ValueError):  # a full disk, a closed stream: output was lost
            status = status or 120
    os._exit(status)
