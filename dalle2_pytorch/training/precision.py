"""Mixed precision of the trainers: the `amp` option mapped to accelerate's `mixed_precision`.

bf16 autocast is the default on GPUs with native bf16 (Ampere and newer): same exponent range as
float32 (no loss scaling), half the bytes per activation, and the tensor cores' bf16 rate. CPU runs
and older GPUs keep float32 unless asked.
"""

from __future__ import annotations

import os

import torch

__all__ = ["AMP_CHOICES", "resolve_mixed_precision"]

AMP_CHOICES = ("auto", "no", "fp16", "bf16")


def _gpu_has_bf16() -> bool:
    """True on GPUs with native bf16 (Ampere and newer), not the emulated support of older ones."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # pragma: no cover - older torch without the argument
        return bool(torch.cuda.is_bf16_supported())


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "y")


def resolve_mixed_precision(amp: bool | str | None, *, cpu: bool = False) -> str | None:
    """Maps the trainers' `amp` flag to accelerate's `mixed_precision` ("no" / "fp16" / "bf16").

    * "auto" (the default): the launcher's choice when `accelerate launch` set one
      (ACCELERATE_MIXED_PRECISION, e.g. from an accelerate config file); otherwise bf16 on a GPU with
      native bf16 and nothing (float32) on CPU (`cpu`, ACCELERATE_USE_CPU, no GPU) or on older GPUs.
    * True: bf16 on CPU and on GPUs that support it, fp16 otherwise.
    * None / False: not set; "no" / "fp16" / "bf16": that.
    """
    if amp is None or amp is False:
        return None
    if amp is True:
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return "fp16"
        return "bf16"
    if amp == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION"):
            return None
        if cpu or _env_flag("ACCELERATE_USE_CPU") or not _gpu_has_bf16():
            return None
        return "bf16"
    if isinstance(amp, str) and amp in AMP_CHOICES:
        return amp
    raise ValueError(f"amp must be a bool or one of {', '.join(repr(c) for c in AMP_CHOICES)}; got {amp!r}")
