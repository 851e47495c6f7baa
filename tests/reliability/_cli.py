"""Helpers: run a command's console entry point in-process and check how it failed."""

from __future__ import annotations

import hashlib
import inspect
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence
from unittest import mock


def call(cli: Callable[..., int], argv: Sequence[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the console entry point `cli` run with `argv`, in-process,
    as the interpreter would run it: an exception escaping it prints its traceback, status 1."""
    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["prog", *argv]):
        try:
            status = cli(list(argv)) if inspect.signature(cli).parameters else cli()
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001 - what the interpreter does with it
            traceback.print_exc()
            status = 1
    out, err = capsys.readouterr()
    return int(status or 0), out, err


def error_line(err: str, prog: str) -> str:
    """The single `<prog>: error: ...` line of `err`; fails unless it is exactly one line, the last
    one, with no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err
    assert errors[0].startswith(f"{prog}: error: "), err
    assert "internal error" not in errors[0], err
    return errors[0]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of the file), by relative name."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent if path.is_file() else path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}
