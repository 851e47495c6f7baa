"""One stage of the cascaded decoder: its settings and the modules that run it.

:class:`StageSettings` holds everything a stage needs to know (resolution, diffusion length,
objective, variance, sampling defaults, post-processing); :class:`DecoderStage` joins the settings
with the stage's Unet, noise scheduler and low-resolution conditioner and owns the per-stage
operations: the training loss, the denoiser handed to the samplers, one DDPM step's distribution,
and sampling the stage. The :class:`~dalle2_pytorch.decoder.Decoder` registers the modules under
the reference's state-dict keys (`unets.N`, `noise_schedulers.N`, `lowres_conds.N`) and builds a
stage view over them on demand, so swapping a Unet (the trainers' EMA swap) is seen by the stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from dalle2_pytorch._helpers import default
from dalle2_pytorch.diffusion import (
    GuidedModel,
    Inpaint,
    NoiseScheduler,
    Objective,
    build_denoiser,
    diffusion_training_loss,
    dynamic_threshold,
    parse_sampler,
    sample as run_sampler,
    static_threshold,
)
from dalle2_pytorch.diffusion.steps import check_steps, reference_sampler

__all__ = ["DecoderStage", "StageSettings"]


@dataclass(frozen=True)
class StageSettings:
    """Everything the decoder needs to know about one Unet of the cascade.

    Attributes:
        index: 0-based position in the cascade (the public API's `unet_number` is index + 1).
        image_size: output resolution of this stage.
        timesteps: training diffusion steps T.
        sample_timesteps: default sampling steps (None = T).
        beta_schedule: name of the beta schedule.
        objective: what the Unet predicts (noise, x_start or v).
        learned_variance: the Unet also outputs variance-interpolation values (improved DDPM).
        p2_loss_weight_gamma: P2 weighting exponent (0 disables).
        random_crop_size: random crop applied in training (None: none).
        lowres_cond: the stage is conditioned on the previous stage's image.
        channels: channels the Unet diffuses: the image's, or the VAE's latent channels.
        sampler: default sampler name; None = the reference's rule (DDPM at T steps, DDIM with fewer).
        ddim_sampling_eta: DDIM's eta when DDIM is used.
        clip_denoised: threshold x_0 estimates (sampling and self-conditioning); never in latent stages.
        use_dynamic_thres, dynamic_thres_percentile: Imagen dynamic thresholding instead of a clamp.
        learned_variance_constrain_frac, vb_loss_weight: learned-variance options.
        lowres_noise_sample_level: noise-augmentation level of the low-res condition at sampling.
        latent_size: side of the VQGAN-VAE latent map the Unet diffuses in a latent stage (Rombach et
            al. 2022); None for pixel stages.
        auto_normalize_img: pixel stages diffuse images mapped from [0, 1] to [-1, 1].
    """

    index: int
    image_size: int
    timesteps: int
    sample_timesteps: int | None
    beta_schedule: str
    objective: Objective
    learned_variance: bool
    p2_loss_weight_gamma: float
    random_crop_size: int | None
    lowres_cond: bool
    channels: int = 3
    sampler: str | None = None
    ddim_sampling_eta: float = 0.0
    clip_denoised: bool = True
    use_dynamic_thres: bool = False
    dynamic_thres_percentile: float = 0.95
    learned_variance_constrain_frac: bool = False
    vb_loss_weight: float = 0.001
    lowres_noise_sample_level: float = 0.2
    latent_size: int | None = None
    auto_normalize_img: bool = True

    @property
    def unet_number(self) -> int:
        return self.index + 1

    @property
    def latent(self) -> bool:
        """Whether the Unet diffuses a VQGAN-VAE latent map instead of pixels."""
        return self.latent_size is not None

    @property
    def sample_size(self) -> int:
        """Side of what the Unet diffuses: the latent map, or the image."""
        return self.latent_size if self.latent_size is not None else self.image_size


class DecoderStage:
    """A stage's settings (readable as attributes, e.g. ``stage.image_size``) and its modules.

    Args:
        settings: the stage's :class:`StageSettings`.
        unet: its Unet.
        noise_scheduler: the diffusion it was trained with.
        lowres_conditioner: its :class:`~dalle2_pytorch.decoder.lowres.LowresConditioner` (Identity
            for the first stage; ``stage.lowres_cond`` is the settings' flag).
        vae: its frozen VQGAN-VAE for a latent stage, a `NullVQGanVAE` (identity) for a pixel stage.
    """

    def __init__(
        self,
        settings: StageSettings,
        unet: nn.Module,
        noise_scheduler: NoiseScheduler,
        lowres_conditioner: nn.Module,
        vae: nn.Module,
    ):
        self.settings = settings
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.lowres_conditioner = lowres_conditioner
        self.vae = vae

    def __getattr__(self, name: str) -> Any:  # the settings' fields, read through the stage
        if name == "settings":
            raise AttributeError(name)
        return getattr(self.settings, name)

    def __repr__(self) -> str:
        return f"DecoderStage({self.settings})"

    # --------------------------------------------------------------------------- data <-> images
    @torch.no_grad()
    def to_data(self, images: torch.Tensor) -> torch.Tensor:
        """(b, c, s, s) images in [0, 1] -> what the Unet diffuses: [-1, 1] pixels (with
        `auto_normalize_img`) or, in a latent stage, the VAE's pre-quantisation map (no normalisation,
        as the reference)."""
        if self.latent:
            return self.vae.encode(images)
        return images * 2 - 1 if self.auto_normalize_img else images

    @torch.no_grad()
    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_data` (the latent map is quantised and decoded), clamped to [0, 1]."""
        images = self.vae.decode(x) if self.latent else ((x + 1) * 0.5 if self.auto_normalize_img else x)
        return images.clamp(0.0, 1.0)

    @torch.no_grad()
    def encode_lowres(self, lowres: torch.Tensor) -> torch.Tensor:
        """A low-res conditioning image from the conditioner ([-1, 1]) in the Unet's space: unchanged
        for pixel stages; VAE-encoded from [0, 1] for latent stages (as the reference)."""
        return self.vae.encode((lowres + 1) * 0.5) if self.latent else lowres

    # ------------------------------------------------------------------------------ predictions
    def threshold(self, x_start: torch.Tensor) -> torch.Tensor:
        """x_0 post-processing: dynamic (Imagen) thresholding or a clamp to [-1, 1]."""
        if self.use_dynamic_thres:
            return dynamic_threshold(x_start, self.dynamic_thres_percentile)
        return static_threshold(x_start)

    def denoiser(self, cond: dict, cond_scale: float = 1.0, *, clip_denoised: bool | None = None) -> Callable:
        """The samplers' ``denoise(x_t, t, x_self_cond)`` for this stage under conditioning `cond`
        (Unet keyword arguments: image_embed, text_encodings, lowres_cond_img, lowres_noise_level)."""
        clip = default(clip_denoised, self.clip_denoised) and not self.latent  # latent maps are never clamped
        if not (getattr(self.unet, "cond_on_image_embeds", True) or getattr(self.unet, "cond_on_text_encodings", True)):
            # a Unet without CLIP conditioning (the upsamplers): its null branch equals its conditional
            # one, so guidance would only double the work
            cond_scale = 1.0
        return build_denoiser(
            GuidedModel(self.unet, cond_scale, cond),
            self.noise_scheduler,
            self.objective,
            data_channels=self.channels if self.learned_variance else None,
            constrain_frac=self.learned_variance_constrain_frac,
            postprocess=self.threshold if clip else None,
        )

    def p_mean_variance(
        self, x: torch.Tensor, t: torch.Tensor, cond: dict, cond_scale: float = 1.0, clip_denoised: bool = True
    ) -> dict[str, torch.Tensor]:
        """One DDPM step's p(x_{t-1} | x_t): `model_mean`, `posterior_variance`,
        `posterior_log_variance` and `x_start` (learned variances replace the fixed ones)."""
        pred = self.denoiser(cond, cond_scale, clip_denoised=clip_denoised)(x, t, None)
        mean, var, log_var = self.noise_scheduler.q_posterior(pred.x_start, x, t)
        if pred.log_variance is not None:
            log_var, var = pred.log_variance, pred.log_variance.exp()
        return {"model_mean": mean, "posterior_variance": var, "posterior_log_variance": log_var, "x_start": pred.x_start}

    # ---------------------------------------------------------------------------------- training
    def loss(
        self,
        x_start: torch.Tensor,
        cond: dict,
        *,
        image_cond_drop_prob: float,
        text_cond_drop_prob: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Training loss for normalised images x_start (b, c, s, s) (the shared diffusion loss)."""
        unet = self.unet

        def model(x_t, t, self_cond):
            return unet(x_t, t, **cond, self_cond=self_cond, generator=generator,
                        image_cond_drop_prob=image_cond_drop_prob, text_cond_drop_prob=text_cond_drop_prob)

        return diffusion_training_loss(
            model, self.noise_scheduler, self.objective, x_start, generator=generator,
            self_cond_model=(lambda x_t, t: unet(x_t, t, **cond, generator=generator)) if unet.self_cond else None,
            self_cond_postprocess=self.threshold if self.clip_denoised else None,
            data_channels=self.channels if self.learned_variance else None,
            constrain_frac=self.learned_variance_constrain_frac,
            vb_loss_weight=self.vb_loss_weight,
        )

    def lowres_condition(self, image: torch.Tensor, *, generator: torch.Generator | None = None) -> dict:
        """Unet keyword arguments conditioning this stage at sampling time on the previous stage's
        image (b, c, h, w) in [0, 1]: resized, noised at `lowres_noise_sample_level`, not blurred."""
        if not self.lowres_cond:
            return {}
        lowres, levels = self.lowres_conditioner(
            image, target_image_size=self.image_size, should_blur=False,
            noise_level=int(self.lowres_noise_sample_level * 1000), generator=generator,
        )
        return {"lowres_cond_img": self.encode_lowres(lowres), "lowres_noise_level": levels}

    # ---------------------------------------------------------------------------------- sampling
    def resolve_sampling(self, sampler: str | None, steps: int | None) -> tuple[str, int, dict]:
        """(sampler name, steps, sampler options) after the stage's defaults."""
        steps = check_steps(default(steps, default(self.sample_timesteps, self.timesteps)), self.timesteps,
                            f"unet {self.unet_number} steps")
        name = default(sampler, default(self.sampler, reference_sampler(steps, self.timesteps)))
        options = {"eta": self.ddim_sampling_eta} if parse_sampler(name)[0] == "ddim" else {}
        return name, steps, options

    @torch.no_grad()
    def sample(
        self,
        batch_size: int,
        cond: dict,
        *,
        cond_scale: float = 1.0,
        sampler: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
        inpaint: Inpaint | None = None,
        callback: Callable | None = None,
    ) -> torch.Tensor:
        """Samples (b, c, s, s) in the Unet's space (see :meth:`to_images`) for this stage."""
        name, steps, options = self.resolve_sampling(sampler, steps)
        was_training = self.unet.training
        self.unet.eval()
        try:
            return run_sampler(
                self.denoiser(cond, cond_scale),
                (batch_size, self.channels, self.sample_size, self.sample_size),
                self.noise_scheduler,
                sampler=name,
                steps=steps,
                generator=generator,
                device=device,
                self_condition=bool(self.unet.self_cond),
                inpaint=inpaint,
                callback=callback,
                **options,
            )
        finally:
            self.unet.train(was_training)

