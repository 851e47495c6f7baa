"""Tiny helpers used across the package (the one and only copy)."""

from __future__ import annotations

from typing import Any, Iterable, TypeVar

T = TypeVar("T")


class LegacyConfigKeyWarning(UserWarning):
    """A config or constructor used a key that the reference dropped or renamed; it was ignored or moved."""


def exists(value: Any) -> bool:
    return value is not None


def default(value: T | None, fallback: T) -> T:
    if value is not None:
        return value
    return fallback() if callable(fallback) else fallback


def cast_tuple(value: Any, length: int | None = None) -> tuple:
    """Returns `value` as a tuple; a scalar is repeated `length` times (default 1)."""
    if isinstance(value, list):
        value = tuple(value)
    out = value if isinstance(value, tuple) else ((value,) * (length if length is not None else 1))
    if length is not None and len(out) != length:
        raise ValueError(f"expected {length} values, got {len(out)}: {value!r}")
    return out


def first(items: Iterable[T]) -> T:
    return next(iter(items))
