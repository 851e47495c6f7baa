"""Embedding precompute: values equal direct CLIP calls, layout read by both loaders, resumable,
atomic, corrupt samples -> zero rows, and the command line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_pytorch.data import (
    ImageEmbeddingDataset,
    PriorEmbeddingDataset,
    clip_image_transform,
    get_reader,
    precompute_embeddings,
)
from dalle2_pytorch.data import precompute as precompute_module

REPO = Path(__file__).resolve().parents[2]


def tar_samples(path) -> dict[str, tuple[Image.Image, str]]:
    """{key: (PIL image, caption)} read with tarfile directly (independent of the loader)."""
    files: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            files.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return {k: (Image.open(io.BytesIO(v["jpg"])).convert("RGB"), v["txt"].decode()) for k, v in files.items()}


@pytest.fixture
def three_shards(reference_shards):
    return f"{reference_shards}/{{0..2}}.tar"


def test_embeddings_equal_direct_clip_calls(tmp_path, three_shards, reference_shards, tiny_clip):
    summary = precompute_embeddings(three_shards, tmp_path, tiny_clip, batch_size=4)
    assert [Path(u).name for u in summary.written] == ["0.tar", "1.tar", "2.tar"]
    assert summary.samples == 21 and summary.skipped_samples == 0 and summary.dimension == 16
    img = np.load(tmp_path / "img_emb" / "img_emb_0001.npy")
    txt = np.load(tmp_path / "text_emb" / "text_emb_0001.npy")
    meta = json.loads((tmp_path / "metadata" / "metadata_0001.json").read_text())
    assert img.shape == txt.shape == (7, 16) and img.dtype == np.float32
    transform = clip_image_transform(32)
    samples = tar_samples(reference_shards / "1.tar")
    keys = sorted(samples, key=int)
    with torch.no_grad():
        images = torch.stack([transform(samples[k][0]) for k in keys])
        expected_img = tiny_clip.embed_image(images)[0]
        expected_txt = tiny_clip.embed_text(tiny_clip.tokenize([samples[k][1] for k in keys]))[0]
    np.testing.assert_allclose(img, expected_img.numpy(), atol=1e-5)
    np.testing.assert_allclose(txt, expected_txt.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    assert meta["key"] == keys and meta["caption"] == [samples[k][1] for k in keys]
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_both_loaders_read_the_output(tmp_path, three_shards, tiny_clip):
    precompute_embeddings(three_shards, tmp_path, tiny_clip, batch_size=8)
    decoder = ImageEmbeddingDataset(
        three_shards, img_embedding_folder_url=str(tmp_path / "img_emb"),
        text_embedding_folder_url=str(tmp_path / "text_emb"), index_width=1,
        img_preproc={"Resize": [16, 16]}, extra_keys=["__url__", "__key__"], rank=0, world_size=1,
    )
    n = 0
    for image, emb, url, key in decoder:
        shard = int(Path(url).stem)
        row = np.load(tmp_path / "img_emb" / f"img_emb_{shard:04d}.npy")[int(key)]
        torch.testing.assert_close(emb["img"], torch.from_numpy(row))
        assert emb["text"].shape == (16,)
        n += 1
    assert n == 21 and decoder.skipped.total == 0

    reader = get_reader(True, str(tmp_path / "img_emb"), meta_url=str(tmp_path / "metadata"))
    batches = list(PriorEmbeddingDataset(True, 5, 0, reader.count, reader, tokenizer=None))
    captions = [c for _, caps in batches for c in caps]
    assert len(captions) == 21 and captions[:7] == ["cat\n", "sea\n", "tree\n", "motel\n", "plants\n", "small cat\n", "buildings\n"]
    image_reader, text_reader = get_reader(False, str(tmp_path / "img_emb"), txt_url=str(tmp_path / "text_emb"))
    image, text = next(iter(PriorEmbeddingDataset(False, 21, 0, 21, image_reader, text_reader)))
    assert image.shape == text.shape == (21, 16)


def test_resumable_and_crash_safe(tmp_path, three_shards, tiny_clip, monkeypatch):
    real_write = precompute_module._write_metadata
    calls = []

    def crash_on_second_shard(path, columns, fmt):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        real_write(path, columns, fmt)

    monkeypatch.setattr(precompute_module, "_write_metadata", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        precompute_embeddings(three_shards, tmp_path, tiny_clip)
    monkeypatch.setattr(precompute_module, "_write_metadata", real_write)
    assert (tmp_path / "metadata" / "metadata_0000.json").exists()
    assert not (tmp_path / "metadata" / "metadata_0001.json").exists()  # incomplete shard
    first = (tmp_path / "img_emb" / "img_emb_0000.npy").stat().st_mtime_ns

    summary = precompute_embeddings(three_shards, tmp_path, tiny_clip)
    assert [Path(u).name for u in summary.already_done] == ["0.tar"]
    assert [Path(u).name for u in summary.written] == ["1.tar", "2.tar"]
    assert (tmp_path / "img_emb" / "img_emb_0000.npy").stat().st_mtime_ns == first
    again = precompute_embeddings(three_shards, tmp_path, tiny_clip)
    assert len(again.already_done) == 3 and again.written == []
    assert len(precompute_embeddings(three_shards, tmp_path, tiny_clip, overwrite=True).written) == 3
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_corrupt_sample_becomes_a_zero_row(tmp_path, make_shard, samples_for, tiny_clip):
    samples = samples_for([f"0007{i:04d}" for i in range(4)])
    samples[2][1]["jpg"] = b"not an image at all"
    shard = make_shard(tmp_path / "000007.tar", samples)
    out = tmp_path / "emb"
    summary = precompute_embeddings(str(shard), out, tiny_clip, index_width=4, dtype="float16")
    assert summary.samples == 3 and summary.skipped_samples == 1
    img = np.load(out / "img_emb" / "img_emb_0007.npy")
    assert img.dtype == np.float16 and img.shape == (4, 16)
    assert not img[2].any() and all(img[i].any() for i in (0, 1, 3))
    meta = json.loads((out / "metadata" / "metadata_0007.json").read_text())
    assert meta["key"][2] is None and meta["caption"][2] == ""
    reader = get_reader(True, str(out / "img_emb"), meta_url=str(out / "metadata"))
    ds = PriorEmbeddingDataset(True, 4, 0, reader.count, reader, tokenizer=None)
    (image, captions), = list(ds)
    assert captions == ["caption 00070000", "caption 00070001", "caption 00070003"]
    assert ds.skipped.samples == 1
    colliding = make_shard(tmp_path / "000008.tar", samples_for(["x10", "y20"]))
    with pytest.raises(ValueError, match="same row"):
        precompute_embeddings(str(colliding), tmp_path / "other", tiny_clip, index_width=1)


def test_command_line(tmp_path, reference_shards, tiny_clip):
    spec = json.dumps({"make": "x-clip", "pretrained": False, "base_model_kwargs": {
        "dim_text": 32, "dim_image": 32, "dim_latent": 16, "num_text_tokens": 49408, "text_enc_depth": 1,
        "text_seq_len": 16, "visual_enc_depth": 1, "visual_image_size": 32, "visual_patch_size": 8,
        "text_heads": 2, "visual_heads": 2, "text_dim_head": 16, "visual_dim_head": 16}})
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dalle2_pytorch.data.precompute", "--shards", f"{reference_shards}/{{3..4}}.tar",
         "--out", str(tmp_path), "--clip", spec, "--batch-size", "3", "--seed", "0"],
        capture_output=True, text=True, env=env, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["samples"] == 14 and len(summary["written"]) == 2
    # same seed, same tiny CLIP -> same numbers as the Python API
    api = precompute_embeddings(f"{reference_shards}/3.tar", tmp_path / "api", tiny_clip)
    assert api.samples == 7
    np.testing.assert_allclose(
        np.load(tmp_path / "img_emb" / "img_emb_0003.npy"), np.load(tmp_path / "api" / "img_emb" / "img_emb_0003.npy"), atol=1e-6
    )
    with pytest.raises(ValueError, match="unrecognised --clip spec"):
        precompute_module.load_clip_from_spec("nonsense")
