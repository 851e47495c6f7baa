"""Sampling step counts: one name (`steps`), one validation.

The public API calls the number of network evaluations of a sampling run `steps`. The reference's
`timesteps=` argument of `DiffusionPrior.sample` / `p_sample_loop` is accepted as an alias; the
constructors' `timesteps` is the training diffusion length T and `sample_timesteps` the default of
`steps` (both reference names, kept).
"""

from __future__ import annotations

import numbers

__all__ = ["check_steps", "reference_sampler", "resolve_steps"]


def check_steps(steps: object, num_timesteps: int, name: str = "sampling steps") -> int:
    """`steps` as an int in [1, T] (None = T); a clear ValueError otherwise. The one validation of
    step counts: samplers, models and configs call it."""
    if steps is None:
        return num_timesteps
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"{name} must be a positive integer, got {steps!r}")
    if steps > num_timesteps:
        raise ValueError(f"cannot sample with {steps} steps from a {num_timesteps}-step diffusion ({name})")
    return int(steps)


def resolve_steps(steps: int | None, timesteps: int | None, fallback: int | None = None) -> int | None:
    """`steps`, or its alias `timesteps` (not both), else `fallback`."""
    if steps is not None and timesteps is not None and steps != timesteps:
        raise ValueError(f"give either steps or its alias timesteps, not both (got {steps} and {timesteps})")
    value = steps if steps is not None else timesteps
    return fallback if value is None else value


def reference_sampler(steps: int, num_timesteps: int) -> str:
    """The reference's choice when no sampler is named: DDPM at all T steps, DDIM with fewer."""
    return "ddpm" if steps == num_timesteps else "ddim"
