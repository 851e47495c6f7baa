"""Strict state-dict comparison with a readable diff.

Shared by the prior and decoder key converters: before loading a converted reference state dict,
:func:`check_state_dict` compares it against the keys and shapes our module expects and raises
:class:`StateDictMismatchError` listing every missing key, unexpected key and shape mismatch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "StateDictMismatchError",
    "TensorValueMismatchError",
    "check_state_dict",
    "check_tensors_close",
    "expected_shapes",
]

_MAX_LISTED = 20


class StateDictMismatchError(ValueError):
    """A state dict does not match the expected keys/shapes.

    Attributes:
        missing: keys expected but absent from the state dict (sorted).
        unexpected: keys present in the state dict but not expected (sorted).
        mismatched: `(key, expected_shape, got_shape)` for keys present on both sides whose shapes
            differ (sorted by key).
        context: what was being loaded (e.g. "prior checkpoint (layout 1.1.0)").
    """

    def __init__(
        self,
        context: str,
        missing: Sequence[str],
        unexpected: Sequence[str],
        mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.context = context
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [
            f"{self.context}: state dict does not match "
            f"({len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} shape mismatches)"
        ]

        def section(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"  {title} ({len(items)}):")
            for item in items[:_MAX_LISTED]:
                lines.append(f"    {item}")
            if len(items) > _MAX_LISTED:
                lines.append(f"    ... and {len(items) - _MAX_LISTED} more")

        section("missing keys", self.missing)
        section("unexpected keys", self.unexpected)
        section(
            "shape mismatches (expected vs got)",
            [f"{k}: {list(e)} vs {list(g)}" for k, e, g in self.mismatched],
        )
        return "\n".join(lines)


def _shape_of(value: Any) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, torch.Size):
        return tuple(value)
    return tuple(int(s) for s in value)


def expected_shapes(module_or_state: torch.nn.Module | Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of a module's `state_dict()` (works on meta-device modules) or of a mapping."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    return {k: _shape_of(v) for k, v in state.items()}


def check_state_dict(
    expected: Mapping[str, Any],
    got: Mapping[str, Any],
    context: str,
) -> None:
    """Raises :class:`StateDictMismatchError` unless `got` has exactly the `expected` keys and shapes.

    Args:
        expected: `{key: shape}`; a shape may be a tuple/list of ints, a `torch.Size` or a tensor
            (its shape is used), so a module's `state_dict()` can be passed directly.
        got: `{key: tensor}` (or anything with a `.shape`), e.g. a converted checkpoint.
        context: short description of what is being loaded; starts the error message.
    """
    exp = {k: _shape_of(v) for k, v in expected.items()}
    got_shapes = {k: _shape_of(v) for k, v in got.items()}
    missing = sorted(set(exp) - set(got_shapes))
    unexpected = sorted(set(got_shapes) - set(exp))
    mismatched = sorted(
        (k, exp[k], got_shapes[k]) for k in set(exp) & set(got_shapes) if exp[k] != got_shapes[k]
    )
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(context, missing, unexpected, mismatched)


class TensorValueMismatchError(ValueError):
    """Tensors that should be equal (e.g. saved noise-schedule buffers vs recomputed ones) differ.

    Attributes:
        context: what was being compared.
        mismatches: `(key, max_abs_diff)` for every differing tensor (sorted by key).
    """

    def __init__(self, context: str, mismatches: Sequence[tuple[str, float]], rtol: float, atol: float) -> None:
        self.context = context
        self.mismatches = list(mismatches)
        lines = [f"{context}: {len(self.mismatches)} tensor(s) differ (rtol={rtol:g}, atol={atol:g})"]
        for key, diff in self.mismatches[:_MAX_LISTED]:
            lines.append(f"    {key}: max abs diff {diff:.3g}")
        if len(self.mismatches) > _MAX_LISTED:
            lines.append(f"    ... and {len(self.mismatches) - _MAX_LISTED} more")
        super().__init__("\n".join(lines))


def check_tensors_close(
    expected: Mapping[str, torch.Tensor],
    got: Mapping[str, torch.Tensor],
    context: str,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> None:
    """Checks keys and shapes (as :func:`check_state_dict`), then values with `torch.isclose`.

    Values are compared in float64 on CPU; NaN/inf must match exactly.

    Raises:
        StateDictMismatchError: keys or shapes differ.
        TensorValueMismatchError: some values differ beyond `atol + rtol·|expected|`.
    """
    check_state_dict(expected, got, context)
    bad: list[tuple[str, float]] = []
    for key in sorted(expected):
        e = expected[key].detach().to("cpu", torch.float64)
        g = got[key].detach().to("cpu", torch.float64)
        close = torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
        if not close.all():
            diff = (g - e)[~close].abs().max().item()  # nan/inf where non-finite values differ
            bad.append((key, diff))
    if bad:
        raise TensorValueMismatchError(context, bad, rtol, atol)
