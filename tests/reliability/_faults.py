"""A `Storage` that fails one file-system operation of a checkpoint / export write, as a full disk
(ENOSPC) or a failing device (EIO) would.

Installed with `dalle2_pytorch.training.checkpoint.use_storage` (the writer's seam; nothing of the
standard library is patched). Operations are counted from 1 across every write while installed:
`mkdir` of the temporary folder, `write_file` of each file, `fsync_file`, `fsync_dir`, `replace`.
When the `fail_at`-th one is a `write_file`, the file is left holding only its first `keep`
fraction of bytes (what reached the disk before it filled up) and the error is raised; any other
operation raises before doing anything.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable

from dalle2_pytorch.training.checkpoint import Storage


class FaultyStorage(Storage):
    def __init__(self, fail_at: int | None = None, error: int = errno.ENOSPC, keep: float = 0.5) -> None:
        self.fail_at = fail_at
        self.error = error
        self.keep = keep
        self.count = 0
        self.log: list[tuple[str, str]] = []  # (operation, path) of every operation seen
        self.failed: tuple[str, str] | None = None

    def _due(self, op: str, path: Path) -> bool:
        self.count += 1
        self.log.append((op, str(path)))
        if self.fail_at is not None and self.count == self.fail_at:
            self.failed = (op, Path(path).name)
            return True
        return False

    def _raise(self, path: Path) -> None:
        raise OSError(self.error, os.strerror(self.error), str(path))

    def mkdir(self, path: Path) -> None:
        if self._due("mkdir", path):
            self._raise(path)
        super().mkdir(path)

    def write_file(self, path: Path, write: Callable[[Path], None]) -> None:
        if self._due("write_file", path):
            write(path)
            size = path.stat().st_size
            with open(path, "r+b") as f:
                f.truncate(int(size * self.keep))
            self._raise(path)
        super().write_file(path, write)

    def fsync_file(self, path: Path) -> None:
        if self._due("fsync_file", path):
            self._raise(path)
        super().fsync_file(path)

    def fsync_dir(self, path: Path) -> None:
        if self._due("fsync_dir", path):
            self._raise(path)
        super().fsync_dir(path)

    def replace(self, src: Path, dst: Path) -> None:
        if self._due("replace", dst):
            self._raise(src)
        super().replace(src, dst)
