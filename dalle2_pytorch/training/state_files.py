"""What checkpoint and export files hold: safetensors-ready tensors and JSON-ready metadata."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["to_safetensors_dict"]


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
