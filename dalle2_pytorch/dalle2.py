"""DALLE2: text -> prior (CLIP image embedding) -> decoder cascade -> images (unCLIP, Ramesh et al. 2022, fig. 2).

Also image variations (unCLIP sec. 3.1): an image's CLIP embedding decoded again with new noise, and
(:mod:`dalle2_pytorch.chain_edits`) interpolations, text diffs, weighted mixes and inpainting.

Fixed decoder noise: ``decode(..., noise_seed=)`` decodes each row on its own with a fresh
``torch.Generator().manual_seed(seed)``, so the starting noise *and* every per-step draw of a
stochastic sampler are the same for every row given the same seed, whatever the batch: the frames of
an interpolation differ only by their embeddings (unCLIP sec. 3.2), and an image decoded with a seed
is reproduced alone. The price is one decoder pass per row instead of one per batch.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dalle2_pytorch.chain_edits import ChainInput, LatentEditsMixin, check_prompts, image_batch, is_prompt, noise_seeds
from dalle2_pytorch.decoder import Decoder
from dalle2_pytorch.diffusion.steps import resolve_steps
from dalle2_pytorch.prior import DiffusionPrior

__all__ = ["DALLE2", "to_pil_images"]

StageSteps = int | Sequence[int | None] | None
StageSamplers = str | Sequence[str | None] | None


def to_pil_images(images: torch.Tensor) -> list:
    """(b, c, h, w) in [0, 1] -> list of PIL images."""
    from PIL import Image

    arr = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arr]


class DALLE2(LatentEditsMixin, nn.Module):
    """The full text-to-image chain.

    Args:
        prior: a DiffusionPrior with a CLIP adapter attached (it tokenises and embeds the text);
            may be None for a chain used only for image variations.
        decoder: a Decoder; text-conditioned Unets get the text encodings of the same CLIP.
        prior_num_samples: candidates per caption for the prior's CLIP reranking.
        prior_sampler, decoder_sampler: default sampler names (extension; None: each model's own
            default, which for reference models is DDPM at T steps and DDIM with fewer).
    """

    def __init__(
        self,
        *,
        prior: DiffusionPrior | None,
        decoder: Decoder,
        prior_num_samples: int = 2,
        prior_sampler: str | None = None,
        decoder_sampler: StageSamplers = None,
    ):
        super().__init__()
        if prior is not None and not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior must be a DiffusionPrior, got {type(prior).__name__}")
        if not isinstance(decoder, Decoder):
            raise TypeError(f"decoder must be a Decoder, got {type(decoder).__name__}")
        self.prior = prior
        self.decoder = decoder
        self.prior_num_samples = prior_num_samples
        self.prior_sampler = prior_sampler
        self.decoder_sampler = decoder_sampler

    @property
    def clip(self) -> Any:
        """The CLIP adapter of the chain (the prior's, else the decoder's)."""
        clip = self.prior.clip if self.prior is not None else None
        return clip if clip is not None else self.decoder.clip

    def _require_clip(self, what: str) -> Any:
        if self.clip is None:
            raise ValueError(f"{what} needs a CLIP adapter attached to the prior or the decoder")
        return self.clip

    def _decoder_text(self, tokens: torch.Tensor | None, text_encodings: torch.Tensor | None) -> torch.Tensor | None:
        """Text encodings for text-conditioned decoders (the decoder's own CLIP when it has one)."""
        if not self.decoder.condition_on_text_encodings:
            return None
        if self.decoder.clip is not None and tokens is not None:
            return self.decoder.clip.embed_text(tokens.to(self.decoder.device)).text_encodings
        if text_encodings is None and tokens is not None and self.clip is not None:
            return self.clip.embed_text(tokens.to(self.decoder.device)).text_encodings
        if text_encodings is None:
            raise ValueError("this decoder is conditioned on text: give a caption (tokens) or text_encodings")
        return text_encodings

    @torch.no_grad()
    def decode(
        self,
        image_embed: torch.Tensor,
        *,
        tokens: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        cond_scale: float | Sequence[float] = 1.0,
        steps: StageSteps = None,
        sampler: StageSamplers = None,
        generator: torch.Generator | None = None,
        noise_seed: int | Sequence[int] | None = None,
        callback: Callable | None = None,
        progress: bool | None = False,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
        inpaint_resample_times: int = 5,
    ) -> torch.Tensor:
        """Images (b, c, s, s) in [0, 1] from CLIP image embeddings (b, d) through the decoder cascade.

        Args:
            image_embed: (b, d) CLIP image embeddings.
            tokens, text_encodings: the caption for text-conditioned decoders (token ids (b, n)
                of the chain's CLIP, or encodings (b, n, d_text)).
            cond_scale, steps, sampler, callback, progress: as in :meth:`Decoder.sample`.
            generator: noise source of the whole batch (when `noise_seed` is None).
            noise_seed: fixed decoder noise: one seed for every row or one per row; row i is then
                decoded alone with ``torch.Generator().manual_seed(seed_i)`` (see the module docstring).
            inpaint_image, inpaint_mask, inpaint_resample_times: RePaint inpainting (b, c, h, w) in
                [0, 1] and (b, h, w) bool, True = keep (see :meth:`Decoder.sample`).
        """
        text = self._decoder_text(tokens, text_encodings)
        kwargs = dict(
            cond_scale=cond_scale, steps=steps, sampler=sampler if sampler is not None else self.decoder_sampler,
            callback=callback, progress=progress, inpaint_resample_times=inpaint_resample_times,
        )
        if noise_seed is None:
            return self.decoder.sample(image_embed=image_embed, text_encodings=text, generator=generator,
                                       inpaint_image=inpaint_image, inpaint_mask=inpaint_mask, **kwargs)
        seeds = noise_seeds(noise_seed, image_embed.shape[0])
        row = lambda x, i: None if x is None else x[i : i + 1]  # noqa: E731
        return torch.cat([
            self.decoder.sample(
                image_embed=image_embed[i : i + 1], text_encodings=row(text, i), inpaint_image=row(inpaint_image, i),
                inpaint_mask=row(inpaint_mask, i), generator=torch.Generator().manual_seed(seed), **kwargs,
            )
            for i, seed in enumerate(seeds)
        ])

    def _prior_embed(
        self,
        text: str | Sequence[str] | torch.Tensor,
        *,
        generator: torch.Generator | None,
        prior_cond_scale: float,
        prior_steps: int | None,
        prior_sampler: str | None,
        negative_prompt: str | Sequence[str] | None,
        progress: bool | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(tokens (b, n), text_encodings (b, n, d_text), image_embed (b, d)) of captions through the prior."""
        if self.prior is None:
            raise ValueError("text prompts need a prior: this DALLE2 was built with prior=None")
        tokens = self.prior.tokenize(text)
        text_embed, text_encodings = self.prior.embed_text(tokens)
        image_embed = self.prior.sample(
            text_embed=text_embed,
            text_encodings=text_encodings if self.prior.condition_on_text_encodings else None,
            num_samples_per_batch=self.prior_num_samples, cond_scale=prior_cond_scale, steps=prior_steps,
            sampler=prior_sampler if prior_sampler is not None else self.prior_sampler,
            generator=generator, progress=progress, negative_prompt=negative_prompt,
        )
        return tokens, text_encodings, image_embed

    @torch.no_grad()
    def embed(
        self,
        inputs: ChainInput | Sequence[ChainInput],
        *,
        generator: torch.Generator | None = None,
        prior_cond_scale: float = 1.0,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        negative_prompt: str | None = None,
        progress: bool | None = False,
    ) -> torch.Tensor:
        """CLIP image embeddings (n, d) of prompts and images (mixed allowed), in order.

        A prompt (a `str`) goes through the prior, one prompt per prior call drawing from
        `generator` in input order, so the first prompt's embedding equals the one
        :meth:`forward` draws with the same generator. An image (a (c, h, w) or (1, c, h, w) tensor
        in [0, 1], a PIL image or an image file path as `os.PathLike`) is embedded by CLIP.

        Args:
            inputs: one input or a sequence of them.
            generator, prior_cond_scale, prior_steps, prior_sampler, negative_prompt, progress: the
                prior's sampling settings (as in :meth:`forward`).
        """
        items = [inputs] if isinstance(inputs, (str, os.PathLike)) or not isinstance(inputs, Sequence) else list(inputs)
        if not items:
            raise ValueError("embed needs at least one prompt or image")
        was_training = self.training
        self.eval()
        try:
            embeds = []
            for item in items:
                if is_prompt(item):
                    check_prompts(item)
                    embeds.append(self._prior_embed(
                        item, generator=generator, prior_cond_scale=prior_cond_scale, prior_steps=prior_steps,
                        prior_sampler=prior_sampler, negative_prompt=negative_prompt, progress=progress,
                    )[2])
                else:
                    clip = self._require_clip("embedding images")
                    embeds.append(clip.embed_image(image_batch(item).to(self.decoder.device)).image_embed)
        finally:
            self.train(was_training)
        return torch.cat([e.to(embeds[0].device) for e in embeds])

    @torch.no_grad()
    def forward(
        self,
        text: str | Sequence[str] | torch.Tensor,
        cond_scale: float | Sequence[float] = 1.0,
        prior_cond_scale: float = 1.0,
        return_pil_images: bool = False,
        *,
        generator: torch.Generator | None = None,
        prior_steps: int | None = None,
        decoder_steps: StageSteps = None,
        prior_sampler: str | None = None,
        decoder_sampler: StageSamplers = None,
        prior_timesteps: int | None = None,
        decoder_timesteps: StageSteps = None,
        callback: Callable | None = None,
        progress: bool | None = False,
        negative_prompt: str | Sequence[str] | None = None,
        decoder_noise_seed: int | Sequence[int] | None = None,
    ):
        """Generates one image per caption.

        Args:
            text: a caption, a list of captions, or token ids (b, n) of the prior's CLIP.
            cond_scale: decoder guidance scale (one value or one per Unet).
            prior_cond_scale: prior guidance scale.
            return_pil_images: return PIL images instead of a tensor.
            generator: noise source for prior and decoder; a fixed seed reproduces the images.
            prior_steps, decoder_steps: sampling steps (defaults: the models' own); the decoder's
                may be one per Unet. `prior_timesteps` / `decoder_timesteps` are accepted aliases.
            prior_sampler, decoder_sampler: sampler names (defaults: the chain's, else the models').
            callback: the decoder's progress callback `(stage_index, step, num_steps)`.
            progress: progress bars (None: when stderr is a terminal).
            negative_prompt: text the prior steers away from (one for every caption, or one per
                caption); replaces the prior's unconditional guidance branch, so it needs
                `prior_cond_scale` != 1 (see :meth:`DiffusionPrior.sample`).
            decoder_noise_seed: fixed decoder noise (one seed, or one per caption): each image is
                decoded alone with a generator of that seed (see :meth:`decode`); the prior still
                draws from `generator`.

        Returns:
            (b, c, s, s) images in [0, 1] (or PIL images); a single caption string gives one image.
        """
        if self.prior is None:
            raise ValueError("text-to-image needs a prior: this DALLE2 was built with prior=None")
        single = isinstance(text, str)
        check_prompts(text)
        was_training = self.training
        self.eval()
        try:
            tokens, text_encodings, image_embed = self._prior_embed(
                text, generator=generator, prior_cond_scale=prior_cond_scale,
                prior_steps=resolve_steps(prior_steps, prior_timesteps), prior_sampler=prior_sampler,
                negative_prompt=negative_prompt, progress=progress,
            )
            images = self.decode(
                image_embed, tokens=tokens, text_encodings=text_encodings, cond_scale=cond_scale,
                steps=_stage_steps(decoder_steps, decoder_timesteps), sampler=decoder_sampler, generator=generator,
                noise_seed=decoder_noise_seed, callback=callback, progress=progress,
            )
        finally:
            self.train(was_training)
        if return_pil_images:
            pils = to_pil_images(images)
            return pils[0] if single else pils
        return images[0] if single else images

    @torch.no_grad()
    def variations(
        self,
        images: torch.Tensor | Sequence[ChainInput],
        num_variations: int = 1,
        *,
        captions: Sequence[str] | None = None,
        cond_scale: float | Sequence[float] = 1.0,
        decoder_steps: StageSteps = None,
        decoder_sampler: StageSamplers = None,
        generator: torch.Generator | None = None,
        decoder_noise_seed: int | None = None,
        progress: bool | None = False,
    ) -> torch.Tensor:
        """Image variations (unCLIP sec. 3.1): each image's CLIP embedding decoded with new noise.

        Args:
            images: (b, c, h, w) in [0, 1] (resized to the CLIP's input size by the adapter), or a
                sequence of images (tensors, PIL images, file paths as `os.PathLike`).
            num_variations: variations per image.
            captions: one caption per image for text-conditioned decoders (default: none needed;
                a text-conditioned decoder then gets an empty caption).
            cond_scale, decoder_steps, decoder_sampler, generator, progress: as in :meth:`forward`.
            decoder_noise_seed: fixed decoder noise: variation k of every image is decoded with
                seed ``decoder_noise_seed + k`` (see :meth:`decode`), so images are compared under
                the same noise and one variation is reproduced alone; None draws the batch from
                `generator`.

        Returns:
            (b * num_variations, c, s, s) in [0, 1], the variations of image i at rows
            i * num_variations ... (i + 1) * num_variations - 1.
        """
        if isinstance(num_variations, bool) or not isinstance(num_variations, int) or num_variations < 1:
            raise ValueError(f"num_variations must be a positive integer, got {num_variations!r}")
        clip = self._require_clip("image variations")
        images = image_batch(images)
        was_training = self.training
        self.eval()
        try:
            # one image at a time: an image's variations do not depend on the rest of the batch
            images = images.to(self.decoder.device)
            image_embed = torch.cat([clip.embed_image(images[i : i + 1]).image_embed for i in range(images.shape[0])])
            image_embed = image_embed.repeat_interleave(num_variations, dim=0)
            tokens = self._caption_tokens(captions, images.shape[0], num_variations)
            seeds = None
            if decoder_noise_seed is not None:
                seeds = [s + k for s in noise_seeds(decoder_noise_seed, images.shape[0]) for k in range(num_variations)]
            return self.decode(
                image_embed, tokens=tokens, cond_scale=cond_scale, steps=decoder_steps, sampler=decoder_sampler,
                generator=generator, noise_seed=seeds, progress=progress,
            )
        finally:
            self.train(was_training)

    def _caption_tokens(self, captions: Sequence[str] | None, batch: int, repeat: int = 1) -> torch.Tensor | None:
        """Token ids (batch * repeat, n) of the captions a text-conditioned decoder gets (empty
        captions by default); None for decoders without text conditioning."""
        if not self.decoder.condition_on_text_encodings:
            return None
        texts = list(captions) if captions is not None else [""] * batch
        if len(texts) != batch:
            raise ValueError(f"{len(texts)} captions given for {batch} images")
        clip = self._require_clip("captions for a text-conditioned decoder")
        return clip.tokenize([t for t in texts for _ in range(repeat)]).to(self.decoder.device)

    # ------------------------------------------------------------------------------- checkpoints
    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> "DALLE2":
        """A DALLE2 by name ("laion/dalle2"), from a Hub repo id of our exports or a local folder.

        See :func:`dalle2_pytorch.compat.pretrained.load_dalle2`.
        """
        # loading lives above the chain (compat/); imported by name so the chain never imports it
        return importlib.import_module("dalle2_pytorch.compat.pretrained").load_dalle2(name_or_path, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> Any:
        """Writes the chain as a model folder (``dalle2.json``, ``prior/``, ``decoder/``) that
        :meth:`from_pretrained` and ``dream --model-dir`` read (the `[train]` extra). See
        :func:`dalle2_pytorch.training.export.export_dalle2`."""
        return importlib.import_module("dalle2_pytorch.training.export").export_dalle2(self, directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Uploads :meth:`save_pretrained`'s folder to a Hugging Face Hub repo. See
        :func:`dalle2_pytorch.training.export.push_to_hub`."""
        return importlib.import_module("dalle2_pytorch.training.export").push_to_hub(self, repo_id, **kwargs)


def _stage_steps(steps: StageSteps, alias: StageSteps) -> StageSteps:
    if steps is not None and alias is not None:
        raise ValueError("give either decoder_steps or its alias decoder_timesteps, not both")
    return steps if steps is not None else alias
