"""Named beta schedules, computed in float64.

* cosine: Nichol & Dhariwal 2021, "Improved DDPM", eq. 17 (s = 0.008, betas clipped at 0.999).
* linear: Ho et al. 2020 (1e-4 … 0.02 at T = 1000), endpoints scaled by 1000 / T as in improved DDPM.
* quadratic, sigmoid: the same scaled endpoints, squared-linear / sigmoid interpolation.
* jsd: beta_t = 1 / (T - t), the schedule of Sohl-Dickstein et al. 2015 (final beta 1).

Unlike the reference package every schedule is clipped to [0, 0.999], so any number of timesteps
is numerically safe: the reference's linear/quadratic/sigmoid schedules exceed 1 for T <= 20 (NaN
losses) and jsd ends at beta = 1 (infinite 1/sqrt(alpha_bar)). For T > 20 the linear, quadratic
and sigmoid schedules are unchanged by the clip; jsd's last beta becomes 0.999.
"""

from __future__ import annotations

import math

import torch

__all__ = ["BETA_SCHEDULES", "MAX_BETA", "make_beta_schedule"]

MAX_BETA = 0.999


def _cosine(timesteps: int, s: float = 0.008) -> torch.Tensor:
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])


def _scaled_endpoints(timesteps: int) -> tuple[float, float]:
    scale = 1000 / timesteps
    return scale * 1e-4, scale * 0.02


def _linear(timesteps: int) -> torch.Tensor:
    start, end = _scaled_endpoints(timesteps)
    return torch.linspace(start, end, timesteps, dtype=torch.float64)


def _quadratic(timesteps: int) -> torch.Tensor:
    start, end = _scaled_endpoints(timesteps)
    return torch.linspace(start**0.5, end**0.5, timesteps, dtype=torch.float64) ** 2


def _sigmoid(timesteps: int) -> torch.Tensor:
    start, end = _scaled_endpoints(timesteps)
    ramp = torch.linspace(-6, 6, timesteps, dtype=torch.float64)
    return torch.sigmoid(ramp) * (end - start) + start


def _jsd(timesteps: int) -> torch.Tensor:
    return 1.0 / torch.linspace(timesteps, 1, timesteps, dtype=torch.float64)


BETA_SCHEDULES = {
    "cosine": _cosine,
    "linear": _linear,
    "quadratic": _quadratic,
    "sigmoid": _sigmoid,
    "jsd": _jsd,
}


def make_beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    """Returns the betas of schedule `name` for `timesteps` steps: (timesteps,) float64 in [0, 0.999]."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta_schedule {name!r}; choose one of {sorted(BETA_SCHEDULES)}")
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")
    return BETA_SCHEDULES[name](timesteps).clamp(0.0, MAX_BETA)
