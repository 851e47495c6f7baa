"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", arXiv 2302.04867): the B(h) = e^{-h} - 1 variant ("bh2"), order 2, data
prediction, with the corrector UniC.

Notation as in :mod:`.dpm_solver` (alpha, sigma, lambda over the grid; D_i the x_0 estimate at
x_{t_i}). For a step from s = t_{i-1} to t = t_i, h = lambda_t - lambda_s, B(h) = e^{-h} - 1 and

    x_t = (sigma_t / sigma_s) x_s - alpha_t B(h) (D_s + sum_k rho_k Delta_k)        (sec. 3)

* UniP-2 (predictor): Delta_1 = (D_{s1} - D_s) / r_1, r_1 = (lambda_{s1} - lambda_s) / h < 0 for
  the grid point s1 before s, and rho_1 = 1/2 (the paper's simplified order-2 predictor). This is
  DPM-Solver++(2M). The first step has no history and is first order (DDIM).
* UniC (corrector), once the model has been evaluated at the predicted x_t (D_t, no extra call):
  the same formula with Delta = (D_{s1} - D_s) / r_1 and D_t - D_s, weights rho solving the
  order conditions R rho = b with R = [[1, 1], [r_1, 1]], b_1 = g_1 / B(h), b_2 = 2 g_2 / B(h),
  g_1 = (e^{-h} - 1) / (-h) - 1, g_2 = g_1 / (-h) - 1/2 (the paper's phi-function expansion, as in
  the reference implementation and diffusers' ``UniPCMultistepScheduler``). After a first-order
  predictor the corrector is the trapezoid rule (rho = 1/2 on D_t - D_s). The corrected x_t
  replaces the predicted one; D_t, evaluated at the predicted x_t, joins the history, so the
  corrector costs no extra network call. UniC raises the order by one.

The sample after the last grid timestep is the x_0 estimate there (the necessarily first-order
step to sigma = 0), so the corrector at the last grid point would not change the output and is
skipped. `steps` network calls.
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

__all__ = ["unipc", "unic_weights"]


def unic_weights(h: float, r1: float) -> tuple[float, float]:
    """(rho_1, rho_t) of the order-2 UniC with B(h) = e^{-h} - 1, data prediction.

    Solves [[1, 1], [r1, 1]] (rho_1, rho_t) = (b_1, b_2); h > 0, r1 < 0.
    """
    hh = -h
    b_h = math.expm1(hh)
    g1 = b_h / hh - 1.0
    g2 = g1 / hh - 0.5
    b1, b2 = g1 / b_h, 2.0 * g2 / b_h
    rho_1 = (b1 - b2) / (1.0 - r1)
    return rho_1, b1 - rho_1


@torch.no_grad()
def unipc(
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
    """UniPC-2 (bh2, data prediction, predictor UniP-2 + corrector UniC; see the module docstring).

    `steps` network calls. Arguments as in the shared signature (:mod:`.base`); deterministic:
    `eta` None or 0; no inpainting (a multistep solver).

    Returns:
        x_0 (b, ...).
    """
    check_eta("unipc", eta, default=0.0, only=0.0, reason="it is deterministic")
    refuse_inpaint("unipc", inpaint)
    grid = sampling_timesteps(scheduler, steps, spacing=spacing, karras=karras)
    device = device if device is not None else scheduler.betas.device
    x = initial_noise(shape, device=device, dtype=dtype, x_T=x_T, generator=generator)
    alpha, sigma, lam = vp_coefficients(scheduler, grid)
    model = SelfConditioningModel(denoise, self_condition)
    n = len(grid)
    history: list[torch.Tensor] = []  # x_0 estimates at the grid points visited so far
    x_prev = x
    for i, t in enumerate(grid):
        x0 = model(x, t)
        if i == n - 1:
            x = x0  # final first-order step to sigma = 0; a correction of x would be discarded
        else:
            if i > 0:  # UniC: correct x_{t_i} with D_{t_i}, then continue from the corrected sample
                x = _unic(x_prev, x0, history, i, alpha, sigma, lam)
            history.append(x0)
            x_prev = x
            x = _unip(x, history, i, alpha, sigma, lam)
        if callback is not None:
            callback(i, n, t, x, x0)
    return x


def _unip(x: torch.Tensor, history: list[torch.Tensor], i: int, alpha, sigma, lam) -> torch.Tensor:
    """UniP-2 from grid point i (x_s, history[-1] = D_s) to i + 1."""
    j = i + 1
    h = lam[j] - lam[i]
    d = history[-1]
    if len(history) >= 2:
        r1 = (lam[i - 1] - lam[i]) / h
        d = d + (history[-2] - history[-1]) * (0.5 / r1)
    return (sigma[j] / sigma[i]) * x - (alpha[j] * math.expm1(-h)) * d


def _unic(x_s: torch.Tensor, d_t: torch.Tensor, history: list[torch.Tensor], i: int, alpha, sigma, lam) -> torch.Tensor:
    """UniC from grid point i - 1 (x_s, history[-1] = D_s) to i, using D_t = d_t at the predicted x_t.

    Its order matches the predictor that produced x_t: 1 when history holds only D_s."""
    s = i - 1
    h = lam[i] - lam[s]
    d_s = history[-1]
    if len(history) >= 2:
        r1 = (lam[s - 1] - lam[s]) / h
        rho_1, rho_t = unic_weights(h, r1)
        d = d_s + (history[-2] - d_s) * (rho_1 / r1) + (d_t - d_s) * rho_t
    else:
        d = d_s + (d_t - d_s) * 0.5
    return (sigma[i] / sigma[s]) * x_s - (alpha[i] * math.expm1(-h)) * d
