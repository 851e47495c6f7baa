"""Input casting and batch splitting for chunked gradient accumulation / chunked sampling."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["batch_size_of", "cast_inputs", "split_batch"]


def _cast(value: Any, device: torch.device) -> Any:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return value


def cast_inputs(args: tuple, kwargs: dict, device: torch.device) -> tuple[tuple, dict]:
    """Converts NumPy arrays to tensors and moves every tensor to `device` (other values as is)."""
    return tuple(_cast(a, device) for a in args), {k: _cast(v, device) for k, v in kwargs.items()}


def _is_batch_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def batch_size_of(args: tuple, kwargs: dict) -> int | None:
    """Batch size = leading dimension of the first tensor (or length of the first list of strings)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    for value in (*args, *kwargs.values()):
        if _is_batch_list(value):
            return len(value)
    return None


def split_batch(
    args: tuple, kwargs: dict, max_batch_size: int | None
) -> Iterator[tuple[float, tuple, dict]]:
    """Yields `(fraction of the batch, args chunk, kwargs chunk)`.

    Tensors (and lists of strings) whose leading size equals the batch size are split into chunks
    of at most `max_batch_size`; everything else is passed to every chunk unchanged. Without
    `max_batch_size`, or without any batched input, a single chunk with fraction 1 is produced.
    """
    batch = batch_size_of(args, kwargs)
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if max_batch_size is None or batch is None or batch <= max_batch_size:
        yield 1.0, args, kwargs
        return

    def piece(value: Any, start: int, stop: int) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch:
            return value[start:stop]
        if _is_batch_list(value) and len(value) == batch:
            return value[start:stop]
        return value

    for start in range(0, batch, max_batch_size):
        stop = min(start + max_batch_size, batch)
        yield (
            (stop - start) / batch,
            tuple(piece(a, start, stop) for a in args),
            {k: piece(v, start, stop) for k, v in kwargs.items()},
        )
