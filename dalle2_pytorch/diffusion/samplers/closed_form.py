"""A closed-form check for samplers: Gaussian data, its exact denoiser and its exact ODE solution.

For data x_0 ~ N(mu, s^2) (independently per element) the diffusion q(x_t | x_0) = N(alpha_t x_0,
sigma_t^2) (alpha_t = sqrt(ᾱ_t), sigma_t = sqrt(1 - ᾱ_t)) has Gaussian marginals N(m_t, v_t),
m_t = alpha_t mu, v_t = alpha_t^2 s^2 + sigma_t^2, and everything a sampler needs is known exactly:

* the Bayes-optimal denoiser E[x_0 | x_t] = mu + alpha_t s^2 / v_t (x_t - m_t);
* the probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
  eq. 13) maps quantiles to quantiles: (x_t - m_t) / sqrt(v_t) is constant along a trajectory, so
  its solution from any x_T is affine and exact, with no Monte-Carlo noise.

A deterministic sampler on a grid t_0 > ... > t_{n-1} (ending with the x_0 estimate at t_{n-1})
should approach `ode_reference`: the exact flow from t_0 to t_{n-1}, then the exact denoiser.
A stochastic one should approach `target_moments` in distribution. The tests and
`benchmarks/bench_samplers.py` use this module; a new sampler should pass the same check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler, extract
from dalle2_pytorch.diffusion.objectives import Objective
from dalle2_pytorch.diffusion.samplers.base import Denoiser, ModelPrediction
from dalle2_pytorch.diffusion.samplers.spacing import sampling_timesteps

__all__ = ["GaussianData", "SamplerError", "sampler_error"]


@dataclass(frozen=True)
class GaussianData:
    """x_0 ~ N(mean, std^2) per element."""

    mean: float = 0.3
    std: float = 0.5

    def _abar(self, scheduler: NoiseScheduler, t: int) -> float:
        return float(scheduler.alphas_cumprod[t].double())

    def marginal(self, scheduler: NoiseScheduler, t: int) -> tuple[float, float]:
        """(m_t, sqrt(v_t)) of x_t."""
        ab = self._abar(scheduler, t)
        return math.sqrt(ab) * self.mean, math.sqrt(ab * self.std**2 + 1.0 - ab)

    def x_start(self, scheduler: NoiseScheduler, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t] (b, ...) for x_t (b, ...) at timesteps t (b,), computed in float64."""
        ab = extract(scheduler.alphas_cumprod, t, x_t.shape).double()
        gain = ab.sqrt() * self.std**2 / (ab * self.std**2 + 1 - ab)
        return (self.mean + gain * (x_t.double() - ab.sqrt() * self.mean)).to(x_t.dtype)

    def denoiser(
        self,
        scheduler: NoiseScheduler,
        *,
        objective: Objective = Objective.X_START,
        post: Callable[[torch.Tensor], torch.Tensor] | None = None,
        log_variance: torch.Tensor | float | None = None,
        calls: list | None = None,
    ) -> Denoiser:
        """The exact denoiser, as a network predicting `objective` would be wrapped.

        The exact x_0 is turned into the network's target (eps or v, DDPM eq. 4 / Salimans & Ho
        2022) and back through :meth:`Objective.to_x_start`, then `post` (e.g. thresholding) is
        applied. `log_variance`, if given, is returned as a learned variance. `calls` collects
        (t, x_self_cond) of every call.
        """

        def denoise(x_t: torch.Tensor, t: torch.Tensor, x_self_cond: torch.Tensor | None) -> ModelPrediction:
            if calls is not None:
                calls.append((int(t[0]), None if x_self_cond is None else x_self_cond.clone()))
            x0 = self.x_start(scheduler, x_t, t)
            if objective is not Objective.X_START:
                eps = scheduler.predict_noise_from_start(x_t, t, x0)
                out = eps if objective is Objective.NOISE else scheduler.calculate_v(x0, t, eps)
                x0 = objective.to_x_start(scheduler, x_t, t, out)
            if post is not None:
                x0 = post(x0)
            log_var = None
            if log_variance is not None:
                log_var = torch.as_tensor(log_variance, dtype=x_t.dtype, device=x_t.device).expand_as(x_t)
            return ModelPrediction(x_start=x0, log_variance=log_var)

        return denoise

    def ode_reference(self, scheduler: NoiseScheduler, x_T: torch.Tensor, grid: list[int]) -> torch.Tensor:
        """Exact flow of x_T (b, ...) from grid[0] to grid[-1], then E[x_0 | x]: (b, ...) float64."""
        m0, sd0 = self.marginal(scheduler, grid[0])
        m1, sd1 = self.marginal(scheduler, grid[-1])
        x = m1 + (sd1 / sd0) * (x_T.double() - m0)
        t = torch.full((x.shape[0],), grid[-1], dtype=torch.long)
        return self.x_start(scheduler, x, t)

    def target_moments(self, scheduler: NoiseScheduler, t_last: int) -> tuple[float, float]:
        """Mean and std of E[x_0 | x_{t_last}] for x_{t_last} from the true marginal."""
        ab = self._abar(scheduler, t_last)
        m, sd = self.marginal(scheduler, t_last)
        gain = math.sqrt(ab) * self.std**2 / sd**2
        return self.mean, gain * sd


@dataclass
class SamplerError:
    """Errors of one sampler run on the Gaussian problem.

    Attributes:
        mean_error, std_error: |sample mean - reference mean|, |sample std - reference std|; the
            reference is the exact ODE solution from the same x_T for deterministic samplers
            (no Monte-Carlo noise: x_T is moment-matched to mean 0, std 1, so for a sampler that
            is affine in x_T these are the errors of its output distribution), the exact target
            distribution (`GaussianData.target_moments`) for stochastic ones.
        path_error: max |x - exact ODE solution| (deterministic samplers), else None.
        calls: network calls made.
    """

    mean_error: float
    std_error: float
    path_error: float | None
    calls: int


def sampler_error(
    name: str,
    scheduler: NoiseScheduler,
    steps: int | None,
    *,
    data: GaussianData = GaussianData(),
    batch: int = 4096,
    seed: int = 0,
    **kwargs,
) -> SamplerError:
    """Runs registry sampler `name` on (batch, 1) Gaussian data and measures its errors.

    The run is stochastic when `eta` > 0 is given, or without `eta` when the sampler is stochastic
    by default. Other keyword arguments (eta, spacing, karras, ...) go to the sampler.
    """
    from dalle2_pytorch.diffusion.samplers.registry import sampler_info

    info = sampler_info(name)
    eta = kwargs.get("eta")
    stochastic = info.stochastic if eta is None else eta > 0
    if name == "ddpm":
        grid = list(range(scheduler.num_timesteps - 1, -1, -1))
    else:
        grid = sampling_timesteps(scheduler, steps, spacing=kwargs.get("spacing"), karras=kwargs.get("karras", False))
    calls: list = []
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 1, generator=g, dtype=torch.float64)
    x_T = ((z - z.mean()) / z.std()).float()  # moment-matched: for an affine sampler the errors are exact
    x = info.fn(data.denoiser(scheduler, calls=calls), (batch, 1), scheduler, steps=steps, x_T=x_T, generator=g, **kwargs)
    x = x.double()
    if stochastic:
        mean, std = data.target_moments(scheduler, grid[-1])
        return SamplerError(abs(x.mean().item() - mean), abs(x.std().item() - std), None, len(calls))
    ref = data.ode_reference(scheduler, x_T, grid)
    return SamplerError(
        abs(x.mean().item() - ref.mean().item()),
        abs(x.std().item() - ref.std().item()),
        (x - ref).abs().max().item(),
        len(calls),
    )
