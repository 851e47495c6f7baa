"""DALLE2: text -> prior (CLIP image embedding) -> decoder cascade -> images (unCLIP, Ramesh et al. 2022, fig. 2).

Also image variations (unCLIP sec. 3.1): an image's CLIP embedding decoded again with new noise.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

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


class DALLE2(nn.Module):
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
        callback: Callable | None = None,
        progress: bool | None = False,
    ) -> torch.Tensor:
        """Images (b, c, s, s) in [0, 1] from CLIP image embeddings (b, d) through the decoder cascade."""
        return self.decoder.sample(
            image_embed=image_embed, text_encodings=self._decoder_text(tokens, text_encodings), cond_scale=cond_scale,
            generator=generator, steps=steps, sampler=sampler if sampler is not None else self.decoder_sampler,
            callback=callback, progress=progress,
        )

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

        Returns:
            (b, c, s, s) images in [0, 1] (or PIL images); a single caption string gives one image.
        """
        if self.prior is None:
            raise ValueError("text-to-image needs a prior: this DALLE2 was built with prior=None")
        single = isinstance(text, str)
        _check_prompts(text)
        was_training = self.training
        self.eval()
        try:
            tokens = self.prior.tokenize(text)
            text_embed, text_encodings = self.prior.embed_text(tokens)
            image_embed = self.prior.sample(
                text_embed=text_embed,
                text_encodings=text_encodings if self.prior.condition_on_text_encodings else None,
                num_samples_per_batch=self.prior_num_samples, cond_scale=prior_cond_scale,
                steps=resolve_steps(prior_steps, prior_timesteps),
                sampler=prior_sampler if prior_sampler is not None else self.prior_sampler,
                generator=generator, progress=progress,
            )
            images = self.decode(
                image_embed, tokens=tokens, text_encodings=text_encodings, cond_scale=cond_scale,
                steps=_stage_steps(decoder_steps, decoder_timesteps), sampler=decoder_sampler, generator=generator,
                callback=callback, progress=progress,
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
        images: torch.Tensor,
        num_variations: int = 1,
        *,
        captions: Sequence[str] | None = None,
        cond_scale: float | Sequence[float] = 1.0,
        decoder_steps: StageSteps = None,
        decoder_sampler: StageSamplers = None,
        generator: torch.Generator | None = None,
        progress: bool | None = False,
    ) -> torch.Tensor:
        """Image variations (unCLIP sec. 3.1): each image's CLIP embedding decoded with new noise.

        Args:
            images: (b, c, h, w) in [0, 1] (resized to the CLIP's input size by the adapter).
            num_variations: variations per image.
            captions: one caption per image for text-conditioned decoders (default: none needed;
                a text-conditioned decoder then gets an empty caption).
            cond_scale, decoder_steps, decoder_sampler, generator, progress: as in :meth:`forward`.

        Returns:
            (b * num_variations, c, s, s) in [0, 1], the variations of image i at rows
            i * num_variations ... (i + 1) * num_variations - 1.
        """
        if isinstance(num_variations, bool) or not isinstance(num_variations, int) or num_variations < 1:
            raise ValueError(f"num_variations must be a positive integer, got {num_variations!r}")
        clip = self._require_clip("image variations")
        if not torch.is_tensor(images) or images.ndim != 4:
            raise ValueError("images must be a (batch, channels, height, width) tensor in [0, 1]")
        was_training = self.training
        self.eval()
        try:
            image_embed = clip.embed_image(images.to(self.decoder.device)).image_embed
            image_embed = image_embed.repeat_interleave(num_variations, dim=0)
            tokens = None
            if self.decoder.condition_on_text_encodings:
                texts = list(captions) if captions is not None else [""] * images.shape[0]
                if len(texts) != images.shape[0]:
                    raise ValueError(f"{len(texts)} captions given for {images.shape[0]} images")
                tokens = clip.tokenize([t for t in texts for _ in range(num_variations)]).to(self.decoder.device)
            return self.decode(
                image_embed, tokens=tokens,
                text_encodings=None if tokens is None else clip.embed_text(tokens).text_encodings,
                cond_scale=cond_scale, steps=decoder_steps, sampler=decoder_sampler, generator=generator,
                progress=progress,
            )
        finally:
            self.train(was_training)


def _check_prompts(text: Any) -> None:
    if torch.is_tensor(text):
        return
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError("prompts must be non-empty strings")


def _stage_steps(steps: StageSteps, alias: StageSteps) -> StageSteps:
    if steps is not None and alias is not None:
        raise ValueError("give either decoder_steps or its alias decoder_timesteps, not both")
    return steps if steps is not None else alias
