"""Training data: webdataset decoder loader, prior embedding loader, embedding precompute.

* :mod:`.decoder_loader`: `ImageEmbeddingDataset`, `create_image_embedding_dataloader`,
  `create_decoder_dataloaders` (from a `DecoderDataConfig`);
* :mod:`.prior_loader`: `PriorEmbeddingDataset`, `make_splits`, `get_reader`, in-memory readers;
* :mod:`.precompute`: `precompute_embeddings` and `python -m dalle2_pytorch.data.precompute`;
* :mod:`.shards`, :mod:`.transforms`, :mod:`.counters`, :mod:`.embedding_files`: shared pieces.

Needs the `[train]` extra (webdataset, torchvision).
"""

from dalle2_pytorch._extras import require_extra

require_extra("train", "webdataset", "torchvision", what="dalle2_pytorch.data")

from dalle2_pytorch.data.counters import SkipCounter, SkipRecord, TooManyConsecutiveErrors
from dalle2_pytorch.data.decoder_loader import (
    DecoderDataLoader,
    ImageEmbeddingDataset,
    create_decoder_dataloaders,
    create_image_embedding_dataloader,
)
from dalle2_pytorch.data.prior_loader import (
    ArrayEmbeddingReader,
    NpyEmbeddingReader,
    PriorEmbeddingDataset,
    get_reader,
    in_memory_prior_loader,
    make_splits,
    rank_resume_offset,
)
from dalle2_pytorch.data.shards import (
    consumer_split,
    expand_urls,
    shard_number,
    shard_urls_from_template,
    split_shards,
)
from dalle2_pytorch.data.transforms import build_image_preprocessing, clip_image_transform

__all__ = [
    "ArrayEmbeddingReader",
    "DecoderDataLoader",
    "ImageEmbeddingDataset",
    "NpyEmbeddingReader",
    "PrecomputeSummary",
    "PriorEmbeddingDataset",
    "SkipCounter",
    "SkipRecord",
    "TooManyConsecutiveErrors",
    "build_image_preprocessing",
    "clip_image_transform",
    "consumer_split",
    "create_decoder_dataloaders",
    "create_image_embedding_dataloader",
    "expand_urls",
    "get_reader",
    "in_memory_prior_loader",
    "load_clip_from_spec",
    "make_splits",
    "precompute_embeddings",
    "rank_resume_offset",
    "shard_number",
    "shard_urls_from_template",
    "split_shards",
]

_PRECOMPUTE = ("PrecomputeSummary", "load_clip_from_spec", "precompute_embeddings")


def __getattr__(name: str):
    # imported lazily so `python -m dalle2_pytorch.data.precompute` does not import itself twice
    if name in _PRECOMPUTE:
        from dalle2_pytorch.data import precompute

        return getattr(precompute, name)
    raise AttributeError(f"module 'dalle2_pytorch.data' has no attribute {name!r}")
