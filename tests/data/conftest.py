"""Shared helpers for the data tests: real tar shards, JPEG bytes, a tiny CLIP adapter."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

REFERENCE_SHARDS = Path(__file__).resolve().parents[1] / "fixtures" / "reference_shards"
REFERENCE_CAPTIONS = ["cat", "sea", "tree", "motel", "plants", "small cat", "buildings"]
TINY_X_CLIP = dict(
    dim_text=32, dim_image=32, dim_latent=16, num_text_tokens=49408, text_enc_depth=1,
    text_seq_len=16, visual_enc_depth=1, visual_image_size=32, visual_patch_size=8,
    text_heads=2, visual_heads=2, text_dim_head=16, visual_dim_head=16,
)


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 48)) -> bytes:
    """A random RGB JPEG (width, height) = size."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shard(path: os.PathLike, samples: Sequence[tuple[str, dict[str, bytes]]]) -> Path:
    """Writes a webdataset tar: samples are (key, {extension: bytes})."""
    path = Path(path)
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def good_samples(keys: Sequence[str], seed: int = 0) -> list[tuple[str, dict[str, bytes]]]:
    return [(k, {"jpg": jpeg_bytes(seed + i), "txt": f"caption {k}".encode()}) for i, k in enumerate(keys)]


@pytest.fixture
def reference_shards() -> Path:
    assert len(list(REFERENCE_SHARDS.glob("*.tar"))) == 10, "tests/fixtures/reference_shards must hold 0.tar..9.tar"
    return REFERENCE_SHARDS


@pytest.fixture
def make_shard() -> Callable[..., Path]:
    return write_shard


@pytest.fixture(scope="session")
def tiny_clip():
    """A random-weight x-clip CLIP (32x32 images, 16-d embeddings) in an XClipAdapter."""
    from x_clip import CLIP

    from dalle2_pytorch.clip_adapters import XClipAdapter

    torch.manual_seed(0)
    return XClipAdapter(CLIP(**TINY_X_CLIP))


@pytest.fixture
def jpeg() -> Callable[..., bytes]:
    return jpeg_bytes


@pytest.fixture
def samples_for() -> Callable[..., list]:
    return good_samples
