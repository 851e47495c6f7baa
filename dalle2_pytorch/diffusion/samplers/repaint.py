"""The step loop of the single-step samplers (ddpm, ddim), with RePaint inpainting.

RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
Models", Alg. 1): before every step the known pixels of x_t are replaced by a forward-noised copy
of the known image, q(x_t | x_0); each step is repeated `resample_times` times, jumping back from
x_{t'} to x_t with the exact forward transition q(x_t | x_{t'}) in between. Both operations are
exact only for samplers whose step maps x_t to x_{t'} alone, which is why inpainting lives here.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler
from dalle2_pytorch.diffusion.samplers.base import Inpaint, SamplerCallback, batch_t

__all__ = ["StepFn", "check_inpaint", "run_steps"]

# step(x_t, t, t_next, x_self_cond) -> (x_{t_next}, x_0 estimate); t_next = -1 means "to x_0"
StepFn = Callable[[torch.Tensor, int, int, "torch.Tensor | None"], "tuple[torch.Tensor, torch.Tensor]"]


def check_inpaint(inpaint: Inpaint | None, x: torch.Tensor) -> torch.Tensor | None:
    """Validates `inpaint` against the sample x (b, c, h, w); returns its mask in x's dtype or None."""
    if inpaint is None:
        return None
    if inpaint.image.shape != x.shape:
        raise ValueError(f"inpaint image has shape {tuple(inpaint.image.shape)}, expected {tuple(x.shape)}")
    mask = inpaint.mask.to(device=x.device, dtype=x.dtype)
    if mask.ndim != x.ndim or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
        raise ValueError(f"inpaint mask has shape {tuple(mask.shape)}, expected {(x.shape[0], 1, *x.shape[2:])}")
    if inpaint.resample_times < 1:
        raise ValueError(f"resample_times must be >= 1, got {inpaint.resample_times}")
    return mask


def _known_at(scheduler: NoiseScheduler, inpaint: Inpaint, t: int, x: torch.Tensor, generator) -> torch.Tensor:
    image = inpaint.image.to(device=x.device, dtype=x.dtype)
    if t < 0:
        return image
    return scheduler.q_sample(image, batch_t(t, x.shape[0], x.device), generator=generator)


def run_steps(
    step_fn: StepFn,
    times: Sequence[tuple[int, int]],
    x: torch.Tensor,
    scheduler: NoiseScheduler,
    *,
    generator: torch.Generator | None,
    self_condition: bool,
    inpaint: Inpaint | None,
    mask: torch.Tensor | None,
    callback: SamplerCallback | None,
) -> torch.Tensor:
    """Applies `step_fn` for each (t, t_next) in `times`, with RePaint replacement / resampling.

    x: (b, ...) the starting sample x_{times[0][0]}. Returns the final sample (b, ...).
    """
    x_self_cond = None
    num_steps = len(times)
    for i, (t, t_next) in enumerate(times):
        # RePaint resamples every step but the last (x_{t_next} would already be the final x_0)
        repeats = inpaint.resample_times if inpaint is not None and t_next >= 0 else 1
        for r in range(repeats):
            if mask is not None:
                x = x * (1 - mask) + _known_at(scheduler, inpaint, t, x, generator) * mask
            x_next, x_start = step_fn(x, t, t_next, x_self_cond if self_condition else None)
            if r < repeats - 1:
                b = x.shape[0]
                x = scheduler.q_sample_from_to(
                    x_next, batch_t(t_next, b, x.device), batch_t(t, b, x.device), generator=generator
                )
            else:
                x = x_next
        x_self_cond = x_start.detach()
        if callback is not None:
            callback(i, num_steps, t, x, x_start)
    if mask is not None:
        x = x * (1 - mask) + inpaint.image.to(device=x.device, dtype=x.dtype) * mask
    return x
