"""`data.cache_in_memory`: each split decoded once, then shuffled batches from memory every epoch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_pytorch.data import create_decoder_dataloaders
from dalle2_pytorch.data.memory_loader import InMemoryDecoderLoader


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def shards(tmp_path, make_shard):
    """Three shards of 5 PNG samples with captions and image embeddings (row = last key digit)."""
    emb_dir = tmp_path / "img_emb"
    emb_dir.mkdir()
    for s in range(3):
        make_shard(tmp_path / f"{s:06d}.tar",
                   [(f"{s}{i}", {"png": _png(10 * s + i), "txt": f"caption {s}{i}".encode()}) for i in range(5)])
        np.save(emb_dir / f"img_emb_{s:04d}.npy", (np.arange(5 * 4, dtype=np.float32).reshape(5, 4) + 100 * s + 1))
    return tmp_path


def _config(root, **extra):
    return {"webdataset_base_url": f"{root}/{{}}.tar", "img_embeddings_url": str(root / "img_emb"), "num_workers": 0,
            "batch_size": 4, "start_shard": 0, "end_shard": 2, "shard_width": 6, "index_width": 1,
            "splits": {"train": 1.0, "val": 0.0, "test": 0.0}, **extra}


def _epoch(loader) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    out = []
    for images, emb, captions in loader:
        out += [(c, im, e) for c, im, e in zip(captions, images, emb["img"])]
    return out


def test_same_samples_as_streaming_and_exact_pixels(shards):
    streaming = create_decoder_dataloaders(_config(shards), extra_keys=("txt",), seed=0)["train"]
    cached = create_decoder_dataloaders(_config(shards, cache_in_memory=True), extra_keys=("txt",), seed=0)["train"]
    assert isinstance(cached, InMemoryDecoderLoader)
    plain = {c: (im, e) for c, im, e in _epoch(streaming)}
    kept = _epoch(cached)
    assert len(kept) == 15 and {c for c, _, _ in kept} == set(plain)
    for caption, image, emb in kept:
        assert image.dtype == torch.float32 and torch.equal(image, plain[caption][0])  # uint8 storage is exact
        assert torch.equal(emb, plain[caption][1])
    assert cached._data[0].dtype == torch.uint8
    assert len(cached) == 4  # batches of 4: 4 + 4 + 4 + 3


def test_epochs_are_seeded_permutations(shards):
    def order(seed: int, epoch: int) -> list[str]:
        loader = create_decoder_dataloaders(_config(shards, cache_in_memory=True), extra_keys=("txt",), seed=seed)["train"]
        loader.set_epoch(epoch)
        return [c for c, _, _ in _epoch(loader)]

    assert order(0, 0) == order(0, 0)  # a resumed run sees the same order, so skipping consumed batches works
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 3)) == sorted(order(0, 0))
    loader = create_decoder_dataloaders(_config(shards, cache_in_memory=True), extra_keys=("txt",), seed=0)["train"]
    first, second = [c for c, _, _ in _epoch(loader)], [c for c, _, _ in _epoch(loader)]
    assert first == order(0, 0) and second == order(0, 1)  # each new iteration is the next epoch


def test_ranks_keep_disjoint_shares(shards):
    seen = []
    for rank in range(2):
        loader = create_decoder_dataloaders(_config(shards, cache_in_memory=True), extra_keys=("txt",), seed=0,
                                            rank=rank, world_size=2)["train"]
        seen.append({c for c, _, _ in _epoch(loader)})
    assert not seen[0] & seen[1] and seen[0] and seen[1]


def test_config_refuses_random_preprocessing_and_resampling():
    from pydantic import ValidationError

    from dalle2_pytorch.config.decoder import DecoderDataConfig

    base = dict(webdataset_base_url="x/{}.tar", splits={"train": 1.0, "val": 0.0, "test": 0.0}, cache_in_memory=True)
    assert DecoderDataConfig(**base).cache_in_memory
    with pytest.raises(ValidationError, match="RandomHorizontalFlip"):
        DecoderDataConfig(**base, preprocessing={"RandomHorizontalFlip": True, "ToTensor": True})
    with pytest.raises(ValidationError, match="resample_train"):
        DecoderDataConfig(**base, resample_train=True)


def test_float_storage_for_non_8_bit_preprocessing(shards):
    config = _config(shards, cache_in_memory=True, preprocessing={"Resize": {"size": [5, 5]}, "ToTensor": True})
    loader = create_decoder_dataloaders(config, extra_keys=("txt",), seed=0)["train"]
    images = next(iter(loader))[0]
    assert images.shape == (4, 3, 5, 5) and loader._data[0].dtype == torch.float32
