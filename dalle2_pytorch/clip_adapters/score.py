"""CLIP score: how well images match their captions under a CLIP adapter.

CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning", eq. 1) is ``w * max(cos(E_image, E_text), 0)``; the paper takes ``w = 2.5``. We use
``w = 100``, the convention of torchmetrics' ``CLIPScore`` and of text-to-image papers:

    CLIP score = 100 * max(cos(image_embed, text_embed), 0)          in [0, 100]

computed with the package's own adapter (any :class:`BaseClipAdapter`: the model's own CLIP), so it
needs no downloaded Hugging Face CLIP and runs offline. Scores are only comparable between runs that
use the same CLIP.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dalle2_pytorch.clip_adapters.base import BaseClipAdapter

__all__ = ["CLIP_SCORE_WEIGHT", "clip_cosine", "clip_score", "clip_score_from_cosine"]

#: the scale w of the score (Hessel et al. use 2.5; torchmetrics and text-to-image papers use 100)
CLIP_SCORE_WEIGHT = 100.0


def clip_score_from_cosine(cosine: Tensor) -> Tensor:
    """``100 * max(cos, 0)`` elementwise: (b,) cosine similarities -> (b,) CLIP scores in [0, 100]."""
    return CLIP_SCORE_WEIGHT * cosine.clamp(min=0)


@torch.no_grad()
def clip_cosine(clip: BaseClipAdapter, images: Tensor, captions: Sequence[str]) -> Tensor:
    """Cosine similarity between each image's and its caption's CLIP embedding.

    Args:
        clip: the CLIP adapter (resizes the images to its input size; images smaller than it are
            first enlarged, bicubic, as CLIP preprocessors do).
        images: (b, c, h, w) in [0, 1].
        captions: b strings, one per image.

    Returns:
        (b,) float32 cosines on the images' device.
    """
    captions = [captions] if isinstance(captions, str) else list(captions)
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError("images must be a (batch, channels, height, width) tensor in [0, 1]")
    if images.shape[0] != len(captions):
        raise ValueError(f"need one caption per image, got {images.shape[0]} images and {len(captions)} captions")
    pixels = images.to(clip.device, torch.float32)
    height, width = clip.image_hw
    if pixels.shape[-2] < height or pixels.shape[-1] < width:  # the adapter only shrinks: enlarge small samples
        scale = max(height / pixels.shape[-2], width / pixels.shape[-1])
        size = (max(height, round(pixels.shape[-2] * scale)), max(width, round(pixels.shape[-1] * scale)))
        pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    image_embed = clip.embed_image(pixels).image_embed
    text_embed = clip.embed_text(clip.tokenize(captions)).text_embed
    return F.cosine_similarity(image_embed.float(), text_embed.float(), dim=-1).to(images.device)


def clip_score(clip: BaseClipAdapter, images: Tensor, captions: Sequence[str]) -> Tensor:
    """Per-image CLIP score ``100 * max(cos(image_embed, text_embed), 0)`` (see the module docstring).

    Args:
        clip: the CLIP adapter.
        images: (b, c, h, w) in [0, 1].
        captions: b strings.

    Returns:
        (b,) scores in [0, 100]; average them for a data set's score.
    """
    return clip_score_from_cosine(clip_cosine(clip, images, captions))
