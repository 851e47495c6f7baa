"""The one training loss, shared by the diffusion prior and every decoder stage.

For clean data x_0 (b, ...): draw t ~ U{0..T-1} and eps ~ N(0, I), form x_t = q_sample(x_0, t, eps)
(Ho et al. 2020, Alg. 1), optionally self-condition on a no-grad x_0 estimate half of the time
(Chen et al. 2022, "Analog Bits", sec. 3.2), and regress the network's prediction on the
objective's target with the scheduler's loss (l1 / l2 / huber), averaged per sample, P2-weighted
(Choi et al. 2022) and averaged over the batch. With learned variances the hybrid loss adds the
variational-bound term, which trains only the variance (the mean is detached; Nichol & Dhariwal
2021, "Improved DDPM", sec. 3.1).

The random draws happen in a fixed order (t, eps, self-conditioning coin, then the network's own
dropout draws) from the one `generator`, so a seeded step is reproducible.
"""

from __future__ import annotations

from typing import Callable

import torch

from dalle2_pytorch.diffusion.denoiser import split_prediction
from dalle2_pytorch.diffusion.losses import mean_flat, variational_bound_bits
from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler
from dalle2_pytorch.diffusion.objectives import Objective
from dalle2_pytorch.rng import rand_tensor, randn_tensor

__all__ = ["diffusion_training_loss"]


def diffusion_training_loss(
    model: Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor],
    scheduler: NoiseScheduler,
    objective: Objective,
    x_start: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    self_cond_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    self_cond_postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    prediction_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    data_channels: int | None = None,
    constrain_frac: bool = False,
    vb_loss_weight: float = 0.001,
) -> torch.Tensor:
    """Scalar training loss for clean data `x_start` (b, ...).

    Args:
        model: the training call ``model(x_t, t, self_cond) -> output`` (conditioning and
            conditioning dropout bound in).
        scheduler, objective: the diffusion and what the network predicts.
        generator: source of t, the noise, the self-conditioning coin and the model's draws.
        self_cond_model: for self-conditioned networks, the no-dropout call ``(x_t, t) -> output``
            whose x_0 estimate is fed back (with probability 1/2, without gradient).
        self_cond_postprocess: applied to that estimate, as sampling post-processes x_0.
        prediction_transform: applied to the prediction before the loss (the prior's
            ``training_clamp_l2norm``).
        data_channels: set for learned-variance networks (outputs 2 x data_channels on dim 1).
        constrain_frac, vb_loss_weight: learned-variance options (hybrid loss weight).
    """
    b = x_start.shape[0]
    t = scheduler.sample_random_times(b, device=x_start.device, generator=generator)
    noise = randn_tensor(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
    x_t = scheduler.q_sample(x_start, t, noise)

    self_cond = None
    if self_cond_model is not None and rand_tensor((), generator=generator).item() < 0.5:
        with torch.no_grad():
            estimate, _ = split_prediction(self_cond_model(x_t, t), data_channels)
            self_cond = objective.to_x_start(scheduler, x_t, t, estimate)
            if self_cond_postprocess is not None:
                self_cond = self_cond_postprocess(self_cond)
            self_cond = self_cond.detach()

    pred, var_values = split_prediction(model(x_t, t, self_cond), data_channels)
    if prediction_transform is not None:
        pred = prediction_transform(pred)
    target = objective.target(scheduler, x_start, t, noise)
    loss = mean_flat(scheduler.loss_fn(pred, target, reduction="none"))
    loss = scheduler.p2_reweigh_loss(loss, t).mean()
    if var_values is None:
        return loss
    x0 = objective.to_x_start(scheduler, x_t, t, pred.detach())
    model_mean, _, _ = scheduler.q_posterior(x0, x_t, t)
    log_var = scheduler.learned_log_variance(var_values, t, constrain_frac=constrain_frac)
    vb = variational_bound_bits(scheduler, x_start=x_start, x_t=x_t, t=t, model_mean=model_mean, model_log_variance=log_var)
    return loss + vb_loss_weight * vb.mean()
