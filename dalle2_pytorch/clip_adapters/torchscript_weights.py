"""Reading the tensors of a TorchScript archive without running it (OpenAI's original CLIP `.pt`
downloads are TorchScript archives).

`torch.jit.load` would compile and run the archive's code; here only its pickled module tree
(`<archive>/data.pkl`) is read with a restricted unpickler: TorchScript module classes
(`__torch__.*`) become inert attribute holders, tensors are rebuilt from the archive's storage
records, and any other global (a function, a class) is refused. The result maps dotted attribute
paths to tensors, as `module.state_dict()` would (plus any tensor attributes that are not
parameters, e.g. attention masks, which the caller filters).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["is_torchscript_archive", "read_torchscript_tensors"]

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a zip archive with TorchScript code (`code/` or `constants.pkl`)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


class _ScriptObject:
    """Stand-in for a TorchScript class instance: keeps its pickled state, runs nothing."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return torch.empty(0, dtype=storage.dtype).set_(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self._zf = zf
        self._root = root
        self._storages: dict[str, torch.TypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"TorchScript archive refers to {module}.{name}, which is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent record {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else storage_type
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r:.80}")
        if key not in self._storages:
            raw = bytearray(self._zf.read(f"{self._root}/data/{key}"))
            untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
            self._storages[key] = torch.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self._storages[key]


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    state = obj.state if isinstance(obj, _ScriptObject) else None
    if not isinstance(state, dict):
        return
    for name, value in state.items():
        if torch.is_tensor(value):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", out, seen)


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """{dotted attribute path: tensor} of every tensor attribute of the archive's module tree.

    Raises:
        ValueError: not a TorchScript archive, or it refers to anything but modules and tensors.
    """
    path = Path(path)
    if not is_torchscript_archive(path):
        raise ValueError(f"{path} is not a TorchScript archive")
    with zipfile.ZipFile(path) as zf:
        data_files = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(data_files) != 1:
            raise ValueError(f"{path}: expected one <archive>/data.pkl, found {data_files}")
        root = data_files[0].split("/")[0]
        try:
            top = _RestrictedUnpickler(zf.read(data_files[0]), zf, root).load()
        except (pickle.UnpicklingError, KeyError, EOFError, TypeError) as e:
            raise ValueError(f"cannot read the weights of TorchScript archive {path}: {e}") from e
    out: dict[str, torch.Tensor] = {}
    _collect(top, "", out, set())
    if not out:
        raise ValueError(f"{path}: the TorchScript archive holds no tensors")
    return {k: v.clone() for k, v in out.items()}
