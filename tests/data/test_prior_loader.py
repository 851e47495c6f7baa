"""Prior embedding loader: clip-retrieval-layout readers, batches, per-rank splits, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dalle2_pytorch.data import (
    ArrayEmbeddingReader,
    NpyEmbeddingReader,
    PriorEmbeddingDataset,
    get_reader,
    in_memory_prior_loader,
    make_splits,
    rank_resume_offset,
)

SIZES = (5, 7, 4)  # rows per shard
DIM = 6


@pytest.fixture
def embedding_dir(tmp_path):
    """img_emb / text_emb / metadata folders of three shards, rows numbered through their values."""
    rng = np.random.default_rng(0)
    for sub in ("img_emb", "text_emb", "metadata"):
        (tmp_path / sub).mkdir()
    images, texts, captions = [], [], []
    row = 0
    for shard, n in enumerate(SIZES):
        img = rng.normal(size=(n, DIM)).astype(np.float16)
        img[:, 0] = np.arange(row, row + n)  # column 0 = global row index, for checks
        txt = rng.normal(size=(n, DIM)).astype(np.float32)
        caps = [f"caption number {i}" for i in range(row, row + n)]
        np.save(tmp_path / "img_emb" / f"img_emb_{shard:04d}.npy", img)
        np.save(tmp_path / "text_emb" / f"text_emb_{shard:04d}.npy", txt)
        (tmp_path / "metadata" / f"metadata_{shard:04d}.json").write_text(json.dumps({"caption": caps, "key": list(range(n))}))
        images.append(img)
        texts.append(txt)
        captions += caps
        row += n
    return tmp_path, np.concatenate(images), np.concatenate(texts), captions


def rows_of(batches) -> list[int]:
    return [int(r) for image, _ in batches for r in image[:, 0].tolist()]


def test_npy_reader_concatenates_shards(embedding_dir):
    root, images, _, captions = embedding_dir
    reader = get_reader(True, str(root / "img_emb"), meta_url=str(root / "metadata"))
    assert isinstance(reader, NpyEmbeddingReader)
    assert reader.count == sum(SIZES) and reader.dimension == DIM
    emb, meta = reader.read(3, 14)  # spans all three files
    np.testing.assert_array_equal(emb, images[3:14])
    assert meta["caption"] == captions[3:14]
    pieces = list(reader(batch_size=4, start=2, end=11))
    assert [len(p[0]) for p in pieces] == [4, 4, 1]
    with pytest.raises(IndexError):
        reader.read(10, 99)
    with pytest.raises(ValueError, match="meta_url"):
        get_reader(True, str(root / "img_emb"))
    with pytest.raises(ValueError, match="txt_url"):
        get_reader(False, str(root / "img_emb"))


def test_text_conditioned_batches_tokenised_with_clip_bpe(embedding_dir):
    root, images, _, captions = embedding_dir
    reader = get_reader(True, str(root / "img_emb"), meta_url=str(root / "metadata"))
    batches = list(PriorEmbeddingDataset(True, 4, 0, reader.count, reader))
    assert [b[0].shape for b in batches] == [(4, DIM)] * 4
    image, tokens = batches[1]
    assert image.dtype == torch.float32
    torch.testing.assert_close(image, torch.from_numpy(images[4:8].astype(np.float32)))
    assert tokens.shape == (4, 77) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 49406).all()  # start-of-text
    import open_clip

    torch.testing.assert_close(tokens, open_clip.tokenize(captions[4:8]))
    raw = list(PriorEmbeddingDataset(True, 4, 0, reader.count, reader, tokenizer=None))
    assert [c for _, caps in raw for c in caps] == captions


def test_text_embedding_batches(embedding_dir):
    root, images, texts, _ = embedding_dir
    image_reader, text_reader = get_reader(False, str(root / "img_emb"), txt_url=str(root / "text_emb"))
    batches = list(PriorEmbeddingDataset(False, 5, 2, 15, image_reader, text_reader))
    assert rows_of(batches) == list(range(2, 15))
    torch.testing.assert_close(torch.cat([t for _, t in batches]), torch.from_numpy(texts[2:15]))


def test_make_splits_gives_contiguous_disjoint_equal_rank_slices(embedding_dir):
    root, *_ = embedding_dir
    reader = get_reader(True, str(root / "img_emb"), meta_url=str(root / "metadata"))
    world = 3
    per_rank = []
    for rank in range(world):
        loaders = make_splits(True, 2, 1000, 0.6, 0.2, reader, start=0, rank=rank, world_size=world, tokenizer=None)
        per_rank.append([rows_of(loader) for loader in loaders])
    # n = 16: train rows 0..8 (9), eval 9..11 (3), test 12..15 (4); per rank 3 / 1 / 1 rows
    for split, (lo, hi) in enumerate([(0, 9), (9, 12), (12, 16)]):
        parts = [per_rank[r][split] for r in range(world)]
        assert len({len(p) for p in parts}) == 1  # equal per rank: DDP ranks take the same steps
        flat = [x for p in parts for x in p]
        assert len(flat) == len(set(flat)) and all(lo <= x < hi for x in flat)
        for p in parts:
            assert p == list(range(p[0], p[0] + len(p)))  # contiguous
    assert per_rank[0][0] == [0, 1, 2] and per_rank[2][0] == [6, 7, 8]
    with pytest.raises(ValueError, match="rank"):
        make_splits(True, 2, 1000, 0.6, 0.2, reader, rank=3, world_size=3)


def test_resume_position_is_within_each_ranks_slice(embedding_dir):
    root, *_ = embedding_dir
    reader = get_reader(True, str(root / "img_emb"), meta_url=str(root / "metadata"))
    world, batch = 2, 2
    full, resumed = [], []
    for rank in range(world):
        train, _, _ = make_splits(True, batch, 1000, 1.0, 0.0, reader, rank=rank, world_size=world, tokenizer=None)
        full.append(rows_of(train))
        it = iter(train)
        consumed = rows_of([next(it), next(it)])  # two steps, then "crash"
        saved = train.dataset.get_start()
        assert saved == train.dataset.range_start + 2 * batch
        fresh, _, _ = make_splits(True, batch, 1000, 1.0, 0.0, reader, rank=rank, world_size=world, tokenizer=None)
        fresh.dataset.set_start(saved)
        resumed.append(consumed + rows_of(fresh))
    assert resumed == full  # every rank continues exactly where it stopped, in its own rows
    assert fresh.dataset.get_start() == fresh.dataset.range_start  # a finished pass rewinds
    assert rows_of(fresh) == full[1]  # so the next epoch is complete again
    assert full[0] == list(range(0, 8)) and full[1] == list(range(8, 16))
    # samples_seen (global) -> per-rank offset
    assert rank_resume_offset(2 * world * batch, world) == 2 * batch
    with pytest.raises(ValueError, match="outside this dataset's rows"):
        fresh.dataset.set_start(0)  # rank 1 cannot be sent into rank 0's rows


def test_all_zero_rows_are_dropped_and_counted(tmp_path):
    emb = np.ones((6, 4), dtype=np.float32)
    emb[[1, 4]] = 0
    reader = ArrayEmbeddingReader(emb, captions=[f"c{i}" for i in range(6)])
    ds = PriorEmbeddingDataset(True, 3, 0, 6, reader, tokenizer=None)
    batches = list(ds)
    assert [caps for _, caps in batches] == [["c0", "c2"], ["c3", "c5"]]
    assert ds.skipped.samples == 2


def test_in_memory_loader_and_workers():
    image = torch.arange(40, dtype=torch.float32).reshape(10, 4) + 1
    text = -image
    loader = in_memory_prior_loader(image, batch_size=3, text_embed=text, rank=1, world_size=2)
    batches = list(loader)
    assert torch.equal(torch.cat([b[0] for b in batches]), image[5:10])
    assert torch.equal(torch.cat([b[1] for b in batches]), text[5:10])
    with pytest.raises(ValueError, match="exactly one"):
        in_memory_prior_loader(image, batch_size=3)
    # two DataLoader workers split the batches: each row exactly once
    ds = PriorEmbeddingDataset(False, 2, 0, 10, ArrayEmbeddingReader(image), ArrayEmbeddingReader(text))
    rows = sorted(int(v) for b, _ in DataLoader(ds, batch_size=None, num_workers=2) for v in b[:, 0])
    assert rows == [int(v) for v in image[:, 0]]


def test_metadata_row_mismatch_is_reported(embedding_dir):
    root, *_ = embedding_dir
    (root / "metadata" / "metadata_0001.json").write_text(json.dumps({"caption": ["only one"]}))
    reader = get_reader(True, str(root / "img_emb"), meta_url=str(root / "metadata"))
    with pytest.raises(ValueError, match="metadata_0001.json has 1 rows"):
        reader.read(0, reader.count)
    (root / "metadata" / "metadata_0002.json").unlink()
    with pytest.raises(ValueError, match=r"no file for shard\(s\) \[2\]"):
        get_reader(True, str(root / "img_emb"), meta_url=str(root / "metadata"))
