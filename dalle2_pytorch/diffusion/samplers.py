"""Samplers shared by the diffusion prior and every decoder stage.

Every sampler is a function with the same signature::

    sampler(denoise, shape, scheduler, *, steps, eta, cond_scale, generator, device, dtype,
            x_T, self_condition, inpaint, callback) -> x_0

`denoise(x_t, t, x_self_cond, cond_scale) -> ModelPrediction` wraps a network: it applies
classifier-free guidance at `cond_scale`, converts the network's objective to x_0 and post-processes
it (clamping, thresholding). Samplers only hold the update rules:

* :func:`ddpm_sample`: ancestral sampling, Ho et al. 2020, Alg. 2, with fixed (clipped posterior) or
  learned variances (Nichol & Dhariwal 2021).
* :func:`ddim_sample`: Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12, over a
  strided subsequence tau of `steps` timesteps from T-1 down to 0. It makes exactly `steps` network
  calls, uses alpha_bar_t of the timestep actually fed to the network, and `eta` interpolates
  between deterministic DDIM (0) and DDPM-like noise (1). The reference's prior DDIM made steps-1
  calls, read alpha_bar off by one step and fixed eta to 1.
* RePaint inpainting (Lugmayr et al. 2022, Alg. 1) works with both: known pixels are replaced by a
  forward-noised copy of the image at every step, and each step is repeated `resample_times`
  times with exact forward re-noising in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler, extract
from dalle2_pytorch.rng import randn_tensor

__all__ = [
    "Denoiser",
    "Inpaint",
    "ModelPrediction",
    "SamplerCallback",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "sample",
]


@dataclass
class ModelPrediction:
    """What a denoiser returns for x_t at timesteps t.

    Attributes:
        x_start: predicted (post-processed) x_0, same shape as x_t.
        log_variance: learned log-variance of p(x_{t-1} | x_t), broadcastable to x_t; None for the
            fixed (clipped posterior) variance.
    """

    x_start: torch.Tensor
    log_variance: torch.Tensor | None = None


class Denoiser(Protocol):
    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, x_self_cond: torch.Tensor | None
    ) -> ModelPrediction: ...


# callback(step_index, num_steps, t, x, x_start): called after each step with the new sample.
SamplerCallback = Callable[[int, int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class Inpaint:
    """RePaint conditioning.

    Attributes:
        image: (b, c, h, w) known image in the sampler's space (e.g. [-1, 1] pixels).
        mask: (b, 1 or c, h, w) bool or float, True / 1 where the pixel is known and kept.
        resample_times: how many times each step is repeated (RePaint's r; 1 = no resampling).
    """

    image: torch.Tensor
    mask: torch.Tensor
    resample_times: int = 5


def _batch_t(t: int, batch: int, device) -> torch.Tensor:
    return torch.full((batch,), t, device=device, dtype=torch.long)


def _prepare(shape, device, dtype, x_T, generator, inpaint):
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        x = x_T.to(device=device, dtype=dtype)
    else:
        x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    mask = None
    if inpaint is not None:
        if inpaint.image.shape != x.shape:
            raise ValueError(f"inpaint image has shape {tuple(inpaint.image.shape)}, expected {tuple(x.shape)}")
        mask = inpaint.mask.to(device=device, dtype=dtype)
        if mask.ndim != x.ndim or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
            raise ValueError(f"inpaint mask has shape {tuple(mask.shape)}, expected {(x.shape[0], 1, *x.shape[2:])}")
        if inpaint.resample_times < 1:
            raise ValueError(f"resample_times must be >= 1, got {inpaint.resample_times}")
    return x, mask


def _known_at(scheduler, inpaint, t, x, generator):
    image = inpaint.image.to(device=x.device, dtype=x.dtype)
    if t < 0:
        return image
    return scheduler.q_sample(image, _batch_t(t, x.shape[0], x.device), generator=generator)


def _run(step_fn, times, x, scheduler, *, generator, self_condition, inpaint, mask, callback):
    """Shared loop: for each (t, t_next) apply `step_fn`, with RePaint replacement/resampling."""
    x_self_cond = None
    x_start = x
    num_steps = len(times)
    for i, (t, t_next) in enumerate(times):
        # RePaint resamples every step but the last (x_{t_next} would already be the final x_0)
        repeats = inpaint.resample_times if inpaint is not None and t_next >= 0 else 1
        for r in range(repeats):
            if mask is not None:
                x = x * (1 - mask) + _known_at(scheduler, inpaint, t, x, generator) * mask
            x_next, x_start = step_fn(x, t, t_next, x_self_cond if self_condition else None)
            if r < repeats - 1:
                # RePaint: jump back from t_next to t with the exact forward transition
                b = x.shape[0]
                x = scheduler.q_sample_from_to(
                    x_next, _batch_t(t_next, b, x.device), _batch_t(t, b, x.device), generator=generator
                )
            else:
                x = x_next
        x_self_cond = x_start.detach()
        if callback is not None:
            callback(i, num_steps, t, x, x_start)
    if mask is not None:
        x = x * (1 - mask) + inpaint.image.to(device=x.device, dtype=x.dtype) * mask
    return x


@torch.no_grad()
def ddpm_sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    scheduler: NoiseScheduler,
    *,
    steps: int | None = None,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    self_condition: bool = False,
    inpaint: Inpaint | None = None,
    callback: SamplerCallback | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling over all T steps (Ho et al. 2020, Alg. 2).

    Args:
        denoise: the model wrapper (see module docstring).
        shape: output shape (b, ...).
        scheduler: the diffusion the model was trained with.
        steps: must be None or T (use :func:`ddim_sample` for fewer steps).
        eta: unused (ancestral sampling is always stochastic); present for the shared signature.
        generator: source of the initial and per-step noise.
        x_T: optional starting noise (b, ...).
        self_condition: feed the previous x_0 estimate back to the model.
        inpaint: RePaint conditioning.
        callback: called after each step.

    Returns:
        The final sample x_0 (b, ...).
    """
    T = scheduler.num_timesteps
    if steps is not None and steps != T:
        raise ValueError(f"ddpm_sample runs all {T} steps; got steps={steps} (use ddim_sample for fewer)")
    device = device if device is not None else scheduler.betas.device
    x, mask = _prepare(shape, device, dtype, x_T, generator, inpaint)

    def step(x_t, t, t_next, x_self_cond):
        b = x_t.shape[0]
        tt = _batch_t(t, b, x_t.device)
        pred = denoise(x_t, tt, x_self_cond)
        mean, _, log_var = scheduler.q_posterior(pred.x_start, x_t, tt)
        if pred.log_variance is not None:
            log_var = pred.log_variance
        if t == 0:
            return mean, pred.x_start
        noise = randn_tensor(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return mean + torch.exp(0.5 * log_var).to(x_t.dtype) * noise, pred.x_start

    times = [(t, t - 1) for t in range(T - 1, -1, -1)]
    return _run(step, times, x, scheduler, generator=generator, self_condition=self_condition,
                inpaint=inpaint, mask=mask, callback=callback)


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` distinct timesteps from T-1 down to 0, evenly spread (the DDIM subsequence tau, reversed)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sampling steps must be a positive integer, got {steps!r}")
    if steps > num_timesteps:
        raise ValueError(f"cannot sample with {steps} steps from a {num_timesteps}-step diffusion")
    times = torch.linspace(num_timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()
    return times


@torch.no_grad()
def ddim_sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    scheduler: NoiseScheduler,
    *,
    steps: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    self_condition: bool = False,
    inpaint: Inpaint | None = None,
    callback: SamplerCallback | None = None,
) -> torch.Tensor:
    """DDIM sampling with exactly `steps` network calls (Song et al. 2021, eq. 12).

    x_{t'} = sqrt(abar_{t'}) x_0 + sqrt(1 - abar_{t'} - sigma^2) eps + sigma z, with
    sigma = eta sqrt((1 - abar_{t'}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t'}) and abar_{-1} = 1,
    so the last step returns the model's x_0. Learned variances are not used by DDIM.
    Arguments as in :func:`ddpm_sample`; `steps` defaults to T.
    """
    T = scheduler.num_timesteps
    steps = T if steps is None else steps
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    device = device if device is not None else scheduler.betas.device
    x, mask = _prepare(shape, device, dtype, x_T, generator, inpaint)
    seq = ddim_timesteps(T, steps)
    times = list(zip(seq, seq[1:] + [-1]))

    def step(x_t, t, t_next, x_self_cond):
        b = x_t.shape[0]
        tt = _batch_t(t, b, x_t.device)
        pred = denoise(x_t, tt, x_self_cond)
        x_start = pred.x_start
        if t_next < 0:
            return x_start, x_start
        eps = scheduler.predict_noise_from_start(x_t, tt, x_start)
        abar = extract(scheduler.alphas_cumprod, tt, x_t.shape).to(x_t.dtype)
        abar_next = extract(scheduler.alphas_cumprod, _batch_t(t_next, b, x_t.device), x_t.shape).to(x_t.dtype)
        sigma = eta * ((1 - abar_next) / (1 - abar) * (1 - abar / abar_next)).clamp(min=0).sqrt()
        c = (1 - abar_next - sigma**2).clamp(min=0).sqrt()
        x_next = abar_next.sqrt() * x_start + c * eps
        if eta > 0:
            x_next = x_next + sigma * randn_tensor(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        return x_next, x_start

    return _run(step, times, x, scheduler, generator=generator, self_condition=self_condition,
                inpaint=inpaint, mask=mask, callback=callback)


def sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    scheduler: NoiseScheduler,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    **kwargs,
) -> torch.Tensor:
    """Dispatch by name; `sampler=None`: DDPM when `steps` is None or T, DDIM otherwise (the reference's rule).

    `eta` defaults to 0 for DDIM. Other keyword arguments as in :func:`ddpm_sample`.
    """
    T = scheduler.num_timesteps
    if sampler is None:
        sampler = "ddim" if steps is not None and steps != T else "ddpm"
    if sampler == "ddim":
        return ddim_sample(denoise, shape, scheduler, steps=steps, eta=0.0 if eta is None else eta, **kwargs)
    if sampler == "ddpm":
        return ddpm_sample(denoise, shape, scheduler, steps=steps, **kwargs)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of ['ddim', 'ddpm']")


SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def sampler_names() -> list[str]:
    return sorted(SAMPLERS)


def get_sampler(name: str):
    """The sampler function registered under `name`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sampler_names()}")
    return SAMPLERS[name]
