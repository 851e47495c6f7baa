"""Diffusion maths shared by the prior and the decoder (no network code)."""

from dalle2_pytorch.diffusion.guidance import classifier_free_guidance, dynamic_threshold, l2norm_clamp, static_threshold
from dalle2_pytorch.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl, variational_bound_bits
from dalle2_pytorch.diffusion.noise_scheduler import LOSS_FUNCTIONS, SCHEDULE_BUFFER_NAMES, NoiseScheduler, extract
from dalle2_pytorch.diffusion.objectives import Objective, objective_from_flags
from dalle2_pytorch.diffusion.samplers import (
    SAMPLERS,
    SPACINGS,
    Denoiser,
    Inpaint,
    ModelPrediction,
    SamplerCallback,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    get_sampler,
    sample,
    sampler_info,
    sampler_names,
)
from dalle2_pytorch.diffusion.schedules import BETA_SCHEDULES, make_beta_schedule

__all__ = [
    "BETA_SCHEDULES",
    "Denoiser",
    "Inpaint",
    "LOSS_FUNCTIONS",
    "ModelPrediction",
    "NoiseScheduler",
    "Objective",
    "SAMPLERS",
    "SCHEDULE_BUFFER_NAMES",
    "SPACINGS",
    "SamplerCallback",
    "classifier_free_guidance",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "discretized_gaussian_log_likelihood",
    "dynamic_threshold",
    "extract",
    "get_sampler",
    "l2norm_clamp",
    "make_beta_schedule",
    "mean_flat",
    "normal_kl",
    "objective_from_flags",
    "sample",
    "sampler_info",
    "sampler_names",
    "static_threshold",
    "variational_bound_bits",
]
