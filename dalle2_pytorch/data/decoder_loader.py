"""Decoder training data: webdataset shards of images + captions, optionally with precomputed CLIP
embeddings (the reference's `ImageEmbeddingDataset` / `create_image_embedding_dataloader`).

Each shard is a tar of samples `KEY.jpg` (or png/jpeg/webp), `KEY.txt`, ... Precomputed
embeddings live in per-shard files (`img_emb/img_emb_0003.npy` for shard `…0003.tar`, see
:mod:`.embedding_files`); the row of a sample is the integer formed by the last `index_width`
characters of its key (all of it when `index_width` is None), the img2dataset convention.

Pipeline per consumer (one DataLoader worker of one rank):

1. shard list: shuffled with a seed shared by all ranks (`seed`, `epoch`) and placed on
   ranks/workers with :func:`.shards.consumer_split` (disjoint shards, or disjoint samples when
   there are fewer shards than consumers); or, with `resample=True`, shards drawn with replacement
   from a per-consumer seeded RNG (infinite stream);
2. tar reading (webdataset's tar iterator), grouping files into samples by key;
3. optional sample shuffle buffer;
4. image decoding (RGB), embedding lookup, extra keys, preprocessing.

A sample that fails in step 4 and a shard that fails in step 2 (unreadable, truncated) are
skipped and counted by a :class:`.counters.SkipCounter` (readable from the main process as
`loader.skipped` / `dataset.skipped`), unless a webdataset-style `handler` says otherwise.

Yields `(image, emb, *extras)` like the reference: image (c, h, w) float in [0, 1]; emb a dict
with `"img"` and/or `"text"` (d,) float32 embeddings (empty without precomputed embeddings);
extras in the order of `extra_keys` (`txt` decoded to str).
"""

from __future__ import annotations

import io
import json
import logging
import random
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from .counters import SkipCounter
from .embedding_files import list_shard_files, load_npy
from .shards import (
    buffered_shuffle,
    consumer_split,
    distributed_info,
    expand_urls,
    shard_number,
    shard_urls_from_template,
    split_shards,
)
from .transforms import build_image_preprocessing, pil_to_tensor

__all__ = [
    "DecoderDataLoader",
    "ImageEmbeddingDataset",
    "create_decoder_dataloaders",
    "create_image_embedding_dataloader",
]

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_TEXT_KEYS = ("txt", "text", "caption")

Handler = Callable[[BaseException], bool]


class _SampleError(Exception):
    """An error tied to one sample (carries the shard url and key for the log)."""

    def __init__(self, message: str, url: str | None, key: str | None) -> None:
        super().__init__(message)
        self.url = url
        self.key = key


class ImageEmbeddingDataset(wds.DataPipeline):
    """Iterable dataset over webdataset shards (see the module docstring).

    Args:
        urls: shard spec(s): brace notation, `"::"`-joined, or a list.
        img_embedding_folder_url: folder of per-shard image-embedding `.npy` files (optional).
        text_embedding_folder_url: folder of per-shard text-embedding `.npy` files (optional).
        index_width: number of trailing key characters that give the row in the embedding file
            (None: the whole key).
        img_preproc: callable applied to the PIL image; must return a (c, h, w) tensor. Default:
            `ToTensor`. A `preprocessing` dict (config form) is accepted too.
        extra_keys: other sample fields to return after `(image, emb)`, e.g. `["txt"]`.
        handler: None (default) skips and counts bad samples/shards. A webdataset handler
            (`wds.reraise_exception`, `wds.warn_and_continue`, a :class:`SkipCounter`, ...) decides
            instead: raising propagates, True skips (and counts), False ends the stream.
        resample: draw shards with replacement forever (exclusive with `shuffle_shards`).
        shuffle_shards: shuffle the shard order each epoch (same order on every rank).
        shuffle_buffer: size of a sample shuffle buffer (None/0: no sample shuffling).
        seed: base seed for shard order, resampling and the shuffle buffer.
        rank, world_size: this process's place in a distributed job (default: `RANK`/`WORLD_SIZE`
            env vars, else `torch.distributed`, else 0/1).
        drop_uneven_shards: give every rank the same number of shards (drop the remainder).
        skip_counter: counter to use (a new one by default); also `self.skipped`.
        image_key: force the image field (default: first of jpg, jpeg, png, webp present).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        img_embedding_folder_url: str | None = None,
        text_embedding_folder_url: str | None = None,
        index_width: int | None = None,
        img_preproc: Callable | Mapping[str, Any] | None = None,
        extra_keys: Sequence[str] = (),
        handler: Handler | None = None,
        resample: bool = False,
        shuffle_shards: bool = True,
        *,
        shuffle_buffer: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_uneven_shards: bool = True,
        skip_counter: SkipCounter | None = None,
        image_key: str | None = None,
    ) -> None:
        super().__init__()
        if resample and shuffle_shards:
            # the reference treats the two as exclusive; resampling is already random
            shuffle_shards = False
        if index_width is not None and (not isinstance(index_width, int) or index_width < 1):
            raise ValueError(f"index_width must be a positive int or None, got {index_width!r}")
        if isinstance(extra_keys, str):
            raise TypeError("extra_keys must be a list of field names, e.g. ['txt'], not a string")
        self.urls = expand_urls(urls)
        self.index_width = index_width
        self.extra_keys = list(extra_keys)
        self.resample = resample
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = int(shuffle_buffer or 0)
        self.seed = int(seed)
        self.rank, self.world_size = distributed_info(rank, world_size)
        self.drop_uneven_shards = drop_uneven_shards
        self.image_key = image_key
        self.epoch = 0
        if isinstance(handler, SkipCounter):
            skip_counter, handler = skip_counter or handler, None
        self.skipped = skip_counter if skip_counter is not None else SkipCounter()
        self.handler = handler
        if img_preproc is None or isinstance(img_preproc, Mapping):
            img_preproc = build_image_preprocessing(img_preproc)
        self.img_preproc = img_preproc

        self.embedding_files: dict[str, dict[int, str]] = {}
        for name, folder in (("img", img_embedding_folder_url), ("text", text_embedding_folder_url)):
            if folder is not None:
                self.embedding_files[name] = list_shard_files(folder)
        if self.embedding_files:
            self.urls = self._shards_with_embeddings(self.urls)
        self._loaded: tuple[str | None, dict[str, np.ndarray]] = (None, {})
        self.append(self._shard_stream)
        self.append(self._sample_stream)

    # ------------------------------------------------------------------ set-up helpers
    def _shards_with_embeddings(self, urls: list[str]) -> list[str]:
        kept, dropped = [], []
        for url in urls:
            n = shard_number(url)
            (kept if all(n in files for files in self.embedding_files.values()) else dropped).append(url)
        if dropped:
            logger.warning(
                "%d of %d shards have no matching embedding file and are left out (first: %s)",
                len(dropped), len(urls), dropped[0],
            )
        if not kept:
            raise ValueError(
                "no shard has a matching embedding file; shard numbers are read from the tar names "
                f"(first shard {urls[0]!r}) and the .npy names (e.g. img_emb_0000.npy)"
            )
        return kept

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch used to reseed shard shuffling/resampling and the shuffle buffer."""
        self.epoch = int(epoch)

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _rng(self, *parts: int) -> random.Random:
        value = self.seed
        for part in parts:
            value = value * 1_000_003 + part + 1
        return random.Random(value)

    def _fail(self, kind: str, error: BaseException, url: str | None, key: str | None) -> bool:
        """Routes an error to the handler/counter; returns True to continue, False to stop."""
        if self.handler is None:
            self.skipped.record(kind, error, url=url, key=key)
            return True
        if self.handler(error):
            self.skipped.record(kind, error, url=url, key=key)
            return True
        return False

    # ------------------------------------------------------------------ pipeline stages
    def _shard_stream(self) -> Iterator[dict[str, Any]]:
        """Yields `{"url", "stride", "index"}` for this consumer's shards (see `consumer_split`)."""
        worker, num_workers = self._consumer()
        if self.resample:
            rng = self._rng(self.epoch, self.rank, worker)
            while True:
                yield {"url": rng.choice(self.urls), "stride": 1, "index": 0}
        order = list(self.urls)
        if self.shuffle_shards:
            self._rng(self.epoch).shuffle(order)
        split = consumer_split(order, self.rank, self.world_size, worker, num_workers, self.drop_uneven_shards)
        for url in split.shards:
            yield {"url": url, "stride": split.sample_stride, "index": split.sample_index}

    def _read_shards(self, shards: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Tar members grouped into samples `{"__key__", "__url__", ext: bytes, ...}`."""
        for shard in shards:
            url = shard["url"]
            current: dict[str, Any] | None = None
            try:
                stream = gopen(url)
                try:
                    for member in tar_file_iterator(stream):
                        prefix, suffix = base_plus_ext(member["fname"])
                        if prefix is None:
                            continue
                        suffix = suffix.lower()
                        if current is None or current["__key__"] != prefix:
                            if current is not None:
                                yield current
                            current = {"__key__": prefix, "__url__": url, "__shard__": shard}
                        if suffix in current:
                            raise ValueError(f"duplicate file {member['fname']} in the tar")
                        current[suffix] = member["data"]
                finally:
                    stream.close()
            except Exception as error:  # unreadable or truncated shard: drop the partial sample
                if not self._fail("shard", error, url, None):
                    return
                continue
            if current is not None:
                yield current

    def _sample_stream(self, shards: Iterator[dict[str, Any]]) -> Iterator[tuple]:
        samples = self._read_shards(shards)
        samples = self._split_samples(samples)
        if self.shuffle_buffer > 1:
            worker, _ = self._consumer()
            samples = buffered_shuffle(samples, self.shuffle_buffer, self._rng(self.epoch, self.rank, worker, 7))
        for sample in samples:
            try:
                out = self._process(sample)
            except Exception as error:
                if not self._fail("sample", error, sample.get("__url__"), sample.get("__key__")):
                    return
                continue
            self.skipped.success()
            yield out

    @staticmethod
    def _split_samples(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Keeps this consumer's share of samples from shards shared with other consumers.

        The running sample count over the (identical) shard sequence decides, so consumers sharing
        shards get counts that differ by at most one.
        """
        i = 0
        for sample in samples:
            shard = sample.pop("__shard__")
            if shard["stride"] == 1:
                yield sample
                continue
            if i % shard["stride"] == shard["index"]:
                yield sample
            i += 1

    # ------------------------------------------------------------------ per sample
    def _process(self, sample: dict[str, Any]) -> tuple:
        url, key = sample["__url__"], sample["__key__"]
        image_key = self.image_key or next((k for k in IMAGE_KEYS if k in sample), None)
        if image_key is None or image_key not in sample:
            raise _SampleError(f"no image field (looked for {self.image_key or IMAGE_KEYS})", url, key)
        image = self._decode_image(sample[image_key])
        emb = self._embeddings(url, key)
        extras = [self._extra(sample, name) for name in self.extra_keys]
        return (image, emb, *extras)

    def _decode_image(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as pil:
            pil = pil.convert("RGB")  # forces a full decode: truncated files fail here
        out = self.img_preproc(pil)
        return out if torch.is_tensor(out) else pil_to_tensor(out)

    def _embeddings(self, url: str, key: str) -> dict[str, torch.Tensor]:
        if not self.embedding_files:
            return {}
        if self._loaded[0] != url:
            n = shard_number(url)
            self._loaded = (url, {name: load_npy(files[n]) for name, files in self.embedding_files.items()})
        digits = key[-self.index_width :] if self.index_width else key
        if not digits.isdigit():
            raise ValueError(f"cannot read an embedding row from key {key!r} (index_width={self.index_width})")
        row = int(digits)
        out = {}
        for name, array in self._loaded[1].items():
            if row >= array.shape[0]:
                raise IndexError(
                    f"{name} embedding row {row} is out of range ({array.shape[0]} rows) for key {key!r}; "
                    "check index_width"
                )
            vector = np.asarray(array[row], dtype=np.float32)
            if not vector.any():
                raise ValueError(f"{name} embedding row {row} is all zeros (no embedding for this sample)")
            out[name] = torch.from_numpy(vector.copy())
        return out

    @staticmethod
    def _extra(sample: dict[str, Any], name: str) -> Any:
        if name in ("__key__", "__url__"):
            return sample[name]
        if name not in sample:
            raise KeyError(f"sample has no field {name!r} (fields: {sorted(k for k in sample if not k.startswith('__'))})")
        value = sample[name]
        if name in _TEXT_KEYS:
            return value.decode("utf-8")
        if name == "json":
            return json.loads(value)
        if name == "cls":
            return int(value.decode("utf-8").strip())
        if name == "npy":
            return np.load(io.BytesIO(value), allow_pickle=False)
        return value


class DecoderDataLoader(DataLoader):
    """DataLoader over an :class:`ImageEmbeddingDataset`.

    Each new iteration (epoch) reseeds the dataset's shard order unless `set_epoch` was called;
    `skipped` is the dataset's :class:`SkipCounter`.
    """

    def __init__(self, dataset: ImageEmbeddingDataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._next_epoch = 0

    @property
    def skipped(self) -> SkipCounter:
        return self.dataset.skipped

    def set_epoch(self, epoch: int) -> None:
        self._next_epoch = int(epoch)

    def __iter__(self):
        self.dataset.set_epoch(self._next_epoch)
        self._next_epoch += 1
        return super().__iter__()


def create_image_embedding_dataloader(
    tar_url: str | Sequence[str],
    num_workers: int,
    batch_size: int,
    img_embeddings_url: str | None = None,
    text_embeddings_url: str | None = None,
    index_width: int | None = None,
    shuffle_num: int | None = None,
    shuffle_shards: bool = True,
    resample_shards: bool = False,
    img_preproc: Callable | Mapping[str, Any] | None = None,
    extra_keys: Sequence[str] = (),
    handler: Handler | None = None,
    seed: int = 0,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = False,
    pin_memory: bool | None = None,
    skip_counter: SkipCounter | None = None,
    drop_uneven_shards: bool = True,
) -> DecoderDataLoader:
    """Batched loader over webdataset shards (the reference's function, same leading arguments).

    `shuffle_num` is the size of the sample shuffle buffer (None/0: off); the reference used a
    fixed 1000 whatever the value. Other arguments: see :class:`ImageEmbeddingDataset`.

    Returns:
        A :class:`DecoderDataLoader` yielding `(images (b, c, h, w), emb {"img": (b, d), "text":
        (b, d)}, *extras)`; string extras come as lists.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    dataset = ImageEmbeddingDataset(
        tar_url,
        img_embedding_folder_url=img_embeddings_url,
        text_embedding_folder_url=text_embeddings_url,
        index_width=index_width,
        img_preproc=img_preproc,
        extra_keys=extra_keys,
        handler=handler,
        resample=resample_shards,
        shuffle_shards=shuffle_shards,
        shuffle_buffer=shuffle_num,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_uneven_shards=drop_uneven_shards,
        skip_counter=skip_counter,
    )
    generator = torch.Generator().manual_seed(seed * 7919 + dataset.rank)
    return DecoderDataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        prefetch_factor=2 if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        generator=generator,
    )


def _field(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def create_decoder_dataloaders(
    config: Any,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    extra_keys: Sequence[str] = ("txt",),
    sampling_batch_size: int | None = None,
    handler: Handler | None = None,
) -> dict[str, DecoderDataLoader]:
    """Train/val/test loaders from a `DecoderDataConfig` (object or dict), like the reference script.

    The shards `start_shard..end_shard` of `webdataset_base_url` are split into train/val/test
    with `splits` and `seed` (same split on every rank); each loader then places its shards on
    ranks and workers. All loaders share one :class:`SkipCounter`.

    With `cache_in_memory` (extension) the train/val/test loaders are
    :class:`.memory_loader.InMemoryDecoderLoader`: each split is decoded once and served from memory.

    Returns:
        `{"train", "val", "test"}` loaders, plus `"train_sampling"`/`"test_sampling"` (batch
        `sampling_batch_size`, unshuffled) when `sampling_batch_size` is given. Empty splits are
        left out.
    """
    urls = shard_urls_from_template(
        _field(config, "webdataset_base_url"),
        start_shard=_field(config, "start_shard", 0),
        end_shard=_field(config, "end_shard", 9999999),
        shard_width=_field(config, "shard_width", 6),
    )
    parts = split_shards(urls, _field(config, "splits"), seed=seed)
    counter = SkipCounter()
    common = dict(
        num_workers=_field(config, "num_workers", 4),
        img_embeddings_url=_field(config, "img_embeddings_url"),
        text_embeddings_url=_field(config, "text_embeddings_url"),
        index_width=_field(config, "index_width", 4),
        img_preproc=build_image_preprocessing(_field(config, "preprocessing", {"ToTensor": True})),
        extra_keys=extra_keys,
        handler=handler,
        seed=seed,
        rank=rank,
        world_size=world_size,
        skip_counter=counter,
    )
    batch_size = _field(config, "batch_size", 64)
    in_memory = bool(_field(config, "cache_in_memory", False))
    loaders: dict[str, Any] = {}
    for name in ("train", "val", "test"):
        if not parts[name]:
            continue
        train = name == "train"
        loaders[name] = create_image_embedding_dataloader(
            parts[name],
            batch_size=batch_size,
            shuffle_shards=train and bool(_field(config, "shuffle_train", True)),
            resample_shards=train and bool(_field(config, "resample_train", False)),
            **common,
        )
        if in_memory:
            from .memory_loader import InMemoryDecoderLoader

            plain = dict(_field(config, "preprocessing", {"ToTensor": True}) or {}) in ({"ToTensor": True}, {})
            loaders[name] = InMemoryDecoderLoader(
                loaders[name].dataset, batch_size, shuffle=train and bool(_field(config, "shuffle_train", True)),
                seed=seed, exact_uint8=plain,
            )
        if sampling_batch_size and name in ("train", "test"):
            loaders[f"{name}_sampling"] = create_image_embedding_dataloader(
                parts[name], batch_size=sampling_batch_size, shuffle_shards=False, **common
            )
    return loaders
