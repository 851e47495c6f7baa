"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), any eta, any timestep grid."""

from __future__ import annotations

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler, extract
from dalle2_pytorch.diffusion.samplers.base import (
    Denoiser,
    Inpaint,
    SamplerCallback,
    batch_t,
    check_eta,
    initial_noise,
)
from dalle2_pytorch.diffusion.samplers.repaint import check_inpaint, run_steps
from dalle2_pytorch.diffusion.samplers.spacing import sampling_timesteps
from dalle2_pytorch.rng import randn_tensor

__all__ = ["ddim_sample"]


@torch.no_grad()
def ddim_sample(
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
    """DDIM with exactly `steps` network calls (Song et al. 2021, eq. 12).

    x_{t'} = sqrt(ᾱ_{t'}) x_0 + sqrt(1 - ᾱ_{t'} - s^2) eps + s z, with
    s = eta sqrt((1 - ᾱ_{t'}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t'}) (eq. 16), eps the noise implied by
    the x_0 estimate, over the grid of :func:`~.spacing.sampling_timesteps`; the last step returns
    the x_0 estimate at the last grid timestep. ᾱ is that of the timestep actually fed to the
    network (the reference's prior read it one step off). eta = 0 (default) is deterministic;
    eta = 1 on every timestep is DDPM's posterior variance. Learned variances are ignored. RePaint
    inpainting as in ddpm ((steps - 1) * resample_times + 1 calls).

    Arguments as in the shared signature (:mod:`.base`); `eta` >= 0, default 0.

    Returns:
        x_0 (b, ...).
    """
    eta = check_eta("ddim", eta, default=0.0)
    seq = sampling_timesteps(scheduler, steps, spacing=spacing, karras=karras)
    device = device if device is not None else scheduler.betas.device
    x = initial_noise(shape, device=device, dtype=dtype, x_T=x_T, generator=generator)
    mask = check_inpaint(inpaint, x)
    times = list(zip(seq, seq[1:] + [-1]))

    def step(x_t, t, t_next, x_self_cond):
        b = x_t.shape[0]
        tt = batch_t(t, b, x_t.device)
        x_start = denoise(x_t, tt, x_self_cond).x_start
        if t_next < 0:
            return x_start, x_start
        eps = scheduler.predict_noise_from_start(x_t, tt, x_start)
        abar = extract(scheduler.alphas_cumprod, tt, x_t.shape).to(x_t.dtype)
        abar_next = extract(scheduler.alphas_cumprod, batch_t(t_next, b, x_t.device), x_t.shape).to(x_t.dtype)
        sigma = eta * ((1 - abar_next) / (1 - abar) * (1 - abar / abar_next)).clamp(min=0).sqrt()
        c = (1 - abar_next - sigma**2).clamp(min=0).sqrt()
        x_next = abar_next.sqrt() * x_start + c * eps
        if eta > 0:
            x_next = x_next + sigma * randn_tensor(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return x_next, x_start

    return run_steps(step, times, x, scheduler, generator=generator, self_condition=self_condition,
                     inpaint=inpaint, mask=mask, callback=callback)
