"""Compatibility module: the reference's `dalle2_pytorch.dataloaders` names (see `dalle2_pytorch.data`)."""

from dalle2_pytorch.data import (
    ImageEmbeddingDataset,
    PriorEmbeddingDataset,
    create_image_embedding_dataloader,
    get_reader,
    make_splits,
)

__all__ = [
    "ImageEmbeddingDataset",
    "PriorEmbeddingDataset",
    "create_image_embedding_dataloader",
    "get_reader",
    "make_splits",
]
