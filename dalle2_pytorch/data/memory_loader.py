"""Decoder training data decoded once and kept in memory (extension: `data.cache_in_memory`).

For datasets that fit in RAM (the demo's 10,000 images of 64 px are 123 MB as bytes), reading and
decoding every PNG again each epoch costs more than a small Unet's training step needs. This
loader reads its split once through :class:`.decoder_loader.ImageEmbeddingDataset` (so shard
placement per rank, embedding lookup and skipping bad samples are the streaming loader's), keeps
the images (as uint8 when the preprocessing is only ``ToTensor`` of 8-bit images, which is exact),
embeddings and extras, and serves batches of a fresh permutation each epoch, seeded by
``(seed, rank, epoch)``: a resumed run skips the consumed batches of the same order.

Yields what the streaming loader yields: ``(images (b, c, h, w) float in [0, 1], {"img": (b, d),
"text": (b, d)}, *extras)`` with string extras as lists.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import torch

from .counters import SkipCounter
from .decoder_loader import ImageEmbeddingDataset

__all__ = ["InMemoryDecoderLoader"]

logger = logging.getLogger(__name__)


class InMemoryDecoderLoader:
    """Batches from a split decoded once (see the module docstring).

    Args:
        dataset: the streaming dataset of this split (its shard placement, embeddings and extras).
        batch_size: samples per batch (the last batch of an epoch may be smaller).
        shuffle: a new permutation each epoch (else the stored order).
        seed: base seed of the permutations.
        exact_uint8: store images as uint8 (only valid when they are k/255 values, e.g. plain
            ``ToTensor`` of 8-bit images; checked on the first sample, float32 otherwise).
    """

    def __init__(self, dataset: ImageEmbeddingDataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 exact_uint8: bool = True) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.exact_uint8 = exact_uint8
        self._next_epoch = 0
        self._data: tuple[torch.Tensor, dict[str, torch.Tensor], list[list[Any]]] | None = None

    @property
    def skipped(self) -> SkipCounter:
        return self.dataset.skipped

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self._load()[0])
        return (n + self.batch_size - 1) // self.batch_size

    def _load(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[list[Any]]]:
        if self._data is not None:
            return self._data
        self.dataset.set_epoch(0)
        self.dataset.shuffle_shards = False  # the stored order does not matter; permutations do the shuffling
        images: list[torch.Tensor] = []
        embeddings: dict[str, list[torch.Tensor]] = {}
        extras: list[list[Any]] = [[] for _ in self.dataset.extra_keys]
        as_uint8 = self.exact_uint8
        for image, emb, *rest in self.dataset:
            if as_uint8 and not images:
                as_uint8 = bool(torch.equal((image * 255).round() / 255, image))
            images.append((image * 255).round().to(torch.uint8) if as_uint8 else image.float())
            for name, vector in emb.items():
                embeddings.setdefault(name, []).append(vector)
            for column, value in zip(extras, rest):
                column.append(value)
        if not images:
            raise ValueError("the split yielded no sample to keep in memory (see the skipped-sample warnings)")
        stacked = torch.stack(images)
        logger.info("decoded %d samples into memory (%.0f MB)", len(images),
                    stacked.numel() * stacked.element_size() / 2**20)
        self._data = (stacked, {k: torch.stack(v) for k, v in embeddings.items()}, extras)
        return self._data

    def __iter__(self) -> Iterator[tuple]:
        images, embeddings, extras = self._load()
        epoch = self._next_epoch
        self._next_epoch += 1
        n = images.shape[0]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.dataset.rank * 7919 + epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            batch = images[index]
            batch = batch.float() / 255 if batch.dtype == torch.uint8 else batch
            emb = {k: v[index] for k, v in embeddings.items()}
            rows = index.tolist()
            yield (batch, emb, *[[column[i] for i in rows] for column in extras])
