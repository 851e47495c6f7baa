"""Diffusion maths shared by the prior and the decoder (no network code)."""

from dalle2_pytorch.diffusion.clip_latents import slerp, text_diff_direction, weighted_mix
from dalle2_pytorch.diffusion.guidance import (
    GuidedModel,
    check_cond_scale,
    classifier_free_guidance,
    dynamic_threshold,
    guided_forward,
    l2norm_clamp,
    static_threshold,
)
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
    parse_sampler,
    sample,
    sampler_info,
    sampler_names,
)
from dalle2_pytorch.diffusion.schedules import BETA_SCHEDULES, make_beta_schedule
from dalle2_pytorch.diffusion.denoiser import build_denoiser, split_prediction
from dalle2_pytorch.diffusion.training_loss import diffusion_training_loss

__all__ = [
    "BETA_SCHEDULES",
    "Denoiser",
    "GuidedModel",
    "Inpaint",
    "LOSS_FUNCTIONS",
    "ModelPrediction",
    "NoiseScheduler",
    "Objective",
    "SAMPLERS",
    "SCHEDULE_BUFFER_NAMES",
    "build_denoiser",
    "check_cond_scale",
    "SPACINGS",
    "SamplerCallback",
    "classifier_free_guidance",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "diffusion_training_loss",
    "discretized_gaussian_log_likelihood",
    "dynamic_threshold",
    "extract",
    "get_sampler",
    "guided_forward",
    "l2norm_clamp",
    "make_beta_schedule",
    "mean_flat",
    "normal_kl",
    "objective_from_flags",
    "parse_sampler",
    "sample",
    "sampler_info",
    "sampler_names",
    "slerp",
    "split_prediction",
    "static_threshold",
    "text_diff_direction",
    "variational_bound_bits",
    "weighted_mix",
]
