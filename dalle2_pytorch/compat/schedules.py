"""Checking the noise-schedule tensors stored in reference checkpoints against ours.

Our schedules are derived from the config (non-persistent buffers). A reference file's buffers must
agree, or the config is wrong (e.g. another beta schedule). One expected difference: the reference
did not clip linear / quadratic / sigmoid betas for T <= 20 nor jsd's final beta of 1, which we clip
at 0.999 (`diffusion/schedules.py`). Such files load with a warning.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import torch

from dalle2_pytorch.compat.keys import check_tensors_close
from dalle2_pytorch.diffusion import NoiseScheduler
from dalle2_pytorch.diffusion.schedules import MAX_BETA

__all__ = ["check_schedule_buffers"]


def check_schedule_buffers(scheduler: NoiseScheduler, file_buffers: Mapping[str, torch.Tensor], context: str) -> None:
    """Raises `TensorValueMismatchError` unless the file's schedule equals ours (up to our beta clip)."""
    if not file_buffers:
        return
    ours = {k: v for k, v in scheduler.schedule_buffers().items() if k in file_buffers}
    try:
        check_tensors_close(ours, file_buffers, context)
    except ValueError:
        betas = file_buffers.get("betas")
        if betas is None or not bool((betas > MAX_BETA).any()):
            raise
        check_tensors_close({"betas": scheduler.betas}, {"betas": betas.clamp(max=MAX_BETA)}, context)
        warnings.warn(
            f"{context}: the file's betas exceed {MAX_BETA} (unclipped reference schedule); "
            "using the clipped schedule, which differs only at those steps",
            UserWarning,
            stacklevel=3,
        )
