"""Losses: the simple regression loss and the variational bound terms for learned variances.

The VB terms follow Nichol & Dhariwal 2021 ("Improved DDPM", sec. 3.1): KL between Gaussians in
bits for t > 0 and the discretized Gaussian decoder NLL (Ho et al. 2020, eq. 13) at t = 0.
"""

from __future__ import annotations

import math

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler

__all__ = [
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "variational_bound_bits",
]


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim but the batch: (b, ...) -> (b,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor, thres: float = 0.999
) -> torch.Tensor:
    """Log-likelihood of 8-bit data in [-1, 1] under a Gaussian discretised to 256 bins (nats, elementwise)."""
    eps = 1e-12 if x.dtype == torch.float32 else 1e-3
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=eps))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=eps))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -thres,
        log_cdf_plus,
        torch.where(x > thres, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=eps))),
    )


def variational_bound_bits(
    scheduler: NoiseScheduler,
    *,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    model_mean: torch.Tensor,
    model_log_variance: torch.Tensor,
) -> torch.Tensor:
    """Per-sample VB term L_t in bits per dim: KL for t > 0, decoder NLL at t = 0. Returns (b,)."""
    true_mean, _, true_log_variance = scheduler.q_posterior(x_start=x_start, x_t=x_t, t=t)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)) / math.log(2.0)
    nll = -mean_flat(
        discretized_gaussian_log_likelihood(x_start, means=model_mean, log_scales=0.5 * model_log_variance)
    ) / math.log(2.0)
    return torch.where(t == 0, nll, kl)
