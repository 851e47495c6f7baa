"""Euler, Euler ancestral and Heun in the sigma parametrisation of Karras et al. 2022
("Elucidating the Design Space of Diffusion-Based Generative Models", EDM).

EDM writes the VP diffusion as x~ = x / sqrt(ᾱ) = x_0 + sigma~ eps with sigma~_t = sqrt((1 - ᾱ_t) / ᾱ_t),
whose probability-flow ODE is dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~ = eps (eq. 3 with
s(t) = 1, sigma(t) = t), D the x_0 estimate. The samplers step that ODE (or, for the ancestral one,
its SDE) from sigma~_{t_i} to sigma~_{t_{i+1}} over a grid of trained timesteps (every spacing of
:mod:`.spacing`, or the Karras sigma spacing with ``karras=True``, quantised to trained
timesteps so the network only sees integer t it was trained on), and map back with
x = sqrt(ᾱ) x~. With d_i = (x~_i - D_i) / sigma~_i = (x_i - alpha_i D_i) / sigma_i (alpha, sigma: VP
sqrt(ᾱ), sqrt(1 - ᾱ)) the updates are evaluated as combinations of D and d, which keeps them exact
in float32 even where 1 / sqrt(ᾱ) is huge:

* euler (Alg. 1 without the second-order correction): x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) d_i = D_i +
  sigma~_{i+1} d_i. Identical to deterministic DDIM on the same grid.
* heun (Alg. 1 deterministic, S_churn = 0): Euler to x~', d' at (x~', sigma~_{i+1}), then
  x~_{i+1} = x~_i + (sigma~_{i+1} - sigma~_i) (d_i + d') / 2. Two calls per step.
* euler_ancestral (k-diffusion's ``sample_euler_ancestral``): split sigma~_{i+1} into
  sigma_up = min(sigma~_{i+1}, eta sqrt(sigma~_{i+1}^2 (sigma~_i^2 - sigma~_{i+1}^2) / sigma~_i^2)) and
  sigma_down = sqrt(sigma~_{i+1}^2 - sigma_up^2); x~_{i+1} = D_i + sigma_down d_i + sigma_up z. With
  eta = 1 this is DDIM with eta = 1 (same mean and variance), with eta = 0 it is euler.

As in every sampler here, after the last grid timestep the result is the x_0 estimate there (the
Euler step to sigma~ = 0, the last step of Alg. 1 / 2). Network calls: `steps` for euler and
euler_ancestral, 2 * steps - 1 for heun.

Caveat (measured in benchmarks/README.md): a cosine schedule's clipped last beta puts sigma~_{T-1}
at about 2e4. Heun's first step from there spans almost that whole range and its trapezoid rule is
poor over it (std error 6.9 at 10 steps on Gaussian data). It still converges at second order, and
it is accurate for schedules with a moderate sigma~_max (linear: 157) or grids starting lower.
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

__all__ = ["euler", "euler_ancestral", "heun"]


def _karras_loop(
    method: str,
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
    alpha, sigma, _ = vp_coefficients(scheduler, grid)
    sig = [s / a for a, s in zip(alpha, sigma)]  # EDM sigma~ of each grid timestep
    model = SelfConditioningModel(denoise, self_condition)
    n = len(grid)
    for i, t in enumerate(grid):
        x0 = model(x, t)
        if i == n - 1:
            x = x0
        else:
            j = i + 1
            d = (x - alpha[i] * x0) * (1.0 / sigma[i])  # dx~/dsigma~ = eps estimate
            if method == "euler":
                x = alpha[j] * x0 + sigma[j] * d
            elif method == "heun":
                x_pred = alpha[j] * x0 + sigma[j] * d
                x0_pred = model(x_pred, grid[j])
                d_pred = (x_pred - alpha[j] * x0_pred) * (1.0 / sigma[j])
                # alpha_j (x~_i + (sig_j - sig_i) (d + d') / 2), rewritten around D_i = x0
                x = alpha[j] * x0 + sigma[j] * 0.5 * (d + d_pred) + (0.5 * alpha[j] * sig[i]) * (d - d_pred)
            else:  # ancestral
                s, s_next = sig[i], sig[j]
                s_up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
                s_down = math.sqrt(s_next**2 - s_up**2)
                x = alpha[j] * x0 + (alpha[j] * s_down) * d
                if s_up > 0:
                    z = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                    x = x + (alpha[j] * s_up) * z
        if callback is not None:
            callback(i, n, t, x, x0)
    return x


@torch.no_grad()
def euler(
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
    """Euler's method on the EDM probability-flow ODE (Karras et al. 2022, eq. 3; module docstring).

    `steps` network calls. Arguments as in the shared signature (:mod:`.base`); deterministic:
    `eta` None or 0; no inpainting.

    Returns:
        x_0 (b, ...).
    """
    check_eta("euler", eta, default=0.0, only=0.0, reason="it is deterministic (use euler_ancestral for noise)")
    refuse_inpaint("euler", inpaint)
    return _karras_loop("euler", denoise, shape, scheduler, eta=0.0, steps=steps, generator=generator,
                        device=device, dtype=dtype, x_T=x_T, self_condition=self_condition, callback=callback,
                        spacing=spacing, karras=karras)


@torch.no_grad()
def euler_ancestral(
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
    """Euler ancestral sampling in the EDM sigma parametrisation (module docstring).

    `steps` network calls. Arguments as in the shared signature (:mod:`.base`); `eta` >= 0 scales
    the ancestral noise (default 1; 0 is euler). No inpainting.

    Returns:
        x_0 (b, ...).
    """
    eta = check_eta("euler_ancestral", eta, default=1.0)
    refuse_inpaint("euler_ancestral", inpaint)
    return _karras_loop("ancestral", denoise, shape, scheduler, eta=eta, steps=steps, generator=generator,
                        device=device, dtype=dtype, x_T=x_T, self_condition=self_condition, callback=callback,
                        spacing=spacing, karras=karras)


@torch.no_grad()
def heun(
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
    """Heun's second-order method on the EDM probability-flow ODE (Karras et al. 2022, Alg. 1).

    2 * steps - 1 network calls (`steps` noise levels; one callback per level). Arguments as in the
    shared signature (:mod:`.base`); deterministic: `eta` None or 0; no inpainting.

    Returns:
        x_0 (b, ...).
    """
    check_eta("heun", eta, default=0.0, only=0.0, reason="it is deterministic (Karras et al.'s S_churn = 0)")
    refuse_inpaint("heun", inpaint)
    return _karras_loop("heun", denoise, shape, scheduler, eta=0.0, steps=steps, generator=generator,
                        device=device, dtype=dtype, x_T=x_T, self_condition=self_condition, callback=callback,
                        spacing=spacing, karras=karras)
