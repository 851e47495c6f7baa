"""DPM-Solver++(2M) and its SDE variant (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
Sampling of Diffusion Probabilistic Models", arXiv 2211.01095).

Notation: alpha_t = sqrt(ᾱ_t), sigma_t = sqrt(1 - ᾱ_t), lambda_t = log(alpha_t / sigma_t), over a
grid t_0 > t_1 > ... > t_{n-1} of trained timesteps, h_i = lambda_{t_i} - lambda_{t_{i-1}} > 0,
D_i the x_0 estimate at (x_{t_i}, t_i) ("data prediction").

* ODE, Alg. 2 (multistep second order): the first step is first order (DDIM),
  x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (e^{-h_i} - 1) D,
  with D = D_{i-1} for i = 1 and, for i >= 2, r_i = h_{i-1} / h_i and
  D = (1 + 1 / (2 r_i)) D_{i-1} - 1 / (2 r_i) D_{i-2}.
* SDE: the stochastic counterpart of the data-prediction solver, solving the reverse diffusion
  SDE with the same exponential integrator (diffusers' ``algorithm_type="sde-dpmsolver++"`` with
  the midpoint rule; the `eta` generalisation is k-diffusion's ``sample_dpmpp_2m_sde``): with
  amount eta,
  x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) e^{-eta h_i} x_{t_{i-1}} + alpha_{t_i} (1 - e^{-(1 + eta) h_i}) D
            + sigma_{t_i} sqrt(1 - e^{-2 eta h_i}) z,
  the same D. eta = 0 is exactly the ODE solver; eta = 1 (default) is the SDE solver, whose first
  order step is DDIM with eta = 1 (DDPM's posterior variance).

After the last grid timestep the sample is the x_0 estimate there: the step to sigma = 0
(lambda = inf) is necessarily first order, and its first-order solution is D_{n-1}. So `steps`
network calls, like DDIM.
"""

from __future__ import annotations

import math

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler
from dalle2_pytorch.diffusion.samplers.base import (
    Denoiser,
    Inpaint,
    SamplerCallback,
    SelfConditioningModel,
    check_eta,
    initial_noise,
    refuse_inpaint,
    vp_coefficients,
)
from dalle2_pytorch.diffusion.samplers.spacing import sampling_timesteps
from dalle2_pytorch.rng import randn_tensor

__all__ = ["dpmpp_2m", "dpmpp_2m_sde"]


def _dpmpp_2m_loop(
    denoise: Denoiser,
    shape: tuple[int, ...],
    scheduler: NoiseScheduler,
    *,
    eta: float,
    steps: int | None,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
    x_T: torch.Tensor | None,
    self_condition: bool,
    callback: SamplerCallback | None,
    spacing: str | None,
    karras: bool,
) -> torch.Tensor:
    grid = sampling_timesteps(scheduler, steps, spacing=spacing, karras=karras)
    device = device if device is not None else scheduler.betas.device
    x = initial_noise(shape, device=device, dtype=dtype, x_T=x_T, generator=generator)
    alpha, sigma, lam = vp_coefficients(scheduler, grid)
    model = SelfConditioningModel(denoise, self_condition)
    n = len(grid)
    prev_x0: torch.Tensor | None = None
    for i, t in enumerate(grid):
        x0 = model(x, t)
        if i == n - 1:
            x = x0  # the final first-order step to sigma = 0
        else:
            j = i + 1
            h = lam[j] - lam[i]
            d = x0
            if prev_x0 is not None:
                r = (lam[i] - lam[i - 1]) / h
                d = x0 + (x0 - prev_x0) * (1.0 / (2.0 * r))
            decay = (sigma[j] / sigma[i]) * math.exp(-eta * h)
            x = decay * x - alpha[j] * math.expm1(-(1.0 + eta) * h) * d
            if eta > 0:
                noise_std = sigma[j] * math.sqrt(-math.expm1(-2.0 * eta * h))
                x = x + noise_std * randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        prev_x0 = x0
        if callback is not None:
            callback(i, n, t, x, x0)
    return x


@torch.no_grad()
def dpmpp_2m(
    denoise: Denoiser,
    shape: tuple[int, ...],
    scheduler: NoiseScheduler,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    self_condition: bool = False,
    inpaint: Inpaint | None = None,
    callback: SamplerCallback | None = None,
    eta: float | None = None,
    spacing: str | None = None,
    karras: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(2M), deterministic (Lu et al. 2022, Alg. 2; see the module docstring).

    `steps` network calls. Arguments as in the shared signature (:mod:`.base`); deterministic:
    `eta` None or 0; no inpainting (a multistep solver).

    Returns:
        x_0 (b, ...).
    """
    check_eta("dpmpp_2m", eta, default=0.0, only=0.0,
              reason="it is deterministic (use dpmpp_2m_sde for the stochastic variant)")
    refuse_inpaint("dpmpp_2m", inpaint)
    return _dpmpp_2m_loop(denoise, shape, scheduler, eta=0.0, steps=steps, generator=generator, device=device,
                          dtype=dtype, x_T=x_T, self_condition=self_condition, callback=callback,
                          spacing=spacing, karras=karras)


@torch.no_grad()
def dpmpp_2m_sde(
    denoise: Denoiser,
    shape: tuple[int, ...],
    scheduler: NoiseScheduler,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    self_condition: bool = False,
    inpaint: Inpaint | None = None,
    callback: SamplerCallback | None = None,
    eta: float | None = None,
    spacing: str | None = None,
    karras: bool = False,
) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (see the module docstring; diffusers' ``sde-dpmsolver++``, midpoint rule).

    `steps` network calls. Arguments as in the shared signature (:mod:`.base`); `eta` >= 0 is the
    amount of noise (default 1: the reverse SDE; 0: dpmpp_2m). No inpainting.

    Returns:
        x_0 (b, ...).
    """
    eta = check_eta("dpmpp_2m_sde", eta, default=1.0)
    refuse_inpaint("dpmpp_2m_sde", inpaint)
    return _dpmpp_2m_loop(denoise, shape, scheduler, eta=eta, steps=steps, generator=generator, device=device,
                          dtype=dtype, x_T=x_T, self_condition=self_condition, callback=callback,
                          spacing=spacing, karras=karras)
