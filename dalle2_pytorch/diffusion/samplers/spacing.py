"""Which trained timesteps a sampler visits: timestep spacings and the Karras sigma spacing.

All functions return `steps` distinct trained timesteps, strictly decreasing, as Python ints.
The spacings are diffusers' (``DDIMScheduler.set_timesteps``, ``timestep_spacing``; Lin et al.
2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2), for T trained
steps and n sampling steps:

* ``linspace``: round(linspace(T - 1, 0, n)): from T - 1 down to 0. The default; DDIM's grid
  since this package's first release (so seeded DDIM outputs are unchanged). It equals diffusers'
  except where a value is a tie x.5 that float rounding sends the other way (e.g. T = 1000,
  n = 103: 832.5 -> 832 here, 833 there) and for n = 1 (T - 1 here, 0 there).
* ``leading``: k * (T // n) for k = n - 1 .. 0 (diffusers' ``steps_offset`` = 0): ends at 0 but
  starts below T - 1, so the first step sees pure noise as a partly noised sample.
* ``trailing``: round(T (n - k) / n) - 1 for k = 0 .. n - 1, rounding half to even, computed in
  exact arithmetic: starts at T - 1, ends at round(T / n) - 1 (the last step denoises from there).
  diffusers computes it with a float `arange`, which resolves ties either way and for some (T, n)
  returns n + 1 timesteps; the exact form always returns n.
* Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models", EDM),
  eq. 5 with rho = 7: sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) -
  sigma_max^(1/rho)))^rho, with sigma_t = sqrt((1 - ᾱ_t) / ᾱ_t) and sigma_max / sigma_min those of
  t = T - 1 / t = 0. Each sigma is quantised to the trained timestep nearest in log sigma, so a
  discretely trained network only ever sees the integer timesteps it was trained on; where two
  land on the same timestep the later one moves to the next free timestep below (near t = 0: above),
  so `steps` distinct timesteps are always visited. On a cosine schedule, whose clipped last beta
  spans sigma 160 .. 2e4 over the last 5 timesteps, this crowds most of the grid near t = T - 1.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler
from dalle2_pytorch.diffusion.samplers.base import check_steps

__all__ = [
    "KARRAS_RHO",
    "SPACINGS",
    "ddim_timesteps",
    "karras_timesteps",
    "leading_timesteps",
    "linspace_timesteps",
    "sampling_timesteps",
    "trailing_timesteps",
]

SPACINGS = ("linspace", "leading", "trailing")
KARRAS_RHO = 7.0


def linspace_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """round(linspace(T - 1, 0, steps)), rounding half to even."""
    return torch.linspace(num_timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()


def leading_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """k * (T // steps) for k = steps - 1 down to 0."""
    ratio = num_timesteps // steps
    return [k * ratio for k in range(steps - 1, -1, -1)]


def trailing_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """round(T (steps - k) / steps) - 1 for k = 0 .. steps - 1 (exact, half to even)."""
    return [round(Fraction(num_timesteps * (steps - k), steps)) - 1 for k in range(steps)]


def _make_distinct(times: list[int], num_timesteps: int) -> list[int]:
    """The nearest strictly decreasing sequence in [0, T): later duplicates move down one
    timestep, then (near t = 0) earlier ones move up. Needs len(times) <= T."""
    out = list(times)
    for i in range(1, len(out)):
        out[i] = min(out[i], out[i - 1] - 1)
    out[-1] = max(out[-1], 0)
    for i in range(len(out) - 2, -1, -1):
        out[i] = max(out[i], out[i + 1] + 1)
    assert out[0] <= num_timesteps - 1 and all(a > b for a, b in zip(out, out[1:]))
    return out


def karras_timesteps(scheduler: NoiseScheduler, steps: int, rho: float = KARRAS_RHO) -> list[int]:
    """Karras et al. 2022, eq. 5, quantised to distinct trained timesteps (see module docstring)."""
    T = scheduler.num_timesteps
    abar = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)
    log_sigmas = 0.5 * (torch.log1p(-abar) - torch.log(abar))  # (T,), increasing in t
    if steps == 1:
        return [T - 1]
    inv_max = math.exp(log_sigmas[-1].item() / rho)
    inv_min = math.exp(log_sigmas[0].item() / rho)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    log_targets = rho * torch.log(inv_max + ramp * (inv_min - inv_max))  # (steps,)
    nearest = (log_targets[:, None] - log_sigmas[None, :]).abs().argmin(dim=1).tolist()
    return _make_distinct(nearest, T)


def sampling_timesteps(
    scheduler: NoiseScheduler, steps: int | None, *, spacing: str | None = None, karras: bool = False
) -> list[int]:
    """The decreasing trained timesteps a sampler visits.

    Args:
        scheduler: the trained diffusion (T = scheduler.num_timesteps).
        steps: number of timesteps, an int in [1, T]; None = T.
        spacing: ``linspace`` (default), ``leading`` or ``trailing``.
        karras: use the Karras sigma spacing instead (then `spacing` must be None).

    Returns:
        `steps` distinct ints in [0, T), strictly decreasing.
    """
    T = scheduler.num_timesteps
    steps = check_steps(steps, T)
    if not isinstance(karras, bool):
        raise ValueError(f"karras must be True or False, got {karras!r}")
    if karras:
        if spacing is not None:
            raise ValueError(f"karras=True is itself a spacing (sigma spacing); it cannot be combined with spacing={spacing!r}")
        return karras_timesteps(scheduler, steps)
    spacing = "linspace" if spacing is None else spacing
    if spacing == "linspace":
        return linspace_timesteps(T, steps)
    if spacing == "leading":
        return leading_timesteps(T, steps)
    if spacing == "trailing":
        return trailing_timesteps(T, steps)
    raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """DDIM's default grid: `steps` timesteps from T - 1 down to 0 (``linspace`` spacing)."""
    return linspace_timesteps(num_timesteps, check_steps(steps, num_timesteps))
