"""DALLE2: text -> prior (CLIP image embedding) -> decoder cascade -> images (unCLIP, Ramesh et al. 2022, fig. 2)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dalle2_pytorch.decoder import Decoder
from dalle2_pytorch.prior import DiffusionPrior

__all__ = ["DALLE2", "to_pil_images"]


def to_pil_images(images: torch.Tensor) -> list:
    """(b, c, h, w) in [0, 1] -> list of PIL images."""
    from PIL import Image

    arr = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arr]


class DALLE2(nn.Module):
    """The full text-to-image chain.

    Args:
        prior: a DiffusionPrior with a CLIP adapter attached (it tokenises and embeds the text).
        decoder: a Decoder; text-conditioned Unets get the text encodings of the same CLIP.
        prior_num_samples: candidates per caption for the prior's CLIP reranking.
    """

    def __init__(self, *, prior: DiffusionPrior, decoder: Decoder, prior_num_samples: int = 2):
        super().__init__()
        if not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior must be a DiffusionPrior, got {type(prior).__name__}")
        if not isinstance(decoder, Decoder):
            raise TypeError(f"decoder must be a Decoder, got {type(decoder).__name__}")
        self.prior = prior
        self.decoder = decoder
        self.prior_num_samples = prior_num_samples

    @torch.no_grad()
    def forward(
        self,
        text: str | Sequence[str] | torch.Tensor,
        cond_scale: float | Sequence[float] = 1.0,
        prior_cond_scale: float = 1.0,
        return_pil_images: bool = False,
        *,
        generator: torch.Generator | None = None,
        prior_timesteps: int | None = None,
        decoder_timesteps: int | Sequence[int | None] | None = None,
        callback=None,
    ):
        """Generates one image per caption.

        Args:
            text: a caption, a list of captions, or token ids (b, n) of the prior's CLIP.
            cond_scale: decoder guidance scale (one value or one per Unet).
            prior_cond_scale: prior guidance scale.
            return_pil_images: return PIL images instead of a tensor.
            generator: noise source for prior and decoder; a fixed seed reproduces the images.
            prior_timesteps, decoder_timesteps: sampling steps (defaults: the models' own).

        Returns:
            (b, c, s, s) images in [0, 1] (or PIL images); a single caption string gives one image.
        """
        single = isinstance(text, str)
        was_training = self.training
        self.eval()
        try:
            tokens = self.prior.tokenize(text)
            text_embed, text_encodings = self.prior.embed_text(tokens)
            image_embed = self.prior.sample(
                text_embed=text_embed, text_encodings=text_encodings if self.prior.condition_on_text_encodings else None,
                num_samples_per_batch=self.prior_num_samples, cond_scale=prior_cond_scale,
                timesteps=prior_timesteps, generator=generator,
            )
            decoder_text = None
            if self.decoder.condition_on_text_encodings:
                decoder_text = self.decoder.clip.embed_text(tokens).text_encodings if self.decoder.clip is not None else text_encodings
            images = self.decoder.sample(
                image_embed=image_embed, text_encodings=decoder_text, cond_scale=cond_scale,
                generator=generator, timesteps=decoder_timesteps, callback=callback,
            )
        finally:
            self.train(was_training)
        if return_pil_images:
            pils = to_pil_images(images)
            return pils[0] if single else pils
        return images[0] if single else images
