"""What every sampler shares: the denoiser protocol, the one sampler signature, option checks.

The shared signature
--------------------
Every sampler in the registry is a function::

    fn(denoise, shape, scheduler, *, steps=None, generator=None, device=None, dtype=torch.float32,
       x_T=None, self_condition=False, inpaint=None, callback=None, eta=None, spacing=None,
       karras=False) -> x_0

* ``denoise(x_t, t, x_self_cond) -> ModelPrediction``: the model wrapper (:class:`Denoiser`). It
  holds everything network-specific: classifier-free guidance (the guidance scale is bound into
  the closure; samplers never see it), objective -> x_0 conversion (:class:`~..objectives.Objective`)
  and x_0 post-processing (static / dynamic thresholding, l2-norm clamp). x_t: (b, ...); t: (b,)
  int64, always a trained timestep in [0, T); x_self_cond: (b, ...) or None.
* ``shape``: output shape (b, ...): (b, d) embeddings for the prior, (b, c, h, w) decoder images.
* ``scheduler``: the :class:`~..noise_scheduler.NoiseScheduler` the model was trained with.
* ``steps``: number of noise levels visited (None = all T trained timesteps). Every sampler but
  heun makes exactly ``steps`` network calls (heun: ``2 * steps - 1``); ddpm accepts only T.
  An int in [1, T]; anything else is a ValueError.
* ``generator``: the only source of randomness (initial noise and every per-step draw).
* ``device`` / ``dtype``: where and in what precision x lives (device default: the scheduler's).
  Solver coefficients are computed in float64 from the scheduler's ᾱ and applied as scalars.
* ``x_T``: optional starting noise (b, ...); drawn from ``generator`` otherwise.
* ``self_condition``: feed the most recent x_0 estimate back to ``denoise`` (None at the first call).
* ``inpaint``: RePaint conditioning (:class:`Inpaint`); ddpm and ddim only (see :data:`INPAINT_SAMPLERS`).
* ``callback(step_index, num_steps, t, x, x_start)``: after each of the ``steps`` steps, with the
  timestep just evaluated, the new sample and the x_0 estimate at ``t``.
* ``eta``: stochasticity, for the samplers where it means something (ddim: 0 deterministic ..
  1 DDPM-like; euler_ancestral / dpmpp_2m_sde: 0 = their ODE counterpart, 1 = default). None takes
  each sampler's default; deterministic solvers accept None or 0, ddpm None or 1.
* ``spacing``: timestep spacing ``linspace`` (default) / ``leading`` / ``trailing`` (see
  :mod:`.spacing`); ``karras``: Karras et al. 2022 sigma spacing instead. ddpm takes neither.

An option a sampler does not support raises ValueError; nothing is silently ignored. Samplers
only use ``ModelPrediction.log_variance`` (learned variance) where the update rule has a variance
to learn: ddpm. Every other sampler ignores it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler
from dalle2_pytorch.diffusion.steps import check_steps  # the one step-count validation (re-exported)
from dalle2_pytorch.rng import randn_tensor

__all__ = [
    "Denoiser",
    "INPAINT_SAMPLERS",
    "Inpaint",
    "ModelPrediction",
    "Sampler",
    "SamplerCallback",
    "SelfConditioningModel",
    "batch_t",
    "check_eta",
    "check_steps",
    "initial_noise",
    "refuse_inpaint",
    "vp_coefficients",
]

# the samplers where RePaint (replacement + exact forward resampling) is exact
INPAINT_SAMPLERS = ("ddpm", "ddim")


@dataclass
class ModelPrediction:
    """What a denoiser returns for x_t at timesteps t.

    Attributes:
        x_start: predicted (post-processed) x_0, same shape as x_t.
        log_variance: learned log-variance of p(x_{t-1} | x_t), broadcastable to x_t; None for the
            fixed (clipped posterior) variance. Used by ddpm only.
    """

    x_start: torch.Tensor
    log_variance: torch.Tensor | None = None


class Denoiser(Protocol):
    """``denoise(x_t, t, x_self_cond) -> ModelPrediction``; x_t (b, ...), t (b,) int64."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, x_self_cond: torch.Tensor | None) -> ModelPrediction: ...


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


class Sampler(Protocol):
    """The one signature every registered sampler has (see the module docstring)."""

    def __call__(
        self,
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
    ) -> torch.Tensor: ...


def batch_t(t: int, batch: int, device: torch.device | str) -> torch.Tensor:
    """The timestep `t` for every item: (batch,) int64."""
    return torch.full((batch,), t, device=device, dtype=torch.long)


def check_eta(name: str, eta: float | None, *, default: float, only: float | None = None, reason: str = "") -> float:
    """Resolves `eta` for sampler `name`: None -> `default`; must be a finite number >= 0.

    Args:
        only: the one value the sampler accepts besides None (0 for a deterministic solver, 1 for
            ancestral DDPM); None = any eta >= 0.
        reason: why the sampler takes no other value (for the error message).
    """
    if eta is None:
        return default
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if only is not None and float(eta) != only:
        raise ValueError(f"the {name} sampler takes no eta={eta!r}: {reason}")
    return float(eta)


def refuse_inpaint(name: str, inpaint: Inpaint | None) -> None:
    """Raises if `inpaint` is given to a sampler where RePaint is not exact."""
    if inpaint is not None:
        raise ValueError(
            f"inpainting (RePaint) is not supported by the {name} sampler: its update is not a single "
            f"Markov step that known pixels can be re-noised into; use one of {', '.join(INPAINT_SAMPLERS)}"
        )


def initial_noise(
    shape: Sequence[int],
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    x_T: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """x_T (checked against `shape`) or fresh standard normal noise from `generator`: (b, ...)."""
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        return x_T.to(device=device, dtype=dtype)
    return randn_tensor(tuple(shape), generator=generator, device=device, dtype=dtype)


def vp_coefficients(scheduler: NoiseScheduler, timesteps: Sequence[int]) -> tuple[list[float], list[float], list[float]]:
    """alpha_t = sqrt(ᾱ_t), sigma_t = sqrt(1 - ᾱ_t) and lambda_t = log(alpha_t / sigma_t) (the
    half log-SNR of Lu et al. 2022, eq. 3) at each timestep, as float64 Python floats."""
    abar = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)[list(timesteps)].tolist()
    alpha = [math.sqrt(a) for a in abar]
    sigma = [math.sqrt(1.0 - a) for a in abar]
    lam = [0.5 * (math.log(a) - math.log1p(-a)) for a in abar]
    return alpha, sigma, lam


class SelfConditioningModel:
    """Calls `denoise` at an integer timestep and remembers its last x_0 estimate.

    With `self_condition`, each call receives the most recent x_0 estimate (None at the first),
    as in Chen et al. 2022 ("Analog Bits"), sec. 3.
    """

    def __init__(self, denoise: Denoiser, self_condition: bool):
        self.denoise = denoise
        self.self_condition = bool(self_condition)
        self.last_x_start: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """x_0 estimate (b, ...) for x (b, ...) at timestep t."""
        x_self_cond = self.last_x_start if self.self_condition else None
        x_start = self.denoise(x, batch_t(t, x.shape[0], x.device), x_self_cond).x_start
        self.last_x_start = x_start.detach()
        return x_start
