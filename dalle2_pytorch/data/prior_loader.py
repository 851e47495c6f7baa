"""Diffusion-prior training data: precomputed CLIP embeddings (and captions).

The reference read these with the `embedding-reader` package; here :class:`NpyEmbeddingReader`
reads the same clip-retrieval layout (see :mod:`.embedding_files`) with no extra dependency, and
:class:`ArrayEmbeddingReader` serves small in-memory datasets the same way. An
`embedding_reader.EmbeddingReader` object can be passed wherever a reader is expected.

* text-conditioned prior: image embeddings + captions, yielded as `(image_embed (b, d),
  tokens (b, 77))` (captions tokenised with the CLIP BPE tokenizer, truncated, as the
  reference's `clip.tokenize(truncate=True)`) or
  `(image_embed, captions list)` with `tokenizer=None`;
* otherwise: image embeddings + text embeddings, yielded as `(image_embed (b, d), text_embed (b, d))`.

Rows whose image embedding is all zeros (samples the precompute step could not read) are dropped
from their batch and counted in `dataset.skipped`.

Resuming: `PriorEmbeddingDataset.get_start()` is the index of the next row this rank has not yet
yielded, `set_start(i)` continues from there. Positions are absolute row indices inside the
rank's own slice, so every rank resumes within its own data (the reference applied one global
offset to every rank's slice). :func:`rank_resume_offset` converts a global samples-seen count.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .counters import SkipCounter
from .embedding_files import METADATA_SUFFIXES, list_shard_files, load_npy, read_metadata

__all__ = [
    "ArrayEmbeddingReader",
    "NpyEmbeddingReader",
    "PriorEmbeddingDataset",
    "get_reader",
    "in_memory_prior_loader",
    "make_splits",
    "rank_resume_offset",
]

Tokenizer = Callable[[list[str]], torch.Tensor]


class _ReaderBase:
    """Reader protocol: `count`, `dimension`, `read(start, end)` and `__call__` (embedding-reader style)."""

    count: int
    dimension: int

    def read(self, start: int, end: int) -> tuple[np.ndarray, dict[str, list[Any]]]:
        raise NotImplementedError

    def __call__(
        self, batch_size: int, start: int = 0, end: int | None = None, **_: Any
    ) -> Iterator[tuple[np.ndarray, dict[str, list[Any]]]]:
        """Yields `(embeddings (n, d), {column: list})` pieces of at most `batch_size` rows."""
        end = self.count if end is None else min(end, self.count)
        for s in range(start, end, batch_size):
            yield self.read(s, min(s + batch_size, end))

    def _check_range(self, start: int, end: int) -> None:
        if not 0 <= start <= end <= self.count:
            raise IndexError(f"rows {start}:{end} are out of range for {self.count} embeddings")


class NpyEmbeddingReader(_ReaderBase):
    """Reads per-shard `.npy` embedding files (plus optional per-shard metadata) as one table.

    Args:
        embedding_folder: folder of `*_NNNN.npy` files, concatenated in shard-number order.
        metadata_folder: folder of `*_NNNN.parquet|json|jsonl` files with the same rows (optional).
        meta_columns: metadata columns to return (default `("caption",)`).
    """

    def __init__(
        self,
        embedding_folder: str,
        metadata_folder: str | None = None,
        meta_columns: Sequence[str] = ("caption",),
    ) -> None:
        files = list_shard_files(embedding_folder)
        if not files:
            raise ValueError(f"no .npy embedding files in {embedding_folder!r}")
        self.shards = sorted(files)
        self.files = [files[n] for n in self.shards]
        self._arrays = [load_npy(f) for f in self.files]  # memory-mapped: headers only
        shapes = {a.shape[1:] for a in self._arrays}
        if len(shapes) != 1 or any(a.ndim != 2 for a in self._arrays):
            raise ValueError(f"embedding files in {embedding_folder!r} must all be (n, d) with one d; got {shapes}")
        self.dimension = int(self._arrays[0].shape[1])
        self.counts = [int(a.shape[0]) for a in self._arrays]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.count = int(self.offsets[-1])
        self.meta_columns = list(meta_columns) if metadata_folder is not None else []
        self.meta_files: list[str] = []
        self._meta_cache: dict[int, dict[str, list[Any]]] = {}
        if metadata_folder is not None:
            meta = list_shard_files(metadata_folder, METADATA_SUFFIXES)
            missing = [n for n in self.shards if n not in meta]
            if missing:
                raise ValueError(f"metadata folder {metadata_folder!r} has no file for shard(s) {missing[:10]}")
            self.meta_files = [meta[n] for n in self.shards]

    def _metadata(self, i: int) -> dict[str, list[Any]]:
        if i not in self._meta_cache:
            table = read_metadata(self.meta_files[i], self.meta_columns)
            rows = len(next(iter(table.values()))) if table else self.counts[i]
            if rows != self.counts[i]:
                raise ValueError(
                    f"{self.meta_files[i]} has {rows} rows but {self.files[i]} has {self.counts[i]} embeddings"
                )
            self._meta_cache = {i: table}  # keep one shard's metadata in memory
        return self._meta_cache[i]

    def read(self, start: int, end: int) -> tuple[np.ndarray, dict[str, list[Any]]]:
        """Rows `start:end` of the concatenated files: `(embeddings (n, d), {column: list})`."""
        self._check_range(start, end)
        pieces, meta = [], {c: [] for c in self.meta_columns}
        first = int(np.searchsorted(self.offsets, start, side="right") - 1)
        i = first
        while i < len(self._arrays) and self.offsets[i] < end:
            lo = max(start, int(self.offsets[i])) - int(self.offsets[i])
            hi = min(end, int(self.offsets[i + 1])) - int(self.offsets[i])
            if hi > lo:
                pieces.append(np.asarray(self._arrays[i][lo:hi]))
                for column, values in (self._metadata(i).items() if self.meta_columns else ()):
                    meta[column].extend(values[lo:hi])
            i += 1
        if not pieces:
            return np.zeros((0, self.dimension), dtype=self._arrays[0].dtype), meta
        return np.concatenate(pieces, axis=0), meta

    def __repr__(self) -> str:
        return f"NpyEmbeddingReader(count={self.count}, dimension={self.dimension}, shards={len(self.files)})"


class ArrayEmbeddingReader(_ReaderBase):
    """In-memory reader over an (n, d) array (numpy or torch) and optional metadata columns.

    Args:
        embeddings: (n, d) embeddings.
        captions: optional n captions (stored as the `caption` column).
        **columns: other metadata columns of length n.
    """

    def __init__(self, embeddings: np.ndarray | torch.Tensor, captions: Sequence[str] | None = None, **columns: Sequence[Any]) -> None:
        if torch.is_tensor(embeddings):
            embeddings = embeddings.detach().cpu().numpy()
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must have shape (n, d), got {embeddings.shape}")
        if captions is not None:
            columns = {"caption": captions, **columns}
        for name, values in columns.items():
            if len(values) != len(embeddings):
                raise ValueError(f"column {name!r} has {len(values)} rows but there are {len(embeddings)} embeddings")
        self.embeddings = embeddings
        self.columns = {k: list(v) for k, v in columns.items()}
        self.count = int(embeddings.shape[0])
        self.dimension = int(embeddings.shape[1])

    def read(self, start: int, end: int) -> tuple[np.ndarray, dict[str, list[Any]]]:
        self._check_range(start, end)
        return self.embeddings[start:end], {k: v[start:end] for k, v in self.columns.items()}


def _read(reader: Any, start: int, end: int) -> tuple[np.ndarray, Any]:
    """Rows `start:end` from our readers or an `embedding_reader.EmbeddingReader`."""
    if hasattr(reader, "read"):
        return reader.read(start, end)
    embeddings, meta = next(iter(reader(batch_size=end - start, start=start, end=end, show_progress=False)))
    return embeddings, meta


def get_reader(
    text_conditioned: bool,
    img_url: str,
    meta_url: str | None = None,
    txt_url: str | None = None,
) -> NpyEmbeddingReader | tuple[NpyEmbeddingReader, NpyEmbeddingReader]:
    """Readers for prior training (reference signature).

    Returns:
        text-conditioned: one reader of image embeddings with the `caption` column of `meta_url`;
        otherwise: `(image reader, text-embedding reader)`.

    Raises:
        ValueError: the URL the mode needs is missing, or the two readers disagree in length.
    """
    if text_conditioned:
        if meta_url is None:
            raise ValueError("a text-conditioned prior needs meta_url (per-shard metadata with a 'caption' column)")
        return NpyEmbeddingReader(img_url, meta_url, meta_columns=("caption",))
    if txt_url is None:
        raise ValueError("a prior that is not text-conditioned needs txt_url (the text-embedding folder)")
    image_reader, text_reader = NpyEmbeddingReader(img_url), NpyEmbeddingReader(txt_url)
    if image_reader.count != text_reader.count:
        raise ValueError(f"{image_reader.count} image embeddings but {text_reader.count} text embeddings")
    return image_reader, text_reader


def _default_tokenizer(captions: list[str]) -> torch.Tensor:
    """CLIP BPE, 77 tokens with start/end-of-text, long captions truncated (end token kept)."""
    from dalle2_pytorch.clip_adapters.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=77)(captions)


class PriorEmbeddingDataset(IterableDataset):
    """Batches of rows `start:stop` of precomputed embeddings (an IterableDataset of batches).

    Args:
        text_conditioned: yield tokenised captions (True) or text embeddings (False).
        batch_size: rows per batch (the last batch may be smaller).
        start, stop: row range (this rank's slice).
        image_reader: reader of image embeddings (with captions when text-conditioned).
        text_reader: reader of text embeddings (not text-conditioned).
        tokenizer: captions -> (b, n) tokens; default: the CLIP BPE `SimpleTokenizer` (77 tokens,
            truncated, like the reference's `clip.tokenize(truncate=True)`); None yields captions.
        dtype: dtype of the yielded embeddings.
        skip_counter: counter of dropped all-zero rows (a new one by default; `self.skipped`).

    With several DataLoader workers, batch k goes to worker k % num_workers.
    """

    def __init__(
        self,
        text_conditioned: bool,
        batch_size: int,
        start: int,
        stop: int,
        image_reader: Any,
        text_reader: Any = None,
        tokenizer: Tokenizer | None | str = "clip",
        dtype: torch.dtype = torch.float32,
        skip_counter: SkipCounter | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= start <= stop <= image_reader.count:
            raise ValueError(f"invalid row range {start}:{stop} for {image_reader.count} embeddings")
        if not text_conditioned and text_reader is None:
            raise ValueError("text_reader is required when text_conditioned is False")
        self.text_conditioned = text_conditioned
        self.batch_size = batch_size
        self.range_start, self.stop = start, stop
        self.start = start
        self.image_reader, self.text_reader = image_reader, text_reader
        self.tokenizer = _default_tokenizer if tokenizer == "clip" else tokenizer
        self.dtype = dtype
        self.skipped = skip_counter if skip_counter is not None else SkipCounter(max_consecutive_errors=None)

    def __len__(self) -> int:
        """Number of batches from the current start to stop."""
        return -(-(self.stop - self.start) // self.batch_size)

    def get_start(self) -> int:
        """Index of the next row to read.

        Advances as batches are yielded (when iterated in this process, i.e. `num_workers=0`) and
        returns to the slice start after a complete pass.
        """
        return self.start

    def set_start(self, start: int) -> None:
        """Continues from row `start`, an absolute index inside this dataset's `[range_start, stop]`."""
        if not self.range_start <= start <= self.stop:
            raise ValueError(
                f"start {start} is outside this dataset's rows {self.range_start}:{self.stop}; "
                "positions are absolute rows within the rank's own slice"
            )
        self.start = int(start)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for k, s in enumerate(range(self.start, self.stop, self.batch_size)):
            e = min(s + self.batch_size, self.stop)
            if k % num_workers != worker:
                continue
            batch = self._batch(s, e)
            if info is None:
                self.start = e
            if batch is not None:
                yield batch
        if info is None:
            self.start = self.range_start  # a completed pass: the next one is a new epoch

    def _batch(self, start: int, end: int) -> tuple[torch.Tensor, Any] | None:
        image, meta = _read(self.image_reader, start, end)
        image = np.asarray(image, dtype=np.float32)
        keep = image.any(axis=1)
        for row in np.flatnonzero(~keep):
            self.skipped.record("sample", ValueError("all-zero image embedding (missing sample)"), key=str(start + row))
        if not keep.any():
            return None
        image_embed = torch.from_numpy(image[keep]).to(self.dtype)
        if self.text_conditioned:
            captions = _column(meta, "caption")
            captions = [str(c) for c, k in zip(captions, keep) if k]
            text = captions if self.tokenizer is None else self.tokenizer(captions)
        else:
            text_embed, _ = _read(self.text_reader, start, end)
            text = torch.from_numpy(np.asarray(text_embed, dtype=np.float32)[keep]).to(self.dtype)
        return image_embed, text


def _column(meta: Any, name: str) -> list[Any]:
    if isinstance(meta, dict):
        if name not in meta:
            raise ValueError(f"the reader returns no {name!r} column; build it with metadata (meta_url)")
        return list(meta[name])
    return list(meta[name])  # pandas DataFrame from embedding-reader


def rank_resume_offset(samples_seen: int, world_size: int) -> int:
    """Rows each rank consumed when `samples_seen` samples were seen in total (equal per rank)."""
    if world_size < 1 or samples_seen < 0:
        raise ValueError(f"invalid samples_seen={samples_seen}, world_size={world_size}")
    return samples_seen // world_size


def _rank_slice(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    per_rank = (stop - start) // world_size
    return start + rank * per_rank, start + (rank + 1) * per_rank


def make_splits(
    text_conditioned: bool,
    batch_size: int,
    num_data_points: int,
    train_split: float,
    eval_split: float,
    image_reader: Any,
    text_reader: Any = None,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    tokenizer: Tokenizer | None | str = "clip",
    num_workers: int = 0,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train/eval/test loaders over contiguous row ranges, each cut into equal per-rank slices.

    Rows `start .. start + n` (n = min(num_data_points, count - start)) are split into train
    (`train_split`), eval (`eval_split`) and test (the rest); each range is divided into
    `world_size` contiguous equal slices (the remainder rows are left out so ranks run the same
    number of steps) and rank `rank` gets its slice.

    Returns:
        `(train, eval, test)` DataLoaders with `batch_size=None` (the datasets batch); reach the
        datasets through `.dataset` for `set_start`/`get_start`.

    Raises:
        ValueError: bad fractions, rank, or ranges.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")
    if not (0 <= train_split <= 1 and 0 <= eval_split <= 1 and train_split + eval_split <= 1 + 1e-9):
        raise ValueError(f"train_split={train_split} and eval_split={eval_split} must be fractions summing to <= 1")
    if not 0 <= start <= image_reader.count:
        raise ValueError(f"start {start} is outside the {image_reader.count} embeddings")
    n = min(int(num_data_points), image_reader.count - start)
    train_end = start + int(train_split * n)
    eval_end = train_end + int(eval_split * n)
    ranges = [(start, train_end), (train_end, eval_end), (eval_end, start + n)]
    loaders = []
    counter = SkipCounter(max_consecutive_errors=None)
    for lo, hi in ranges:
        s, e = _rank_slice(lo, hi, rank, world_size)
        dataset = PriorEmbeddingDataset(
            text_conditioned, batch_size, s, e, image_reader, text_reader, tokenizer=tokenizer, skip_counter=counter
        )
        loaders.append(DataLoader(dataset, batch_size=None, num_workers=num_workers))
    return tuple(loaders)


def in_memory_prior_loader(
    image_embed: np.ndarray | torch.Tensor,
    batch_size: int,
    text_embed: np.ndarray | torch.Tensor | None = None,
    captions: Sequence[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
    tokenizer: Tokenizer | None | str = "clip",
) -> DataLoader:
    """Loader over small in-memory datasets: (n, d) image embeddings with captions or text embeddings.

    Give exactly one of `captions` (text-conditioned batches) and `text_embed`. Rank `rank` gets
    the contiguous slice `rank` of `world_size` equal slices.
    """
    if (captions is None) == (text_embed is None):
        raise ValueError("pass exactly one of captions (text-conditioned) and text_embed")
    image_reader = ArrayEmbeddingReader(image_embed, captions=captions)
    text_reader = None if text_embed is None else ArrayEmbeddingReader(text_embed)
    if text_reader is not None and text_reader.count != image_reader.count:
        raise ValueError(f"{image_reader.count} image embeddings but {text_reader.count} text embeddings")
    if not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")
    s, e = _rank_slice(0, image_reader.count, rank, world_size)
    dataset = PriorEmbeddingDataset(captions is not None, batch_size, s, e, image_reader, text_reader, tokenizer=tokenizer)
    return DataLoader(dataset, batch_size=None)
