"""DiffusionPrior: text (CLIP text embedding + encodings) -> CLIP image embedding, by diffusion.

unCLIP, Ramesh et al. 2022, sec. 2.2: a decoder-only transformer predicts the clean (x_0) image
embedding directly with an MSE loss, conditioned on the text; at sampling time two embeddings are
drawn per caption and the one with the higher dot product with the text embedding is kept.
CLIP image embeddings (unit norm) are scaled by sqrt(d) during training so their per-dimension
scale matches the unit-variance noise (the reference's `image_embed_scale`).

Differences from the reference 1.15.6, on purpose:
* the caller's `image_embed` is never modified in place;
* self-conditioning always feeds an x_0 estimate (the reference fed the raw network output in
  training, which differs from the x_0 it fed at sampling for eps/v objectives);
* x_0 is not clamped to [-1, 1] for eps/v objectives (that clipped the sqrt(d)-scaled embeddings);
* DDIM runs exactly `timesteps` network calls with alpha_bar of the timestep fed to the network
  (see `diffusion.samplers`); its eta is `ddim_sampling_eta` (reference: fixed at 1);
* `sample_batch_size`, which raised AttributeError in the reference, works.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_pytorch._helpers import default
from dalle2_pytorch.clip_adapters.wrap import wrap_clip
from dalle2_pytorch.diffusion import (
    GuidedModel,
    NoiseScheduler,
    Objective,
    build_denoiser,
    check_cond_scale,
    diffusion_training_loss,
    l2norm_clamp,
    objective_from_flags,
    parse_sampler,
    sample as run_sampler,
)
from dalle2_pytorch.diffusion.steps import check_steps, reference_sampler, resolve_steps
from dalle2_pytorch.prior.conditioning import negative_condition, repeat_condition, text_condition
from dalle2_pytorch.progress import ProgressBar, progress_enabled
from dalle2_pytorch.rng import randn_tensor

__all__ = ["DiffusionPrior"]


class DiffusionPrior(nn.Module):
    """The unCLIP diffusion prior.

    Args (the reference 1.15.6 signature; see reference-inventory §1.3):
        net: the denoising network, usually a :class:`DiffusionPriorNetwork`.
        clip: a CLIP adapter (or an x_clip.CLIP, wrapped automatically) used to embed raw text and
            images and to rerank samples. Frozen.
        image_embed_dim: CLIP embedding width; defaults to `clip.dim_latent`; must equal `net.dim`.
        image_size, image_channels: accepted for compatibility (unused).
        timesteps: diffusion steps T used in training.
        sample_timesteps: default number of sampling steps (< T samples with DDIM).
        cond_drop_prob: default for both `text_cond_drop_prob` and `image_cond_drop_prob`
            (classifier-free guidance dropout during training).
        loss_type: l1, l2 or huber.
        predict_x_start, predict_v: the objective (x_0 by default, as in the paper).
        beta_schedule: cosine, linear, quadratic, jsd or sigmoid.
        condition_on_text_encodings: feed per-token text encodings to the network.
        sampling_clamp_l2norm, sampling_final_clamp_l2norm, training_clamp_l2norm,
            init_image_embed_l2norm: project embeddings onto the sphere of radius `image_embed_scale`
            (the clamps apply to x_0 objectives only).
        image_embed_scale: defaults to sqrt(image_embed_dim).
        clip_adapter_overrides: keyword arguments for the automatic x_clip wrapper.
        ddim_sampling_eta: eta of DDIM sampling (extension; the reference used 1).
        sampler: default sampler name (extension; see `dalle2_pytorch.diffusion.sampler_names()`);
            None keeps the reference's rule: DDPM at T steps, DDIM with fewer.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        clip: Any = None,
        image_embed_dim: int | None = None,
        image_size: int | None = None,
        image_channels: int = 3,
        timesteps: int = 1000,
        sample_timesteps: int | None = None,
        cond_drop_prob: float = 0.0,
        text_cond_drop_prob: float | None = None,
        image_cond_drop_prob: float | None = None,
        loss_type: str = "l2",
        predict_x_start: bool = True,
        predict_v: bool = False,
        beta_schedule: str = "cosine",
        condition_on_text_encodings: bool = True,
        sampling_clamp_l2norm: bool = False,
        sampling_final_clamp_l2norm: bool = False,
        training_clamp_l2norm: bool = False,
        init_image_embed_l2norm: bool = False,
        image_embed_scale: float | None = None,
        clip_adapter_overrides: dict | None = None,
        ddim_sampling_eta: float = 1.0,
        sampler: str | None = None,
    ):
        super().__init__()
        self.clip = wrap_clip(clip, dict(clip_adapter_overrides or {}))
        if self.clip is not None:
            self.clip.requires_grad_(False)
            image_embed_dim = default(image_embed_dim, self.clip.dim_latent)
            if image_embed_dim != self.clip.dim_latent:
                raise ValueError(
                    f"image_embed_dim ({image_embed_dim}) must equal the CLIP embedding width ({self.clip.dim_latent})"
                )
        if image_embed_dim is None:
            raise ValueError("image_embed_dim must be given when no clip is attached")
        net_dim = getattr(net, "dim", image_embed_dim)
        if net_dim != image_embed_dim:
            raise ValueError(f"the network width net.dim ({net_dim}) must equal image_embed_dim ({image_embed_dim})")
        self.net = net
        self.image_embed_dim = image_embed_dim
        self.image_size = image_size
        self.channels = image_channels

        self.noise_scheduler = NoiseScheduler(beta_schedule=beta_schedule, timesteps=timesteps, loss_type=loss_type)
        self.sample_timesteps = sample_timesteps
        if sample_timesteps is not None:
            check_steps(sample_timesteps, self.noise_scheduler.num_timesteps, "sample_timesteps")
        self.sampler = sampler

        self.text_cond_drop_prob = default(text_cond_drop_prob, cond_drop_prob)
        self.image_cond_drop_prob = default(image_cond_drop_prob, cond_drop_prob)
        for name, p in (("text_cond_drop_prob", self.text_cond_drop_prob), ("image_cond_drop_prob", self.image_cond_drop_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.condition_on_text_encodings = condition_on_text_encodings

        self.objective = objective_from_flags(predict_x_start, predict_v)
        self.predict_x_start = self.objective is Objective.X_START
        self.predict_v = self.objective is Objective.V

        self.image_embed_scale = default(image_embed_scale, image_embed_dim**0.5)
        self.sampling_clamp_l2norm = sampling_clamp_l2norm
        self.sampling_final_clamp_l2norm = sampling_final_clamp_l2norm
        self.training_clamp_l2norm = training_clamp_l2norm
        self.init_image_embed_l2norm = init_image_embed_l2norm
        self.ddim_sampling_eta = ddim_sampling_eta
        self.config: dict | None = None  # set by builders / loaders: the config this model was built from

    # ------------------------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        return self.noise_scheduler.betas.device

    @property
    def can_classifier_guidance(self) -> bool:
        return self.text_cond_drop_prob > 0 and self.image_cond_drop_prob > 0

    def train(self, mode: bool = True) -> "DiffusionPrior":
        super().train(mode)
        if self.clip is not None:
            self.clip.eval()
        return self

    def l2norm_clamp_embed(self, image_embed: torch.Tensor) -> torch.Tensor:
        return l2norm_clamp(image_embed, self.image_embed_scale)

    # ----------------------------------------------------------------------------- conditioning
    def _require_clip(self, what: str) -> Any:
        if self.clip is None:
            raise ValueError(f"{what} needs a CLIP adapter: pass clip=... to DiffusionPrior, or give embeddings directly")
        return self.clip

    def tokenize(self, text: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Strings -> token ids with the CLIP adapter's tokenizer; token tensors pass through."""
        if isinstance(text, torch.Tensor):
            return text.to(self.device)
        clip = self._require_clip("tokenizing text")
        return clip.tokenize([text] if isinstance(text, str) else list(text)).to(self.device)

    @torch.no_grad()
    def embed_text(self, text: str | Sequence[str] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text_embed (b, d), text_encodings (b, n, d_text)) from strings or token ids."""
        clip = self._require_clip("embedding text")
        out = clip.embed_text(self.tokenize(text))
        return out.text_embed, out.text_encodings

    def _text_cond(self, text_embed: torch.Tensor, text_encodings: torch.Tensor | None) -> dict:
        return text_condition(text_embed, text_encodings, self.image_embed_dim, self.condition_on_text_encodings)

    # ---------------------------------------------------------------------------------- training
    def forward(
        self,
        text: torch.Tensor | Sequence[str] | None = None,
        image: torch.Tensor | None = None,
        text_embed: torch.Tensor | None = None,
        image_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Training loss (scalar) for a batch.

        Args:
            text: token ids (b, n) or strings, embedded by the CLIP adapter (exclusive with text_embed).
            image: images (b, c, h, w) in [0, 1], embedded by the CLIP adapter (exclusive with image_embed).
            text_embed: (b, d) CLIP text embeddings.
            image_embed: (b, d) CLIP image embeddings (unit norm; scaled by image_embed_scale here).
            text_encodings: (b, n, d) per-token text encodings (zero at padding).
            generator: source of timesteps, noise, dropout and self-conditioning coin flips.
        """
        if (text is None) == (text_embed is None):
            raise ValueError("give exactly one of `text` or `text_embed`")
        if (image is None) == (image_embed is None):
            raise ValueError("give exactly one of `image` or `image_embed`")
        if image is not None:
            image_embed = self._require_clip("embedding images").embed_image(image).image_embed
        if text is not None:
            text_embed, encodings = self.embed_text(text)
            text_encodings = default(text_encodings, encodings)
        if image_embed.ndim != 2 or image_embed.shape[-1] != self.image_embed_dim:
            raise ValueError(
                f"image_embed must have shape (batch, {self.image_embed_dim}), got {tuple(image_embed.shape)}"
            )
        if image_embed.shape[0] != text_embed.shape[0]:
            raise ValueError(f"image_embed batch ({image_embed.shape[0]}) != text batch ({text_embed.shape[0]})")
        cond = self._text_cond(text_embed, text_encodings)
        x_start = image_embed * self.image_embed_scale  # a new tensor: the caller's is untouched
        return self.p_losses(x_start, cond, generator=generator)

    def p_losses(self, x_start: torch.Tensor, cond: dict, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Loss for scaled clean embeddings x_start (b, d) under text conditioning `cond`
        (:func:`~dalle2_pytorch.diffusion.diffusion_training_loss`)."""
        net = self.net

        def model(x_t, t, self_cond):
            return net(
                x_t, t, **cond, self_cond=self_cond, text_cond_drop_prob=self.text_cond_drop_prob,
                image_cond_drop_prob=self.image_cond_drop_prob, generator=generator,
            )

        x0_clamp = self.predict_x_start and self.sampling_clamp_l2norm
        return diffusion_training_loss(
            model, self.noise_scheduler, self.objective, x_start, generator=generator,
            self_cond_model=(lambda x_t, t: net(x_t, t, **cond, generator=generator)) if getattr(net, "self_cond", False) else None,
            self_cond_postprocess=self.l2norm_clamp_embed if x0_clamp else None,  # as sampling feeds it back
            prediction_transform=self.l2norm_clamp_embed if self.predict_x_start and self.training_clamp_l2norm else None,
        )

    # ---------------------------------------------------------------------------------- sampling
    def _check_guidance(self, cond_scale: float, negative: bool = False) -> float:
        cond_scale = check_cond_scale(cond_scale)
        if negative:
            if cond_scale == 1:
                raise ValueError(
                    "a negative prompt has no effect at cond_scale=1: it replaces the unconditional branch "
                    "of classifier-free guidance; use a prior cond_scale > 1 (e.g. 4)"
                )
            return cond_scale  # both branches are conditional: no conditioning dropout needed
        if cond_scale == 1:
            return cond_scale
        if not getattr(self.net, "has_unconditional_branch", True):
            return cond_scale  # guided_forward warns that guidance has no effect (1.1.0-era priors)
        if not self.can_classifier_guidance:
            raise ValueError(
                f"cond_scale={cond_scale} needs a prior trained with conditioning dropout "
                f"(text_cond_drop_prob={self.text_cond_drop_prob}, image_cond_drop_prob={self.image_cond_drop_prob})"
            )
        return cond_scale

    def _network_cond(self, cond: dict, use_prefix_cache: bool) -> dict:
        """The network's conditioning keyword arguments for text conditioning `cond`."""
        net_kw: dict = dict(cond)
        if hasattr(self.net, "build_prefix_cache"):
            if use_prefix_cache:
                net_kw = {"prefix_cache": self.net.build_prefix_cache(cond["text_embed"], cond.get("text_encodings"))}
            else:
                net_kw["prefix_cache"] = False  # the full sequence at every step
        return net_kw

    def _denoiser(
        self, cond: dict, cond_scale: float = 1.0, use_prefix_cache: bool = True, negative_cond: dict | None = None
    ) -> Callable:
        """The sampler's denoise function: the guided network, x_0 from its objective, the optional
        l2-norm clamp. With a network that has `build_prefix_cache` (:class:`DiffusionPriorNetwork`),
        the text prefix is run through the transformer once here and every step computes only the
        timestep / image / query tokens (same result). `negative_cond` (text conditioning of a
        negative prompt, same batch) replaces the null branch of the guidance."""
        net_kw = self._network_cond(cond, use_prefix_cache)
        negative = None if negative_cond is None else self._network_cond(negative_cond, use_prefix_cache)
        clamp = self.sampling_clamp_l2norm and self.predict_x_start
        return build_denoiser(
            GuidedModel(self.net, cond_scale, net_kw, negative), self.noise_scheduler, self.objective,
            postprocess=self.l2norm_clamp_embed if clamp else None,
        )

    def _steps(self, steps: int | None, timesteps: int | None) -> int:
        T = self.noise_scheduler.num_timesteps
        return check_steps(resolve_steps(steps, timesteps, default(self.sample_timesteps, T)), T)

    @torch.no_grad()
    def p_sample_loop(
        self,
        shape: tuple[int, int],
        text_cond: dict,
        cond_scale: float = 1.0,
        timesteps: int | None = None,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        eta: float | None = None,
        callback=None,
        use_prefix_cache: bool = True,
        progress: bool | None = False,
        negative_cond: dict | None = None,
    ) -> torch.Tensor:
        """Samples image embeddings (b, d) in CLIP scale (unit norm when the prior is trained well).

        Args:
            shape: (b, d).
            text_cond: dict with `text_embed` (b, d) and, if used, `text_encodings` (b, n, d).
            cond_scale: classifier-free guidance scale (1 = none).
            timesteps: the reference's name of `steps`.
            steps: sampling steps (network calls). Default `sample_timesteps` or T.
            sampler: a sampler name (`dalle2_pytorch.diffusion.sampler_names()`); default the
                prior's `sampler`, else the reference's rule (DDPM at T steps, DDIM with fewer).
            generator: noise source.
            eta: stochasticity of samplers that take one (DDIM's eta; default `ddim_sampling_eta`
                for DDIM).
            callback: `callback(step_index, num_steps, t, x, x_start)` after each step.
            use_prefix_cache: compute the text prefix once for all steps (False: the full sequence
                at every step; same result up to float rounding).
            progress: show a progress bar (None: when stderr is a terminal).
            negative_cond: text conditioning of negative prompts (same keys and batch as
                `text_cond`): guidance then pushes away from them instead of from the null branch
                (needs cond_scale != 1).
        """
        cond_scale = self._check_guidance(cond_scale, negative=negative_cond is not None)
        cond = self._text_cond(text_cond["text_embed"], text_cond.get("text_encodings"))
        negative = None
        if negative_cond is not None:
            negative = self._text_cond(negative_cond["text_embed"], negative_cond.get("text_encodings"))
            if negative["text_embed"].shape[0] != cond["text_embed"].shape[0]:
                raise ValueError(
                    f"negative_cond batch ({negative['text_embed'].shape[0]}) != text_cond batch ({cond['text_embed'].shape[0]})"
                )
        steps = self._steps(steps, timesteps)
        sampler = default(sampler, default(self.sampler, reference_sampler(steps, self.noise_scheduler.num_timesteps)))
        if eta is None and parse_sampler(sampler)[0] == "ddim":
            eta = self.ddim_sampling_eta
        x_T = None
        if self.init_image_embed_l2norm:
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=cond["text_embed"].dtype)
            x_T = self.l2norm_clamp_embed(noise)
        was_training = self.net.training
        self.net.eval()
        try:
            with ProgressBar(steps, "prior", enabled=progress_enabled(progress), then=callback) as bar:
                x = run_sampler(
                    self._denoiser(cond, cond_scale, use_prefix_cache, negative),
                    tuple(shape),
                    self.noise_scheduler,
                    sampler=sampler,
                    steps=steps,
                    **({} if eta is None else {"eta": eta}),
                    generator=generator,
                    device=self.device,
                    dtype=cond["text_embed"].dtype,
                    x_T=x_T,
                    self_condition=getattr(self.net, "self_cond", False),
                    callback=bar.callback,
                )
        finally:
            self.net.train(was_training)
        if self.sampling_final_clamp_l2norm and self.predict_x_start:
            x = self.l2norm_clamp_embed(x)
        return x / self.image_embed_scale

    @torch.no_grad()
    def sample_batch_size(self, batch_size: int, text_cond: dict, cond_scale: float = 1.0, **kwargs) -> torch.Tensor:
        """`batch_size` samples for a batch of text conditioning (reference API; broken there)."""
        return self.p_sample_loop((batch_size, self.image_embed_dim), text_cond, cond_scale, **kwargs)

    @torch.no_grad()
    def sample(
        self,
        text: torch.Tensor | str | Sequence[str] | None = None,
        num_samples_per_batch: int = 2,
        cond_scale: float = 1.0,
        timesteps: int | None = None,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        text_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        eta: float | None = None,
        callback=None,
        progress: bool | None = False,
        negative_prompt: torch.Tensor | str | Sequence[str] | None = None,
        negative_text_embed: torch.Tensor | None = None,
        negative_text_encodings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image embeddings for captions, best of `num_samples_per_batch` by CLIP similarity.

        Args:
            text: token ids (b, n) or strings (needs a CLIP adapter); or give `text_embed`
                (+ `text_encodings`) directly.
            num_samples_per_batch: candidates per caption; the one with the highest cosine similarity
                to the text embedding is kept (unCLIP sec. 2.2).
            cond_scale: classifier-free guidance scale.
            timesteps: the reference's name of `steps`.
            steps, sampler, eta, callback, progress: as in :meth:`p_sample_loop`.
            generator: noise source; the same seed gives the same embeddings.
            negative_prompt: text to steer away from: one string for every caption, one per caption,
                or token ids (b, n). It replaces the unconditional branch of classifier-free
                guidance (so cond_scale must not be 1); it also works for priors without an
                unconditional branch (LAION's 1.1.0-era prior). Or give `negative_text_embed`
                (b or 1, d) (+ `negative_text_encodings`) directly.

        Returns:
            (b, image_embed_dim) image embeddings.
        """
        if isinstance(num_samples_per_batch, bool) or not isinstance(num_samples_per_batch, int) or num_samples_per_batch < 1:
            raise ValueError(f"num_samples_per_batch must be a positive integer, got {num_samples_per_batch!r}")
        if text is not None:
            if text_embed is not None:
                raise ValueError("give either `text` or `text_embed`, not both")
            text_embed, encodings = self.embed_text(text)
            text_encodings = default(text_encodings, encodings)
        if text_embed is None:
            raise ValueError("sample needs `text` or `text_embed`")
        b, r = text_embed.shape[0], num_samples_per_batch
        cond = repeat_condition(text_embed, text_encodings, r)
        negative = self._negative_cond(negative_prompt, negative_text_embed, negative_text_encodings, b)
        embeds = self.p_sample_loop(
            (b * r, self.image_embed_dim), cond, cond_scale, timesteps, steps=steps, sampler=sampler,
            generator=generator, eta=eta, callback=callback, progress=progress,
            negative_cond=None if negative is None else repeat_condition(*negative, r),
        )
        if r == 1:
            return embeds
        embeds = embeds.reshape(b, r, -1)
        sims = torch.einsum("b r d, b d -> b r", F.normalize(embeds, dim=-1), F.normalize(text_embed, dim=-1))
        best = sims.argmax(dim=-1)
        return embeds[torch.arange(b, device=embeds.device), best]

    def _negative_cond(
        self, prompt: Any, text_embed: torch.Tensor | None, text_encodings: torch.Tensor | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(text_embed (batch, d), text_encodings or None) of negative prompts, or None."""
        return negative_condition(prompt, text_embed, text_encodings, batch, self.embed_text, self.condition_on_text_encodings)

    # ------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_checkpoint(cls, path, config=None, *, clip=None, map_location="cpu", strict: bool = True) -> "DiffusionPrior":
        """Loads a prior saved by the reference package (1.1.0 or 1.15.6 layouts) or by us.

        See :func:`dalle2_pytorch.compat.prior_loading.load_prior`.
        """
        # loading lives above the models (compat/); imported by name so the models never import it
        loading = importlib.import_module("dalle2_pytorch.compat.prior_loading")
        return loading.load_prior(path, config, clip=clip, map_location=map_location, strict=strict)

    @classmethod
    def from_pretrained(cls, name_or_path, **kwargs: Any) -> "DiffusionPrior":
        """Loads by name ("laion/dalle2"), model folder, export folder, file or Hub repo id of our
        exports (huggingface_hub cache, checksums, HF_HUB_OFFLINE). See
        :func:`dalle2_pytorch.compat.pretrained.load_prior`."""
        return importlib.import_module("dalle2_pytorch.compat.pretrained").load_prior(name_or_path, **kwargs)

