"""A CLIP stand-in needing no optional package (the base install has none): hashed words, an
embedding table, mean pooling; images pooled through a linear map. Only for tests of the plumbing."""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_pytorch.clip_adapters.base import BaseClipAdapter, EmbeddedImage, EmbeddedText


class HashClipAdapter(BaseClipAdapter):
    def __init__(self, dim: int = 16, max_len: int = 8, vocab: int = 64, image_size: int = 16, seed: int = 0):
        torch.manual_seed(seed)
        clip = nn.Module()
        clip.tokens = nn.Embedding(vocab, dim)
        clip.image = nn.Linear(3, dim)
        self._dim, self._max_len, self._vocab, self._image_size = dim, max_len, vocab, image_size
        super().__init__(clip, tokenizer=self._tokenize)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        ids = [[1 + zlib.crc32(w.encode()) % (self._vocab - 1) for w in t.lower().split()][: self._max_len] for t in texts]
        return [row + [0] * (self._max_len - len(row)) for row in ids]

    @property
    def dim_latent(self) -> int:
        return self._dim

    @property
    def text_encodings_dim(self) -> int:
        return self._dim

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def image_channels(self) -> int:
        return 3

    @property
    def max_text_len(self) -> int:
        return self._max_len

    def embed_text(self, tokens: torch.Tensor) -> EmbeddedText:
        tokens = self._check_tokens(tokens)
        mask = (tokens != 0)[..., None]
        enc = self.clip.tokens(tokens) * mask
        pooled = enc.sum(1) / mask.sum(1).clamp(min=1)
        return EmbeddedText(F.normalize(pooled, dim=-1), enc)

    def embed_image(self, images: torch.Tensor) -> EmbeddedImage:
        images = self.validate_and_resize_image(images)
        return EmbeddedImage(F.normalize(self.clip.image(images.mean(dim=(2, 3))), dim=-1), None)
