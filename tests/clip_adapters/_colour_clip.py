"""A hand-built CLIP adapter with known embeddings, for known-answer tests of the CLIP score."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_pytorch.clip_adapters.base import BaseClipAdapter, EmbeddedImage, EmbeddedText

# caption -> text embedding direction in RGB space
_TEXT = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "not red": (-1.0, 0.0, 0.0),
    "grey": (1.0, 1.0, 1.0),
}


class ColourClipAdapter(BaseClipAdapter):
    """Image embedding: the image's mean RGB colour; text embedding: a fixed RGB direction per caption."""

    def __init__(self) -> None:
        self._captions = list(_TEXT)
        clip = nn.Module()
        clip.table = nn.Embedding(len(_TEXT) + 1, 3)
        with torch.no_grad():
            clip.table.weight[1:] = torch.tensor(list(_TEXT.values()))
        super().__init__(clip, tokenizer=lambda texts: [[1 + self._captions.index(t)] for t in texts])

    dim_latent = text_encodings_dim = image_channels = 3
    image_size = 8
    max_text_len = 1

    def embed_text(self, tokens: torch.Tensor) -> EmbeddedText:
        enc = self.clip.table(self._check_tokens(tokens))
        return EmbeddedText(F.normalize(enc[:, 0], dim=-1), enc)

    def embed_image(self, images: torch.Tensor) -> EmbeddedImage:
        return EmbeddedImage(F.normalize(self.validate_and_resize_image(images).mean(dim=(2, 3)), dim=-1), None)


def solid(rgb: tuple[float, float, float], size: int) -> torch.Tensor:
    """A (3, size, size) image of one colour."""
    return torch.tensor(rgb, dtype=torch.float32).view(3, 1, 1).expand(3, size, size).clone()
