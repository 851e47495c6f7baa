"""Ancestral DDPM sampling over every trained timestep (Ho et al. 2020, Alg. 2)."""

from __future__ import annotations

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler
from dalle2_pytorch.diffusion.samplers.base import (
    Denoiser,
    Inpaint,
    SamplerCallback,
    batch_t,
    check_eta,
    initial_noise,
)
from dalle2_pytorch.diffusion.samplers.repaint import check_inpaint, run_steps
from dalle2_pytorch.rng import randn_tensor

__all__ = ["ddpm_sample"]


@torch.no_grad()
def ddpm_sample(
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
    """Ancestral sampling x_{t-1} ~ p(x_{t-1} | x_t) for t = T-1 .. 0 (Ho et al. 2020, Alg. 2).

    The mean is the posterior mean of q(x_{t-1} | x_t, x_0 = x_0 estimate) (DDPM eqs. 6-7); the
    variance is the clipped posterior variance, or the denoiser's learned log-variance (improved
    DDPM, Nichol & Dhariwal 2021, eq. 15) when `ModelPrediction.log_variance` is set. No noise is
    added at t = 0, where the posterior mean is the x_0 estimate itself. T network calls (more with
    RePaint resampling: (T - 1) * resample_times + 1).

    Arguments as in the shared signature (:mod:`.base`), with: `steps` None or T only; `eta` None
    or 1 (ancestral sampling is DDIM's eta = 1 on every timestep); no `spacing`, no `karras`.

    Returns:
        x_0 (b, ...).
    """
    T = scheduler.num_timesteps
    if steps is not None and steps != T:
        raise ValueError(
            f"ddpm runs all {T} trained steps; got steps={steps!r} "
            "(use ddim_sample or another sampler, e.g. dpmpp_2m, for fewer steps)"
        )
    check_eta("ddpm", eta, default=1.0, only=1.0,
              reason="ancestral DDPM always adds the full posterior noise (eta=1); use ddim for another eta")
    if spacing is not None or karras:
        raise ValueError("ddpm visits every trained timestep; it takes no spacing and no karras sigmas")
    device = device if device is not None else scheduler.betas.device
    x = initial_noise(shape, device=device, dtype=dtype, x_T=x_T, generator=generator)
    mask = check_inpaint(inpaint, x)

    def step(x_t, t, t_next, x_self_cond):
        tt = batch_t(t, x_t.shape[0], x_t.device)
        pred = denoise(x_t, tt, x_self_cond)
        mean, _, log_var = scheduler.q_posterior(pred.x_start, x_t, tt)
        if pred.log_variance is not None:
            log_var = pred.log_variance
        if t == 0:
            return mean, pred.x_start
        noise = randn_tensor(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + torch.exp(0.5 * log_var).to(x_t.dtype) * noise, pred.x_start

    times = [(t, t - 1) for t in range(T - 1, -1, -1)]
    return run_steps(step, times, x, scheduler, generator=generator, self_condition=self_condition,
                     inpaint=inpaint, mask=mask, callback=callback)
