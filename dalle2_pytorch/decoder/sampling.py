"""Sampling of the cascaded decoder through the shared samplers (`diffusion/samplers/`).

Each stage builds a denoiser closure around its Unet (classifier-free guidance batched into one
forward, objective -> x_0, static or dynamic thresholding, learned variance) and hands it to the
same DDPM / DDIM / RePaint code the prior uses. Unlike the reference, every stage's output is
clamped to the image range, also after DDIM.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn.functional as F

from dalle2_pytorch._helpers import default
from dalle2_pytorch.decoder.lowres import resize_image_to
from dalle2_pytorch.diffusion import Inpaint, ModelPrediction, dynamic_threshold, sample as run_sampler, static_threshold

__all__ = ["DecoderSamplingMixin"]


def _per_stage(value, n: int, name: str) -> tuple:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values but the decoder has {n} unets")
        return tuple(value)
    return (value,) * n


class DecoderSamplingMixin:
    """`sample`, `p_mean_variance` and helpers of :class:`~dalle2_pytorch.decoder.Decoder`."""

    def dynamic_threshold(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's x_0 post-processing: dynamic (Imagen) or static clamp to [-1, 1]."""
        if self.use_dynamic_thres:
            return dynamic_threshold(x, self.dynamic_thres_percentile)
        return static_threshold(x)

    def _model_output(self, index, x, t, cond, cond_scale):
        unet = self.unets[index]
        return unet.forward_with_cond_scale(x, t, cond_scale=cond_scale, **cond)

    def _predict(self, index, x, t, cond, cond_scale, clip_denoised=True):
        """(x_0 estimate, learned log-variance or None) for x_t at t."""
        stage, ns = self.stages[index], self.noise_schedulers[index]
        out = self._model_output(index, x, t, cond, cond_scale)
        if stage.learned_variance:
            pred, var_values = out[:, : self.channels], out[:, self.channels :]
            log_var = ns.learned_log_variance(var_values, t, constrain_frac=self.learned_variance_constrain_frac)
        else:
            pred, log_var = out, None
        x_start = stage.objective.to_x_start(ns, x, t, pred)
        if clip_denoised:
            x_start = self.dynamic_threshold(x_start)
        return x_start, log_var

    @torch.no_grad()
    def p_mean_variance(
        self,
        unet_number: int,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        image_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        lowres_cond_img: torch.Tensor | None = None,
        lowres_noise_level: torch.Tensor | None = None,
        cond_scale: float = 1.0,
        clip_denoised: bool = True,
    ) -> dict[str, torch.Tensor]:
        """One DDPM step's distribution p(x_{t-1} | x_t) for stage `unet_number`.

        Returns a dict with `model_mean`, `posterior_variance`, `posterior_log_variance` and `x_start`.
        """
        index = self.stage_index(unet_number)
        ns = self.noise_schedulers[index]
        cond = dict(image_embed=image_embed, text_encodings=text_encodings, lowres_cond_img=lowres_cond_img,
                    lowres_noise_level=lowres_noise_level)
        x_start, log_var = self._predict(index, x, t, cond, cond_scale, clip_denoised)
        mean, var, post_log_var = ns.q_posterior(x_start, x, t)
        if log_var is not None:
            post_log_var, var = log_var, log_var.exp()
        return {"model_mean": mean, "posterior_variance": var, "posterior_log_variance": post_log_var, "x_start": x_start}

    def _denoiser(self, index: int, cond: dict, cond_scale: float = 1.0):
        def denoise(x_t, t, x_self_cond):
            c = dict(cond, self_cond=x_self_cond) if self.unets[index].self_cond else cond
            x_start, log_var = self._predict(index, x_t, t, c, cond_scale)
            return ModelPrediction(x_start=x_start, log_variance=log_var)

        return denoise

    @contextlib.contextmanager
    def one_unet_in_gpu(self, unet_number: int | None = None, unet=None):
        """Keeps only one Unet on the accelerator while the block runs (others wait on the CPU).

        On a CPU-only decoder this does nothing. Device-agnostic: uses the decoder's current device.
        """
        device = self.device
        if device.type == "cpu":
            yield
            return
        index = self.stage_index(unet_number) if unet is None else list(self.unets).index(unet)
        others = [u for i, u in enumerate(self.unets) if i != index]
        for u in others:
            u.to("cpu")
        try:
            yield
        finally:
            for u in others:
                u.to(device)

    @torch.no_grad()
    def sample(
        self,
        image: torch.Tensor | None = None,
        image_embed: torch.Tensor | None = None,
        text: torch.Tensor | Sequence[str] | None = None,
        text_encodings: torch.Tensor | None = None,
        batch_size: int = 1,
        cond_scale: float | Sequence[float] = 1.0,
        start_at_unet_number: int = 1,
        stop_at_unet_number: int | None = None,
        distributed: bool = False,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
        inpaint_resample_times: int = 5,
        one_unet_in_gpu_at_time: bool = True,
        *,
        generator: torch.Generator | None = None,
        timesteps: int | Sequence[int | None] | None = None,
        callback=None,
    ) -> torch.Tensor:
        """Runs the cascade and returns images (b, c, s, s) in [0, 1].

        Args:
            image: the previous stage's output in [0, 1], needed when `start_at_unet_number` > 1.
            image_embed: (b, d) CLIP image embeddings (required unless unconditional).
            text, text_encodings: text conditioning for text-conditioned Unets.
            batch_size: batch size of unconditional decoders.
            cond_scale: classifier-free guidance scale, one value or one per Unet.
            start_at_unet_number, stop_at_unet_number: run part of the cascade.
            inpaint_image: (b, c, h, w) in [0, 1]; inpaint_mask: (b, h, w) bool, True = keep.
            inpaint_resample_times: RePaint resampling count per step.
            generator: noise source (same seed, same images).
            timesteps: sampling steps per stage (default: each stage's sample_timesteps, else T).
            callback: progress callback `(stage_index, step, num_steps)`.
        """
        n = self.num_unets
        stop = default(stop_at_unet_number, n)
        if not 1 <= start_at_unet_number <= stop <= n:
            raise ValueError(f"need 1 <= start_at_unet_number ({start_at_unet_number}) <= stop_at_unet_number ({stop}) <= {n}")
        scales = _per_stage(cond_scale, n, "cond_scale")
        steps_per_stage = _per_stage(timesteps, n, "timesteps")
        if any(s != 1 for s in scales[start_at_unet_number - 1 : stop]) and not self.can_classifier_guidance:
            raise ValueError("cond_scale != 1 needs a decoder trained with conditioning dropout")
        if image_embed is not None:
            batch_size = image_embed.shape[0]
        elif not self.unconditional and self.unets[start_at_unet_number - 1].cond_on_image_embeds:
            raise ValueError("sample needs image_embed (batch, dim) for a conditional decoder")
        if start_at_unet_number > 1:
            if image is None:
                raise ValueError("start_at_unet_number > 1 needs `image`, the previous stage's output in [0, 1]")
            self._check_image(image, "image")
            batch_size = image.shape[0]
        if inpaint_image is not None or inpaint_mask is not None:
            self._check_inpaint(inpaint_image, inpaint_mask, batch_size)

        img = image
        for index in range(start_at_unet_number - 1, stop):
            stage, unet = self.stages[index], self.unets[index]
            ie, te = self._conditioning(stage, unet, image=None, text=text, image_embed=image_embed,
                                        text_encodings=text_encodings, batch=batch_size)
            cond = dict(image_embed=ie, text_encodings=te)
            if stage.lowres_cond:
                lowres, levels = self.lowres_conds[index](
                    img, target_image_size=stage.image_size, should_blur=False,
                    noise_level=int(self.lowres_noise_sample_level * 1000), generator=generator,
                )
                cond.update(lowres_cond_img=lowres, lowres_noise_level=levels)
            inpaint = None
            if inpaint_image is not None:
                mask = F.interpolate(inpaint_mask[:, None].float(), size=(stage.image_size,) * 2, mode="nearest")
                known = self.normalize_img(resize_image_to(inpaint_image, stage.image_size, downsample_mode=self.lowres_downsample_mode))
                inpaint = Inpaint(image=known.to(self.device), mask=mask.to(self.device), resample_times=inpaint_resample_times)
            steps = default(steps_per_stage[index], stage.sample_timesteps)
            stage_callback = None if callback is None else (lambda i, num, t, x, x0, _s=index: callback(_s, i, num))
            context = self.one_unet_in_gpu(index + 1) if one_unet_in_gpu_at_time else contextlib.nullcontext()
            was_training = unet.training
            unet.eval()
            try:
                with context:
                    x = run_sampler(
                        self._denoiser(index, cond, scales[index]),
                        (batch_size, self.channels, stage.image_size, stage.image_size),
                        self.noise_schedulers[index],
                        steps=steps,
                        eta=self.ddim_sampling_eta,
                        generator=generator,
                        device=self.device,
                        self_condition=unet.self_cond,
                        inpaint=inpaint,
                        callback=stage_callback,
                    )
            finally:
                unet.train(was_training)
            img = self.unnormalize_img(x).clamp(0.0, 1.0)
        return img

    def _check_inpaint(self, inpaint_image, inpaint_mask, batch_size):
        if inpaint_image is None or inpaint_mask is None:
            raise ValueError("inpainting needs both inpaint_image and inpaint_mask")
        self._check_image(inpaint_image, "inpaint_image")
        if inpaint_mask.ndim != 3 or inpaint_mask.shape != (inpaint_image.shape[0], *inpaint_image.shape[-2:]):
            raise ValueError(
                f"inpaint_mask must have shape {(inpaint_image.shape[0], *inpaint_image.shape[-2:])} "
                f"(batch, height, width) to match inpaint_image, got {tuple(inpaint_mask.shape)}"
            )
        if inpaint_image.shape[0] != batch_size:
            raise ValueError(f"inpaint_image batch ({inpaint_image.shape[0]}) != sampling batch ({batch_size})")
