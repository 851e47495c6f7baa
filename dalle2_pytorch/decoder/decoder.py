"""Decoder: a cascade of Unets that turns CLIP image embeddings into images.

unCLIP, Ramesh et al. 2022, sec. 2.1: a GLIDE-style 64x64 diffusion decoder conditioned on the CLIP
image embedding (projected and added to the timestep embedding, and as extra context tokens) and
optionally on the caption's text encodings, followed by diffusion upsamplers conditioned on the
previous stage's image. Classifier-free guidance is trained by dropping the image embedding 10% and
the text 50% of the time.

The constructor keeps the reference 1.15.6 signature, where per-Unet options are scalars or tuples
(`decoder/construction.py` expands them once into one `StageSettings` per stage). The modules are
registered under the reference's state-dict keys (`unets.N`, `noise_schedulers.N`, `lowres_conds.N`);
`decoder.stages` gives one :class:`~dalle2_pytorch.decoder.stage.DecoderStage` per Unet over them,
which owns the stage's training loss, denoiser and sampling. The decoder iterates the stages.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_pytorch._helpers import default
from dalle2_pytorch.clip_adapters.wrap import wrap_clip
from dalle2_pytorch.decoder.construction import build_stage_settings, cast_unet, per_stage, resolve_image_sizes, stage_vaes
from dalle2_pytorch.decoder.inputs import check_image, check_inpaint, random_crop
from dalle2_pytorch.decoder.lowres import LowresConditioner, resize_image_to
from dalle2_pytorch.decoder.stage import DecoderStage, StageSettings
from dalle2_pytorch.decoder.unet import Unet
from dalle2_pytorch.diffusion import Inpaint, NoiseScheduler, check_cond_scale, dynamic_threshold, static_threshold
from dalle2_pytorch.progress import ProgressBar, progress_enabled

__all__ = ["Decoder"]


class Decoder(nn.Module):
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
        ddim_sampling_eta: DDIM's eta (DDIM is used for stages sampled with fewer steps than T
            unless a sampler is named).
        lowres_downsample_mode: 'antialias' (default) or 'nearest' (reference) downsampling.
        sampler: default sampler name, one or one per Unet (extension; None keeps the reference's
            rule: DDPM at T steps, DDIM with fewer).
        vae: one VQGanVAE (or NullVQGanVAE / None) per Unet, padded with NullVQGanVAE: a stage with a
            VAE diffuses its latent map (Rombach et al. 2022); `predict_x_start_for_latent_diffusion`
            makes those stages predict x_0. The VAEs are frozen (outside the optimiser and the EMA).
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
        sampler: str | None | Sequence[str | None] = None,
    ):
        super().__init__()
        unets = tuple(unet) if isinstance(unet, (list, tuple)) else (unet,)
        if len(unets) == 0 or not all(isinstance(u, Unet) for u in unets):
            raise TypeError("unet must be a dalle2_pytorch Unet or a non-empty sequence of Unets")
        n = len(unets)
        self.unconditional = unconditional
        self.clip = None if unconditional else wrap_clip(clip, dict(clip_adapter_overrides or {}))
        if self.clip is not None:
            self.clip.requires_grad_(False)
        self.channels = channels
        vaes = stage_vaes(vae, n, channels, use_noise_for_lowres_cond=use_noise_for_lowres_cond)
        self.stage_settings: tuple[StageSettings, ...] = build_stage_settings(
            n, vaes=vaes, predict_x_start_for_latent_diffusion=predict_x_start_for_latent_diffusion,
            auto_normalize_img=auto_normalize_img,
            image_sizes=resolve_image_sizes(image_size, image_sizes, n, self.clip),
            channels=channels, timesteps=timesteps, sample_timesteps=sample_timesteps, beta_schedule=beta_schedule,
            predict_x_start=predict_x_start, predict_v=predict_v, learned_variance=learned_variance,
            p2_loss_weight_gamma=p2_loss_weight_gamma, random_crop_sizes=random_crop_sizes, sampler=sampler,
            ddim_sampling_eta=ddim_sampling_eta, clip_denoised=clip_denoised, use_dynamic_thres=use_dynamic_thres,
            dynamic_thres_percentile=dynamic_thres_percentile,
            learned_variance_constrain_frac=learned_variance_constrain_frac, vb_loss_weight=vb_loss_weight,
            lowres_noise_sample_level=lowres_noise_sample_level,
        )
        # the modules, under the reference's state-dict keys
        self.unets = nn.ModuleList(
            cast_unet(u, s, lowres_noise=use_noise_for_lowres_cond, unconditional=unconditional, clip=self.clip)
            for u, s in zip(unets, self.stage_settings)
        )
        self.noise_schedulers = nn.ModuleList(
            NoiseScheduler(
                beta_schedule=s.beta_schedule, timesteps=s.timesteps, loss_type=loss_type,
                p2_loss_weight_gamma=s.p2_loss_weight_gamma, p2_loss_weight_k=p2_loss_weight_k,
            )
            for s in self.stage_settings
        )
        self.lowres_conds = nn.ModuleList(
            LowresConditioner(
                downsample_first=lowres_downsample_first, use_blur=use_blur_for_lowres_cond, blur_prob=blur_prob,
                blur_sigma=blur_sigma, blur_kernel_size=blur_kernel_size, use_noise=use_noise_for_lowres_cond,
                downsample_mode=lowres_downsample_mode,
            ) if s.lowres_cond else nn.Identity()
            for s in self.stage_settings
        )
        self.vaes = nn.ModuleList(vaes)  # frozen; `vaes.N.*` keys for latent stages, none for pixel ones
        # decoder-wide settings (the reference's attributes; each stage holds its own copy)
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
        self.predict_x_start_for_latent_diffusion = predict_x_start_for_latent_diffusion
        self.config: dict | None = None

    # ------------------------------------------------------------------------------------ stages
    @property
    def stages(self) -> tuple[DecoderStage, ...]:
        """One :class:`DecoderStage` per Unet, over the registered modules (built on each access)."""
        return tuple(
            DecoderStage(s, u, ns, lc, v)
            for s, u, ns, lc, v in zip(self.stage_settings, self.unets, self.noise_schedulers, self.lowres_conds, self.vaes)
        )

    def stage(self, unet_number: int | None) -> DecoderStage:
        """The stage of a 1-based `unet_number` (may be None with a single Unet)."""
        return self.stages[self.stage_index(unet_number)]

    @property
    def num_unets(self) -> int:
        return len(self.unets)

    @property
    def device(self) -> torch.device:
        return self.noise_schedulers[0].betas.device

    @property
    def image_sizes(self) -> tuple[int, ...]:
        return tuple(s.image_size for s in self.stage_settings)

    @property
    def image_size(self) -> int:
        return self.stage_settings[-1].image_size

    @property
    def condition_on_text_encodings(self) -> bool:
        return any(u.cond_on_text_encodings for u in self.unets)

    def train(self, mode: bool = True) -> "Decoder":
        super().train(mode)
        if self.clip is not None:
            self.clip.eval()
        self.vaes.eval()  # frozen autoencoders of latent stages
        return self

    def stage_index(self, unet_number: int | None) -> int:
        """Validates a 1-based `unet_number` and returns the 0-based stage index."""
        if unet_number is None:
            if self.num_unets > 1:
                raise ValueError(f"unet_number must be given (1..{self.num_unets}) when the decoder has several unets")
            return 0
        if isinstance(unet_number, bool) or not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"unet_number must be in 1..{self.num_unets}, got {unet_number!r}")
        return unet_number - 1

    def get_unet(self, unet_number: int) -> Unet:
        return self.unets[self.stage_index(unet_number)]

    def normalize_img(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1 if self.auto_normalize_img else x

    def unnormalize_img(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1) * 0.5 if self.auto_normalize_img else x

    def dynamic_threshold(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's x_0 post-processing (reference API): dynamic (Imagen) or a clamp to [-1, 1]."""
        if self.use_dynamic_thres:
            return dynamic_threshold(x, self.dynamic_thres_percentile)
        return static_threshold(x)

    def _require_clip(self, what: str):
        if self.clip is None:
            raise ValueError(f"{what} needs a CLIP adapter: pass clip=... to the Decoder or give the embeddings")
        return self.clip

    def _check_image(self, image: torch.Tensor, name: str = "image") -> None:
        check_image(image, self.channels, name)

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
            The scalar loss (and the low-res conditioning image in [-1, 1], or its latent map in a
            latent stage, if requested).
        """
        index = self.stage_index(unet_number)
        stage = self.stages[index]
        unet = stage.unet
        self._check_image(image)
        b = image.shape[0]
        image_embed, text_encodings = self._conditioning(
            stage, unet, image=image, text=text, image_embed=image_embed, text_encodings=text_encodings, batch=b
        )
        lowres_img = noise_levels = None
        if stage.lowres_cond:
            lowres_img, noise_levels = stage.lowres_conditioner(
                image, target_image_size=stage.image_size,
                downsample_image_size=self.stage_settings[index - 1].image_size, generator=generator,
            )
        target = resize_image_to(image, stage.image_size, downsample_mode=self.lowres_downsample_mode)
        if stage.random_crop_size is not None:
            target, lowres_img = random_crop(target, lowres_img, stage.random_crop_size, generator)
        x_start = stage.to_data(target)
        if lowres_img is not None:
            lowres_img = stage.encode_lowres(lowres_img)
        loss = self.p_losses(
            index, x_start, image_embed=image_embed, text_encodings=text_encodings,
            lowres_cond_img=lowres_img, lowres_noise_level=noise_levels, generator=generator,
        )
        return (loss, lowres_img) if return_lowres_cond_image else loss

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
        """Loss of stage `index` (0-based) for normalised images x_start (b, c, s, s)."""
        cond = dict(image_embed=image_embed, text_encodings=text_encodings, lowres_cond_img=lowres_cond_img,
                    lowres_noise_level=lowres_noise_level)
        return self.stages[index].loss(
            x_start, cond, image_cond_drop_prob=self.image_cond_drop_prob,
            text_cond_drop_prob=self.text_cond_drop_prob, generator=generator,
        )

    # ---------------------------------------------------------------------------------- sampling
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
        """One DDPM step's distribution p(x_{t-1} | x_t) for stage `unet_number`: a dict with
        `model_mean`, `posterior_variance`, `posterior_log_variance` and `x_start`."""
        cond = dict(image_embed=image_embed, text_encodings=text_encodings, lowres_cond_img=lowres_cond_img,
                    lowres_noise_level=lowres_noise_level)
        return self.stage(unet_number).p_mean_variance(x, t, cond, cond_scale, clip_denoised)

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
        steps: int | Sequence[int | None] | None = None,
        sampler: str | Sequence[str | None] | None = None,
        timesteps: int | Sequence[int | None] | None = None,
        callback: Callable | None = None,
        progress: bool | None = False,
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
            steps: sampling steps, one value or one per Unet (default: each stage's
                `sample_timesteps`, else T). `timesteps` is accepted as an alias.
            sampler: sampler name, one or one per Unet (default: each stage's `sampler`, else DDPM at
                T steps and DDIM with fewer). See `dalle2_pytorch.diffusion.sampler_names()`.
            callback: progress callback `(stage_index, step, num_steps)`.
            progress: show a progress bar per stage (None: when stderr is a terminal).
        """
        n = self.num_unets
        stop = default(stop_at_unet_number, n)
        if not 1 <= start_at_unet_number <= stop <= n:
            raise ValueError(f"need 1 <= start_at_unet_number ({start_at_unet_number}) <= stop_at_unet_number ({stop}) <= {n}")
        if steps is not None and timesteps is not None:
            raise ValueError("give either steps or its alias timesteps, not both")
        scales = tuple(check_cond_scale(s) for s in per_stage(cond_scale, n, "cond_scale"))
        steps_per_stage = per_stage(default(steps, timesteps), n, "steps")
        samplers = per_stage(sampler, n, "sampler")
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
            check_inpaint(inpaint_image, inpaint_mask, batch_size, self.channels)

        img = image
        for stage in self.stages[start_at_unet_number - 1 : stop]:
            index = stage.index
            ie, te = self._conditioning(stage, stage.unet, image=None, text=text, image_embed=image_embed,
                                        text_encodings=text_encodings, batch=batch_size)
            cond = dict(image_embed=ie, text_encodings=te)
            if stage.lowres_cond:
                cond.update(stage.lowres_condition(img, generator=generator))
            inpaint = None
            if inpaint_image is not None:
                if stage.latent:
                    raise ValueError(f"inpainting is not supported through latent (VQGAN-VAE) stages (unet {index + 1})")
                mask = F.interpolate(inpaint_mask[:, None].float(), size=(stage.image_size,) * 2, mode="nearest")
                known = stage.to_data(resize_image_to(inpaint_image, stage.image_size, downsample_mode=self.lowres_downsample_mode))
                inpaint = Inpaint(image=known.to(self.device), mask=mask.to(self.device), resample_times=inpaint_resample_times)
            _, num_steps, _ = stage.resolve_sampling(samplers[index], steps_per_stage[index])
            stage_callback = None if callback is None else (lambda i, num, t, x, x0, _s=index: callback(_s, i, num))
            context = self.one_unet_in_gpu(index + 1) if one_unet_in_gpu_at_time else contextlib.nullcontext()
            with context, ProgressBar(num_steps, f"decoder unet {index + 1}", enabled=progress_enabled(progress),
                                      then=stage_callback) as bar:
                x = stage.sample(
                    batch_size, cond, cond_scale=scales[index], sampler=samplers[index], steps=num_steps,
                    generator=generator, device=self.device, inpaint=inpaint, callback=bar.callback,
                )
            img = stage.to_images(x)
        return img

    # ------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_checkpoint(cls, path, config=None, *, clip=None, map_location="cpu", strict: bool = True) -> "Decoder":
        """Loads a decoder saved by the reference package (1.1.0 or 1.15.6 layouts) or by us.

        `path` may be a list of files to stitch Unets from several checkpoints into one cascade.
        See :func:`dalle2_pytorch.compat.decoder_loading.load_decoder`.
        """
        # loading lives above the models (compat/); imported by name so the models never import it
        loading = importlib.import_module("dalle2_pytorch.compat.decoder_loading")
        return loading.load_decoder(path, config, clip=clip, map_location=map_location, strict=strict)

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs: Any) -> "Decoder":
        """Loads by name ("laion/dalle2"), model folder, export folder, file or Hub repo id of our
        exports (huggingface_hub cache, checksums, HF_HUB_OFFLINE). See
        :func:`dalle2_pytorch.compat.pretrained.load_decoder`."""
        return importlib.import_module("dalle2_pytorch.compat.pretrained").load_decoder(name_or_path, **kwargs)
