"""Safe reading of checkpoint files.

Every checkpoint this package opens goes through :func:`safe_torch_load`: `torch.load` with
`weights_only=True` and an explicit allow-list of the few non-tensor globals that files written by
the reference package (`dalle2-pytorch` 1.1.0 … 1.15.6) contain:

* `packaging.version.Version` (+ the 2022-era `_Version` namedtuple and the `Infinity` sentinels):
  the `version` entry of every reference file;
* `pytorch_warmup.base.LinearWarmup` and `torch.optim.adamw.AdamW` objects pickled inside
  reference prior trainer checkpoints: they are mapped to :class:`InertPickledObject`, a stand-in
  that only records its pickled state and never runs code of the original class;
* `collections.defaultdict` (optimizer state inside those objects).

torch's weights-only unpickler cannot fill a real `defaultdict` (the optimizer state inside the
reference's pickled `LinearWarmup`/`AdamW` objects), so `collections.defaultdict` is allow-listed as
a function that returns a plain dict: the items load, and nothing else about the class is trusted.

A file that needs any other global is refused with :class:`UnsafeCheckpointError`; there is no
automatic fallback to unsafe loading. Our own released weights are safetensors + JSON.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "InertPickledObject",
    "NotACheckpointError",
    "UnsafeCheckpointError",
    "safe_torch_load",
]


class CheckpointError(RuntimeError):
    """Base class for checkpoint reading errors."""


class NotACheckpointError(CheckpointError, ValueError):
    """The file is missing, empty, truncated or not a torch checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """The file asks to unpickle a global outside the allow-list; nothing in it was run."""


class InertPickledObject:
    """Stand-in for an allow-listed object of a class we do not want to import or run.

    Unpickling creates an empty instance and stores the pickled state in `state`; no method of the
    original class is ever called.
    """

    qualified_name = "InertPickledObject"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - never called by pickle
        self.args = args
        self.state: Any = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert stand-in for {self.qualified_name}>"


def _defaultdict_as_dict(*args: Any) -> dict:
    """Rebuilds a pickled `defaultdict(factory, items)` as a plain dict (the factory is dropped)."""
    return {}


def _stand_in(qualified_name: str) -> type:
    return type(
        "Inert_" + qualified_name.replace(".", "_"),
        (InertPickledObject,),
        {"qualified_name": qualified_name},
    )


_STAND_IN_NAMES = (
    "pytorch_warmup.base.LinearWarmup",
    "pytorch_warmup.base.ExponentialWarmup",
    "torch.optim.adamw.AdamW",
    "torch.optim.adam.Adam",
)


def _allow_list() -> list:
    allowed: list = [collections.OrderedDict, (_defaultdict_as_dict, "collections.defaultdict"), dict]
    try:
        import packaging.version as pv

        allowed.append(pv.Version)
        if hasattr(pv, "_Version"):
            allowed.append(pv._Version)
        try:  # removed from recent packaging releases; old pickles still name them
            import packaging._structures as ps

            allowed += [ps.InfinityType, ps.NegativeInfinityType]
        except ImportError:  # pragma: no cover - depends on the installed packaging
            pass
    except ImportError:  # pragma: no cover
        pass
    allowed += [(_stand_in(name), name) for name in _STAND_IN_NAMES]
    return allowed


def _check_file(path: Path) -> None:
    if not path.exists():
        raise NotACheckpointError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise NotACheckpointError(f"expected a checkpoint file but got a directory: {path}")
    size = path.stat().st_size
    if size == 0:
        raise NotACheckpointError(f"checkpoint file is empty (0 bytes): {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as zf:  # reads the central directory only (cheap on large files)
                names = zf.namelist()
        except zipfile.BadZipFile as e:
            raise NotACheckpointError(
                f"checkpoint file {path} is truncated or corrupt ({size} bytes): {e}"
            ) from e
        if not names:
            raise NotACheckpointError(f"checkpoint archive {path} is empty")
        # torch.save archives: every record inside one top-level folder that holds data.pkl
        top = {name.split("/", 1)[0] for name in names}
        if len(top) != 1 or not any(name.count("/") == 1 and name.endswith("/data.pkl") for name in names):
            raise NotACheckpointError(
                f"{path} is a zip archive but not a torch checkpoint (no <archive>/data.pkl record; "
                f"it holds {', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''})"
            )
    elif head[:1] != b"\x80":
        raise NotACheckpointError(
            f"{path} is not a torch checkpoint (it is neither a torch zip archive nor a pickle; "
            f"first bytes {head!r})"
        )


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Loads a `.pt`/`.pth` file with `weights_only=True` and the package's allow-list.

    Args:
        path: file written by `torch.save` (ours or the reference package's).
        map_location: where tensors are put (default CPU).

    Raises:
        NotACheckpointError: missing, empty, truncated or non-checkpoint file.
        UnsafeCheckpointError: the file needs a pickled global outside the allow-list.
    """
    path = Path(path)
    _check_file(path)
    try:
        with torch.serialization.safe_globals(_allow_list()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "Unsupported global" in message or "not an allowed global" in message or "GLOBAL" in message:
            first_line = next((line for line in message.splitlines() if "GLOBAL" in line), message)
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it contains a pickled object outside dalle2_pytorch's "
                f"allow-list ({first_line.strip()}). Nothing from the file was executed. Only load "
                "files you trust; if this is a genuine reference checkpoint, please report the global "
                "so it can be reviewed and allow-listed."
            ) from e
        raise NotACheckpointError(f"could not unpickle {path}: {e}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, TypeError, ValueError, AttributeError) as e:
        raise NotACheckpointError(f"could not read checkpoint {path}: {_readable(e)}") from e


def _readable(error: BaseException) -> str:
    """The first line of a torch reader error, without its C++ source location
    (`[enforce fail at inline_container.cc:180] .`) or its "could this message be improved" note."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)
    text = text.split("(Could this error message be improved?")[0].strip()
    return text or type(error).__name__
