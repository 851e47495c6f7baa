"""The one denoiser builder: a network's raw output -> the sampler's :class:`ModelPrediction`.

Networks predict (noise, x_0 or v, optionally with learned-variance channels); samplers want an
x_0 estimate. ``build_denoiser`` composes, for the prior and for every decoder stage:

1. the model call ``model(x_t, t, self_cond)`` (usually a :class:`~dalle2_pytorch.diffusion.GuidedModel`,
   which applies classifier-free guidance);
2. the split of a learned-variance output into prediction and variance values, turned into a
   log-variance (Nichol & Dhariwal 2021, "Improved DDPM", eq. 15);
3. the objective's conversion to x_0 (:class:`~dalle2_pytorch.diffusion.Objective`);
4. x_0 post-processing (static/dynamic thresholding for images, the l2-norm clamp for embeddings).
"""

from __future__ import annotations

from typing import Callable

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler
from dalle2_pytorch.diffusion.objectives import Objective
from dalle2_pytorch.diffusion.samplers import ModelPrediction

__all__ = ["Model", "build_denoiser", "split_prediction"]

# model(x_t (b, ...), t (b,), self_cond (b, ...) | None) -> network output (b, ...) or (b, 2c, ...)
Model = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def split_prediction(out: torch.Tensor, data_channels: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, variance values) of a network output.

    Args:
        out: (b, c, ...) or, with learned variance, (b, 2c, ...).
        data_channels: c when the network has learned-variance channels (dim 1), else None.
    """
    if data_channels is None:
        return out, None
    if out.shape[1] != 2 * data_channels:
        raise ValueError(f"a learned-variance output must have {2 * data_channels} channels, got {out.shape[1]}")
    return out[:, :data_channels], out[:, data_channels:]


def build_denoiser(
    model: Model,
    scheduler: NoiseScheduler,
    objective: Objective,
    *,
    data_channels: int | None = None,
    constrain_frac: bool = False,
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[..., ModelPrediction]:
    """The sampler-facing ``denoise(x_t, t, x_self_cond) -> ModelPrediction``.

    Args:
        model: the (guided) network call.
        scheduler: the diffusion the network was trained with.
        objective: what the network predicts.
        data_channels: set when the network also outputs learned-variance values (one per data
            channel); the log-variance is then returned with the prediction (DDPM uses it).
        constrain_frac: pass the variance interpolation fraction through a sigmoid (the
            reference's `learned_variance_constrain_frac`).
        postprocess: applied to the x_0 estimate (thresholding, l2-norm clamp).
    """

    def denoise(x_t: torch.Tensor, t: torch.Tensor, x_self_cond: torch.Tensor | None = None) -> ModelPrediction:
        out = model(x_t, t, x_self_cond)
        pred, var_values = split_prediction(out, data_channels)
        log_var = None
        if var_values is not None:
            log_var = scheduler.learned_log_variance(var_values, t, constrain_frac=constrain_frac)
        x_start = objective.to_x_start(scheduler, x_t, t, pred)
        if postprocess is not None:
            x_start = postprocess(x_start)
        return ModelPrediction(x_start=x_start, log_variance=log_var)

    return denoise
