"""Decoder: a cascade of Unets that turns CLIP image embeddings into images.

unCLIP, Ramesh et al. 2022, sec. 2.1: a GLIDE-style 64x64 diffusion decoder conditioned on the CLIP
image embedding (projected and added to the timestep embedding, and as extra context tokens) and
optionally on the caption's text encodings, followed by diffusion upsamplers conditioned on the
previous stage's image. Classifier-free guidance is trained by dropping the image embedding 10% and
the text 50% of the time.

Per-Unet settings live in one :class:`DecoderStage` per stage. The constructor keeps the reference
1.15.6 signature, where per-Unet options are given as scalars or tuples, and converts once.
Sampling (the cascade, guidance, DDPM/DDIM through the shared samplers, inpainting) is in
`decoder/sampling.py`.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import nn

from dalle2_pytorch._helpers import cast_tuple, default
from dalle2_pytorch.decoder.lowres import LowresConditioner, resize_image_to
from dalle2_pytorch.decoder.sampling import DecoderSamplingMixin
from dalle2_pytorch.decoder.stage import DecoderStage
from dalle2_pytorch.decoder.unet import Unet
from dalle2_pytorch.diffusion import NoiseScheduler, mean_flat, objective_from_flags, variational_bound_bits
from dalle2_pytorch.prior.diffusion_prior import _wrap_clip
from dalle2_pytorch.rng import rand_tensor, randn_tensor

__all__ = ["Decoder"]


def _per_unet(value: Any, n: int, name: str, fill: Any = None) -> tuple:
    """A scalar repeated n times, or a sequence of length <= n padded with `fill` (if given)."""
    if isinstance(value, (list, tuple)):
        value = tuple(value)
        if fill is not None and len(value) < n:
            value = value + (fill,) * (n - len(value))
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values but the decoder has {n} unets")
        return value
    if fill is not None:
        return (value,) + (fill,) * (n - 1)
    return (value,) * n


class Decoder(DecoderSamplingMixin, nn.Module):
    """The cascaded diffusion decoder (reference-compatible constructor; see reference-inventory §1.5).

    Args (main ones):
        unet: one Unet or a sequence (low -> high resolution).
        clip: CLIP adapter used when image embeddings / text encodings are not given.
        image_size / image_sizes: final size, or one size per Unet (exactly one of them).
        timesteps, sample_timesteps, beta_schedule, predict_x_start, predict_v, learned_variance,
            p2_loss_weight_gamma, random_crop_sizes: scalars or per-Unet tuples. `learned_variance`
            given as one bool applies to the first Unet only (reference behaviour); the default beta
            schedule is cosine except linear for the last of several Unets.
        image_cond_drop_prob, text_cond_drop_prob: classifier-free guidance dropout.
        use_blur_for_lowres_cond, use_noise_for_lowres_cond, blur_*, lowres_noise_sample_level,
            lowres_downsample_first: low-resolution conditioning of upsamplers.
        use_dynamic_thres, dynamic_thres_percentile: Imagen dynamic thresholding of x_0.
        ddim_sampling_eta: eta for stages sampled with fewer steps than they were trained with.
        lowres_downsample_mode: 'antialias' (default) or 'nearest' (reference) downsampling.
    Latent (VQGAN) stages are not supported: `vae` must be empty.
    """

    def __init__(
        self,
        unet: Unet | Sequence[Unet],
        *,
        clip: Any = None,
        image_size: int | None = None,
        channels: int = 3,
        vae: Sequence[Any] = tuple(),
        timesteps: int | Sequence[int] = 1000,
        sample_timesteps: int | None | Sequence[int | None] = None,
        image_cond_drop_prob: float = 0.1,
        text_cond_drop_prob: float = 0.5,
        loss_type: str = "l2",
        beta_schedule: str | Sequence[str] | None = None,
        predict_x_start: bool | Sequence[bool] = False,
        predict_v: bool | Sequence[bool] = False,
        predict_x_start_for_latent_diffusion: bool = False,
        image_sizes: Sequence[int] | None = None,
        random_crop_sizes: int | None | Sequence[int | None] = None,
        use_noise_for_lowres_cond: bool = False,
        use_blur_for_lowres_cond: bool = True,
        lowres_downsample_first: bool = True,
        blur_prob: float = 0.5,
        blur_sigma: float | tuple[float, float] = 0.6,
        blur_kernel_size: int | tuple[int, int] = 3,
        lowres_noise_sample_level: float = 0.2,
        clip_denoised: bool = True,
        clip_x_start: bool = True,
        clip_adapter_overrides: dict | None = None,
        learned_variance: bool | Sequence[bool] = True,
        learned_variance_constrain_frac: bool = False,
        vb_loss_weight: float = 0.001,
        unconditional: bool = False,
        auto_normalize_img: bool = True,
        use_dynamic_thres: bool = False,
        dynamic_thres_percentile: float = 0.95,
        p2_loss_weight_gamma: float | Sequence[float] = 0.0,
        p2_loss_weight_k: float = 1,
        ddim_sampling_eta: float = 0.0,
        lowres_downsample_mode: str = "antialias",
    ):
        super().__init__()
        if len(tuple(vae)) > 0:
            raise NotImplementedError("latent (VQGAN-VAE) decoder stages are not supported; pass vae=()")
        unets = tuple(unet) if isinstance(unet, (list, tuple)) else (unet,)
        if len(unets) == 0 or not all(isinstance(u, Unet) for u in unets):
            raise TypeError("unet must be a dalle2_pytorch Unet or a non-empty sequence of Unets")
        n = len(unets)
        self.unconditional = unconditional
        self.clip = None if unconditional else _wrap_clip(clip, dict(clip_adapter_overrides or {}))
        if self.clip is not None:
            self.clip.requires_grad_(False)
        self.channels = channels

        sizes = self._resolve_image_sizes(image_size, image_sizes, n)
        timesteps_t = _per_unet(timesteps, n, "timesteps")
        schedules = _per_unet(beta_schedule, n, "beta_schedule") if beta_schedule is not None else (
            ("cosine",) * (n - 1) + ("linear",) if n > 1 else ("cosine",)
        )
        objectives = [objective_from_flags(x, v) for x, v in zip(
            _per_unet(predict_x_start, n, "predict_x_start"), _per_unet(predict_v, n, "predict_v"))]
        learned = _per_unet(learned_variance, n, "learned_variance", fill=False)
        crops = _per_unet(random_crop_sizes, n, "random_crop_sizes")
        if crops[0] is not None:
            raise ValueError("random_crop_sizes must be None for the first unet")
        self.stages: tuple[DecoderStage, ...] = tuple(
            DecoderStage(
                index=i,
                image_size=sizes[i],
                timesteps=int(timesteps_t[i]),
                sample_timesteps=_per_unet(sample_timesteps, n, "sample_timesteps")[i],
                beta_schedule=schedules[i],
                objective=objectives[i],
                learned_variance=bool(learned[i]),
                p2_loss_weight_gamma=float(_per_unet(p2_loss_weight_gamma, n, "p2_loss_weight_gamma")[i]),
                random_crop_size=crops[i],
                lowres_cond=i > 0,
            )
            for i in range(n)
        )
        for stage in self.stages:
            if stage.sample_timesteps is not None and not 1 <= stage.sample_timesteps <= stage.timesteps:
                raise ValueError(
                    f"unet {stage.unet_number}: sample_timesteps must be in [1, {stage.timesteps}], got {stage.sample_timesteps}"
                )

        self.unets = nn.ModuleList(self._cast_unet(u, s, use_noise_for_lowres_cond) for u, s in zip(unets, self.stages))
        self.noise_schedulers = nn.ModuleList(
            NoiseScheduler(
                beta_schedule=s.beta_schedule, timesteps=s.timesteps, loss_type=loss_type,
                p2_loss_weight_gamma=s.p2_loss_weight_gamma, p2_loss_weight_k=p2_loss_weight_k,
            )
            for s in self.stages
        )
        self.lowres_conds = nn.ModuleList(
            LowresConditioner(
                downsample_first=lowres_downsample_first, use_blur=use_blur_for_lowres_cond, blur_prob=blur_prob,
                blur_sigma=blur_sigma, blur_kernel_size=blur_kernel_size, use_noise=use_noise_for_lowres_cond,
                downsample_mode=lowres_downsample_mode,
            ) if s.lowres_cond else nn.Identity()
            for s in self.stages
        )
        self.lowres_downsample_mode = lowres_downsample_mode
        self.lowres_noise_sample_level = lowres_noise_sample_level
        self.image_cond_drop_prob = image_cond_drop_prob
        self.text_cond_drop_prob = text_cond_drop_prob
        self.can_classifier_guidance = image_cond_drop_prob > 0 or text_cond_drop_prob > 0
        self.clip_denoised = clip_denoised
        self.clip_x_start = clip_x_start
        self.learned_variance_constrain_frac = learned_variance_constrain_frac
        self.vb_loss_weight = vb_loss_weight
        self.auto_normalize_img = auto_normalize_img
        self.use_dynamic_thres = use_dynamic_thres
        self.dynamic_thres_percentile = dynamic_thres_percentile
        self.ddim_sampling_eta = ddim_sampling_eta
        self.config: dict | None = None

    # ------------------------------------------------------------------------------ construction
    def _resolve_image_sizes(self, image_size, image_sizes, n) -> tuple[int, ...]:
        if image_size is not None and image_sizes is not None:
            raise ValueError("give either image_size or image_sizes, not both")
        if image_sizes is None:
            if image_size is None:
                if self.clip is None:
                    raise ValueError("the decoder needs image_size or image_sizes (or a clip to take the size from)")
                image_size = self.clip.image_size
            if n > 1:
                raise ValueError(f"a cascade of {n} unets needs image_sizes, one size per unet")
            image_sizes = (image_size,)
        sizes = tuple(int(s) for s in image_sizes)
        if len(sizes) != n:
            raise ValueError(f"image_sizes has {len(sizes)} sizes but there are {n} unets")
        if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
            raise ValueError(f"image_sizes must be positive and strictly increasing, got {list(sizes)}")
        return sizes

    def _cast_unet(self, unet: Unet, stage: DecoderStage, lowres_noise: bool) -> Unet:
        first = stage.index == 0
        wanted = dict(
            lowres_cond=not first,
            lowres_noise_cond=(not first) and lowres_noise,
            channels=self.channels,
            channels_out=self.channels * (2 if stage.learned_variance else 1),
            cond_on_image_embeds=first and not self.unconditional,
            cond_on_text_encodings=(not self.unconditional) and bool(unet.cond_on_text_encodings),
        )
        if wanted["cond_on_image_embeds"] and unet.image_embed_dim is None:
            if self.clip is None:
                raise ValueError(
                    f"unet {stage.unet_number} is conditioned on image embeddings: give it image_embed_dim "
                    "(or attach a clip to the decoder)"
                )
            wanted["image_embed_dim"] = self.clip.dim_latent
        cast = unet.cast_model_parameters(**wanted)
        # a fresh Unet has a zero-initialised output conv: rebuilding it loses nothing
        fresh = all(not p.any() for p in unet.to_out.parameters()) if hasattr(unet, "to_out") else False
        if cast is not unet and not fresh:
            warnings.warn(
                f"unet {stage.unet_number} was rebuilt with {wanted} to fit its place in the decoder; its weights "
                "were re-initialised (build it with these settings to keep its weights)",
                UserWarning,
                stacklevel=3,
            )
        return cast

    # ------------------------------------------------------------------------------------ basics
    @property
    def num_unets(self) -> int:
        return len(self.unets)

    @property
    def device(self) -> torch.device:
        return self.noise_schedulers[0].betas.device

    @property
    def image_sizes(self) -> tuple[int, ...]:
        return tuple(s.image_size for s in self.stages)

    @property
    def image_size(self) -> int:
        return self.stages[-1].image_size

    @property
    def condition_on_text_encodings(self) -> bool:
        return any(u.cond_on_text_encodings for u in self.unets)

    def train(self, mode: bool = True) -> "Decoder":
        super().train(mode)
        if self.clip is not None:
            self.clip.eval()
        return self

    def stage_index(self, unet_number: int | None) -> int:
        """Validates a 1-based `unet_number` and returns the 0-based stage index."""
        if unet_number is None:
            if self.num_unets > 1:
                raise ValueError(f"unet_number must be given (1..{self.num_unets}) when the decoder has several unets")
            return 0
        if not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"unet_number must be in 1..{self.num_unets}, got {unet_number!r}")
        return unet_number - 1

    def get_unet(self, unet_number: int) -> Unet:
        return self.unets[self.stage_index(unet_number)]

    def normalize_img(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1 if self.auto_normalize_img else x

    def unnormalize_img(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1) * 0.5 if self.auto_normalize_img else x

    def _require_clip(self, what: str):
        if self.clip is None:
            raise ValueError(f"{what} needs a CLIP adapter: pass clip=... to the Decoder or give the embeddings")
        return self.clip

    def _check_image(self, image: torch.Tensor, name: str = "image") -> None:
        if not torch.is_tensor(image) or image.ndim != 4:
            raise ValueError(f"{name} must be a (batch, {self.channels}, height, width) tensor")
        if image.shape[1] != self.channels:
            raise ValueError(f"{name} has {image.shape[1]} channels, the decoder expects {self.channels}")
        if image.shape[-1] != image.shape[-2]:
            raise ValueError(f"{name} must be square, got {tuple(image.shape[-2:])}")

    def _conditioning(self, stage, unet, *, image, text, image_embed, text_encodings, batch):
        """image_embed / text_encodings for this unet, from CLIP when not given."""
        if unet.cond_on_image_embeds:
            if image_embed is None:
                if image is None:
                    raise ValueError("pass image_embed (or an image with a CLIP attached)")
                image_embed = self._require_clip("embedding images").embed_image(image).image_embed
            if image_embed.ndim != 2 or image_embed.shape[0] != batch or image_embed.shape[1] != unet.image_embed_dim:
                raise ValueError(
                    f"image_embed must have shape ({batch}, {unet.image_embed_dim}), got {tuple(image_embed.shape)}"
                )
        if unet.cond_on_text_encodings:
            if text_encodings is None:
                if text is None:
                    raise ValueError(
                        f"unet {stage.unet_number} is conditioned on text: pass text_encodings (or text with a CLIP attached)"
                    )
                clip = self._require_clip("embedding text")
                tokens = text if torch.is_tensor(text) else clip.tokenize([text] if isinstance(text, str) else list(text))
                text_encodings = clip.embed_text(tokens.to(self.device)).text_encodings
        else:
            text_encodings = None
        return (image_embed if unet.cond_on_image_embeds else None), text_encodings

    # ---------------------------------------------------------------------------------- training
    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor | Sequence[str] | None = None,
        image_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        unet_number: int | None = None,
        return_lowres_cond_image: bool = False,
        *,
        generator: torch.Generator | None = None,
    ):
        """Training loss of one stage.

        Args:
            image: (b, c, h, w) images in [0, 1] (any size >= the stage's; resized per stage).
            text: token ids or strings, embedded by CLIP when `text_encodings` is needed and absent.
            image_embed: (b, d) CLIP image embeddings (computed from `image` when absent and needed).
            text_encodings: (b, n, d_text) per-token text encodings.
            unet_number: which stage to train (1-based; required with several unets).
            return_lowres_cond_image: also return the stage's conditioning image.
            generator: source of every random draw (timesteps, noise, dropout, crops, blur).

        Returns:
            The scalar loss (and the low-res conditioning image in [-1, 1] if requested).
        """
        index = self.stage_index(unet_number)
        stage, unet = self.stages[index], self.unets[index]
        ns = self.noise_schedulers[index]
        self._check_image(image)
        b = image.shape[0]
        image_embed, text_encodings = self._conditioning(
            stage, unet, image=image, text=text, image_embed=image_embed, text_encodings=text_encodings, batch=b
        )
        lowres_img = noise_levels = None
        if stage.lowres_cond:
            lowres_img, noise_levels = self.lowres_conds[index](
                image, target_image_size=stage.image_size,
                downsample_image_size=self.stages[index - 1].image_size, generator=generator,
            )
        target = resize_image_to(image, stage.image_size, downsample_mode=self.lowres_downsample_mode)
        if stage.random_crop_size is not None:
            target, lowres_img = self._random_crop(target, lowres_img, stage.random_crop_size, generator)
        x_start = self.normalize_img(target)
        loss = self.p_losses(
            index, x_start, image_embed=image_embed, text_encodings=text_encodings,
            lowres_cond_img=lowres_img, lowres_noise_level=noise_levels, generator=generator,
        )
        return (loss, lowres_img) if return_lowres_cond_image else loss

    @staticmethod
    def _random_crop(target, lowres, size, generator):
        h, w = target.shape[-2:]
        if size > min(h, w):
            raise ValueError(f"random crop size {size} is larger than the stage's image {h}x{w}")
        top = int(rand_tensor((), generator=generator).item() * (h - size + 1))
        left = int(rand_tensor((), generator=generator).item() * (w - size + 1))
        crop = lambda x: x if x is None else x[..., top : top + size, left : left + size]
        return crop(target), crop(lowres)

    def p_losses(
        self,
        index: int,
        x_start: torch.Tensor,
        *,
        image_embed=None,
        text_encodings=None,
        lowres_cond_img=None,
        lowres_noise_level=None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Simple loss (+ VB term for learned variance) for normalised images x_start (b, c, s, s)."""
        stage, unet, ns = self.stages[index], self.unets[index], self.noise_schedulers[index]
        b = x_start.shape[0]
        t = ns.sample_random_times(b, device=x_start.device, generator=generator)
        noise = randn_tensor(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        x_t = ns.q_sample(x_start, t, noise)
        cond = dict(image_embed=image_embed, text_encodings=text_encodings, lowres_cond_img=lowres_cond_img,
                    lowres_noise_level=lowres_noise_level)

        self_cond = None
        if unet.self_cond and rand_tensor((), generator=generator).item() < 0.5:
            with torch.no_grad():
                out = unet(x_t, t, **cond, generator=generator)
                pred = out[:, : self.channels] if stage.learned_variance else out
                self_cond = stage.objective.to_x_start(ns, x_t, t, pred)
                if self.clip_denoised:  # as sampling feeds it back (thresholded)
                    self_cond = self.dynamic_threshold(self_cond)
                self_cond = self_cond.detach()

        out = unet(
            x_t, t, **cond, self_cond=self_cond, generator=generator,
            image_cond_drop_prob=self.image_cond_drop_prob, text_cond_drop_prob=self.text_cond_drop_prob,
        )
        pred, var_values = (out[:, : self.channels], out[:, self.channels :]) if stage.learned_variance else (out, None)
        target = stage.objective.target(ns, x_start, t, noise)
        loss = mean_flat(ns.loss_fn(pred, target, reduction="none"))
        loss = ns.p2_reweigh_loss(loss, t).mean()
        if var_values is None:
            return loss
        # hybrid loss (improved DDPM sec. 3.1): the VB term trains only the variance (mean detached)
        x0 = stage.objective.to_x_start(ns, x_t, t, pred.detach())
        model_mean, _, _ = ns.q_posterior(x0, x_t, t)
        log_var = ns.learned_log_variance(var_values, t, constrain_frac=self.learned_variance_constrain_frac)
        vb = variational_bound_bits(ns, x_start=x_start, x_t=x_t, t=t, model_mean=model_mean, model_log_variance=log_var)
        return loss + self.vb_loss_weight * vb.mean()

    # ------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_checkpoint(cls, path, config=None, *, clip=None, map_location="cpu", strict: bool = True) -> "Decoder":
        """Loads a decoder saved by the reference package (1.1.0 or 1.15.6 layouts) or by us.

        `path` may be a list of files to stitch Unets from several checkpoints into one cascade.
        See :func:`dalle2_pytorch.compat.decoder_loading.load_decoder`.
        """
        from dalle2_pytorch.compat.decoder_loading import load_decoder

        return load_decoder(path, config, clip=clip, map_location=map_location, strict=strict)
