"""Gaussian diffusion process: the forward process q and the DDPM posterior.

Notation and formulas from Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM):
q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)                               (eq. 4)
q(x_{t-1} | x_t, x_0) = N(c1 x_0 + c2 x_t, beta~_t I)                            (eqs. 6-7)
with c1 = beta_t sqrt(abar_{t-1}) / (1 - abar_t), c2 = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t),
beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).
v-parameterisation: Salimans & Ho 2022, "Progressive Distillation", v = sqrt(abar) eps - sqrt(1 - abar) x_0.
P2 weighting: Choi et al. 2022 (arXiv 2204.00227), weight = (k + SNR_t)^-gamma.

The schedule tensors are derived state: they are registered as non-persistent buffers, so they
follow `.to()` but are not written into state dicts (reference checkpoints carry them; the compat
loaders compare and drop them).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from dalle2_pytorch.diffusion.schedules import make_beta_schedule
from dalle2_pytorch.rng import randn_like

__all__ = ["LOSS_FUNCTIONS", "NoiseScheduler", "SCHEDULE_BUFFER_NAMES", "extract"]

SCHEDULE_BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "p2_loss_weight",
)

LOSS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "l1": F.l1_loss,
    "l2": F.mse_loss,
    "huber": F.smooth_l1_loss,
}


def extract(values: torch.Tensor, t: torch.Tensor, x_shape: torch.Size | tuple) -> torch.Tensor:
    """Gathers `values[t]` per batch item and reshapes to (b, 1, ..., 1) to broadcast over `x_shape`."""
    out = values.gather(-1, t.to(values.device).long())
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


class NoiseScheduler(nn.Module):
    """Holds a beta schedule and every formula of the Gaussian diffusion built on it.

    Args:
        beta_schedule: one of cosine, linear, quadratic, sigmoid, jsd.
        timesteps: number of diffusion steps T.
        loss_type: l1, l2 (mean squared error) or huber (smooth L1).
        p2_loss_weight_gamma: P2 weighting exponent; 0 disables it.
        p2_loss_weight_k: P2 weighting offset k.
    """

    def __init__(
        self,
        *,
        beta_schedule: str = "cosine",
        timesteps: int = 1000,
        loss_type: str = "l2",
        p2_loss_weight_gamma: float = 0.0,
        p2_loss_weight_k: float = 1.0,
    ):
        super().__init__()
        if loss_type not in LOSS_FUNCTIONS:
            raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {sorted(LOSS_FUNCTIONS)}")
        self.beta_schedule = beta_schedule
        self.loss_type = loss_type
        self.loss_fn = LOSS_FUNCTIONS[loss_type]
        self.p2_loss_weight_gamma = float(p2_loss_weight_gamma)
        self.p2_loss_weight_k = float(p2_loss_weight_k)

        betas = make_beta_schedule(beta_schedule, timesteps)  # float64
        self.num_timesteps = int(betas.shape[0])
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "log_one_minus_alphas_cumprod": torch.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
            "posterior_variance": posterior_variance,
            # the posterior variance is 0 at t = 0: clamp before the log (the reference's choice, which its
            # checkpoints' learned variances depend on; improved DDPM uses posterior_variance[1] instead)
            "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=1e-20)),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
            "p2_loss_weight": (self.p2_loss_weight_k + alphas_cumprod / (1 - alphas_cumprod))
            ** -self.p2_loss_weight_gamma,
        }
        for name in SCHEDULE_BUFFER_NAMES:
            self.register_buffer(name, buffers[name].to(torch.float32), persistent=False)

    def extra_repr(self) -> str:
        return f"beta_schedule={self.beta_schedule!r}, timesteps={self.num_timesteps}, loss_type={self.loss_type!r}"

    def schedule_buffers(self) -> dict[str, torch.Tensor]:
        """The 13 schedule tensors under the reference's buffer names (for checkpoint comparison)."""
        return {name: getattr(self, name) for name in SCHEDULE_BUFFER_NAMES}

    # ----------------------------------------------------------------------------------- sampling t
    def sample_random_times(
        self, batch: int, *, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform training timesteps: (batch,) int64 in [0, T)."""
        device = device if device is not None else self.betas.device
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device)
        return t.to(device)

    # ----------------------------------------------------------------------------- forward process
    def q_sample(
        self,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draws x_t ~ q(x_t | x_0) (DDPM eq. 4). x_start: (b, ...); t: (b,) int."""
        if noise is None:
            noise = randn_like(x_start, generator)
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start.shape).to(x_start.dtype) * x_start
            + extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape).to(x_start.dtype) * noise
        )

    def q_sample_from_to(
        self,
        x_from: torch.Tensor,
        from_t: torch.Tensor,
        to_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Re-noises x at step `from_t` to a later step `to_t` with the exact forward transition.

        q(x_to | x_from) = N(sqrt(abar_to / abar_from) x_from, (1 - abar_to / abar_from) I). `from_t`
        may be -1 (clean data, abar = 1). Used by RePaint resampling (Lugmayr et al. 2022, Alg. 1);
        the reference used a DDIM-style coefficient here that adds far too little noise.
        """
        if noise is None:
            noise = randn_like(x_from, generator)
        abar_from = self._alphas_cumprod_at(from_t, x_from.shape)
        abar_to = self._alphas_cumprod_at(to_t, x_from.shape)
        ratio = (abar_to / abar_from).to(x_from.dtype)
        return ratio.sqrt() * x_from + (1 - ratio).clamp(min=0).sqrt() * noise

    def _alphas_cumprod_at(self, t: torch.Tensor, x_shape) -> torch.Tensor:
        """abar_t with abar_{-1} = 1, as (b, 1, ..., 1) float32."""
        t = t.to(self.alphas_cumprod.device).long()
        values = extract(self.alphas_cumprod, t.clamp(min=0), x_shape)
        one = torch.ones_like(values)
        return torch.where(t.reshape(values.shape) < 0, one, values)

    # ------------------------------------------------------------------------------- conversions
    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0 = x_t / sqrt(abar_t) - sqrt(1 / abar_t - 1) eps."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape).to(x_t.dtype) * x_t
            - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape).to(x_t.dtype) * noise
        )

    def predict_noise_from_start(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)."""
        return (
            extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape).to(x_t.dtype) * x_t - x_start
        ) / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape).to(x_t.dtype)

    def calculate_v(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, sec. 4)."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_start.shape).to(x_start.dtype) * noise
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape).to(x_start.dtype) * x_start
        )

    def predict_start_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return (
            extract(self.sqrt_alphas_cumprod, t, x_t.shape).to(x_t.dtype) * x_t
            - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t.shape).to(x_t.dtype) * v
        )

    # ---------------------------------------------------------------------------------- posterior
    def q_posterior(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7).

        Returns:
            mean (b, ...), variance (b, 1, ..., 1), log_variance_clipped (b, 1, ..., 1).
        """
        mean = (
            extract(self.posterior_mean_coef1, t, x_t.shape).to(x_t.dtype) * x_start
            + extract(self.posterior_mean_coef2, t, x_t.shape).to(x_t.dtype) * x_t
        )
        variance = extract(self.posterior_variance, t, x_t.shape)
        log_variance = extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    def learned_log_variance(
        self, model_var_values: torch.Tensor, t: torch.Tensor, *, constrain_frac: bool = False
    ) -> torch.Tensor:
        """Interpolated log-variance from a network output in [-1, 1] (improved DDPM eq. 15).

        log sigma^2 = frac log beta_t + (1 - frac) log beta~_t, frac = (v + 1) / 2, optionally passed
        through a sigmoid (`constrain_frac`, the reference's `learned_variance_constrain_frac`).
        """
        min_log = extract(self.posterior_log_variance_clipped, t, model_var_values.shape)
        max_log = extract(torch.log(self.betas), t, model_var_values.shape)
        frac = (model_var_values + 1) / 2
        if constrain_frac:
            frac = torch.sigmoid(frac)
        return frac * max_log + (1 - frac) * min_log

    # ------------------------------------------------------------------------------------ losses
    def p2_reweigh_loss(self, loss: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Multiplies a per-sample loss (b,) by the P2 weight of its timestep."""
        if self.p2_loss_weight_gamma == 0:
            return loss
        return loss * extract(self.p2_loss_weight, t, loss.shape).to(loss.dtype)

