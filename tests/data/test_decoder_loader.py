"""Decoder webdataset loader on real tar shards: reading, shard lists, splits, rank/worker
placement, shuffling, precomputed embeddings, and skipping + counting corrupt data."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from dalle2_pytorch.data import (
    ImageEmbeddingDataset,
    SkipCounter,
    TooManyConsecutiveErrors,
    build_image_preprocessing,
    consumer_split,
    create_decoder_dataloaders,
    create_image_embedding_dataloader,
    expand_urls,
    shard_number,
    shard_urls_from_template,
    split_shards,
)

SMALL = {"Resize": [16, 16], "ToTensor": True}
CAPTIONS = ["cat", "sea", "tree", "motel", "plants", "small cat", "buildings"]


def ids(items, batched: bool = False) -> list[tuple[str, str]]:
    """(shard file name, key) of everything yielded; the last two extras must be __url__, __key__."""
    out = []
    for item in items:
        urls, keys = item[-2], item[-1]
        if batched:
            out.extend((Path(u).name, k) for u, k in zip(urls, keys))
        else:
            out.append((Path(urls).name, keys))
    return out


def make_dataset(urls, **kwargs) -> ImageEmbeddingDataset:
    kwargs.setdefault("img_preproc", SMALL)
    kwargs.setdefault("extra_keys", ["__url__", "__key__"])
    kwargs.setdefault("rank", 0)
    kwargs.setdefault("world_size", 1)
    return ImageEmbeddingDataset(urls, **kwargs)


def all_reference_ids(reference_shards, n=10) -> set[tuple[str, str]]:
    return {(f"{s}.tar", str(k)) for s in range(n) for k in range(7)}


# ---------------------------------------------------------------------------- reading
def test_reference_shards_are_read_completely(reference_shards):
    loader = create_image_embedding_dataloader(
        f"{reference_shards}/{{0..9}}.tar", num_workers=0, batch_size=4,
        img_preproc={"RandomResizedCrop": {"size": [24, 24], "scale": [0.75, 1.0]}, "ToTensor": True},
        extra_keys=["txt"], rank=0, world_size=1,
    )
    images, captions, embs = [], [], []
    for image, emb, txt in loader:
        images.append(image)
        captions.extend(txt)
        embs.append(emb)
    images = torch.cat(images)
    assert images.shape == (70, 3, 24, 24)
    assert images.dtype == torch.float32 and 0.0 <= images.min() and images.max() <= 1.0
    assert images.std() > 0.05  # real pixels, not a constant
    assert all(e == {} for e in embs)  # no precomputed embeddings
    assert sorted(c.strip() for c in captions) == sorted(CAPTIONS * 10)
    assert loader.skipped.total == 0


def test_image_pixels_match_pil_decode(tmp_path, jpeg, make_shard):
    data = jpeg(3, size=(20, 12))
    url = make_shard(tmp_path / "000000.tar", [("000000000", {"jpg": data, "txt": b"x"})])
    expected = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1) / 255.0
    (image, emb, txt), = list(make_dataset(str(url), img_preproc=None, extra_keys=["txt"]))
    assert image.shape == (3, 12, 20)
    torch.testing.assert_close(image, expected.float())
    assert txt == "x"


# ---------------------------------------------------------------------------- shard lists
def test_brace_expansion_and_template(reference_shards, tmp_path):
    urls = expand_urls(f"{reference_shards}/{{0..9}}.tar")
    assert [Path(u).name for u in urls] == [f"{i}.tar" for i in range(10)]
    assert len(expand_urls(f"{reference_shards}/{{0..1}}.tar::{reference_shards}/{{5..6}}.tar")) == 4
    # reference DecoderDataConfig convention: `{}` placeholder, shard_width, inclusive start..end
    assert shard_urls_from_template(f"{reference_shards}/{{}}.tar", 0, 9, 1) == urls
    assert shard_urls_from_template(f"{reference_shards}/{{}}.tar", 3, 5, 1) == urls[3:6]
    # the reference's default end_shard (9999999) lists the folder instead of probing 10M names
    assert shard_urls_from_template(f"{reference_shards}/{{}}.tar", 0, 9999999, 1) == urls
    # remote URLs are generated, zero-padded
    remote = shard_urls_from_template("s3://bucket/{}.tar", 8, 10, 6)
    assert remote == ["s3://bucket/000008.tar", "s3://bucket/000009.tar", "s3://bucket/000010.tar"]
    with pytest.raises(ValueError, match="placeholder"):
        shard_urls_from_template(f"{reference_shards}/0.tar")
    with pytest.raises(ValueError, match="no shards found"):
        shard_urls_from_template(f"{reference_shards}/{{}}.tar", 0, 9, 6)  # wrong width: 000000.tar absent
    assert shard_number("/x/000123.tar") == 123 and shard_number("img_emb_0007.npy") == 7
    with pytest.raises(ValueError, match="shard number"):
        shard_number("/x/train.tar")


def test_split_shards_is_seeded_disjoint_and_complete():
    urls = [f"{i}.tar" for i in range(20)]
    a = split_shards(urls, {"train": 0.75, "val": 0.15, "test": 0.1}, seed=3)
    assert a == split_shards(urls, (0.75, 0.15, 0.1), seed=3)
    assert [len(a[k]) for k in ("train", "val", "test")] == [15, 3, 2]
    assert sorted(a["train"] + a["val"] + a["test"], key=lambda u: int(u.split(".")[0])) == urls
    others = [split_shards(urls, (0.75, 0.15, 0.1), seed=s) for s in range(4, 8)]
    assert any(o != a for o in others)
    tiny = split_shards(urls[:3], (0.8, 0.1, 0.1), seed=0)
    assert [len(tiny[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(ValueError, match="sum to 1"):
        split_shards(urls, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="cannot be split"):
        split_shards(urls[:2], (0.8, 0.1, 0.1))


# ---------------------------------------------------------------------------- ranks and workers
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_split_by_node_gives_disjoint_shards(reference_shards, world_size):
    urls = f"{reference_shards}/{{0..9}}.tar"
    per_rank = [ids(make_dataset(urls, rank=r, world_size=world_size, drop_uneven_shards=False)) for r in range(world_size)]
    flat = [x for part in per_rank for x in part]
    assert len(flat) == len(set(flat)) == 70  # disjoint and complete
    for part in per_rank:  # whole shards per rank
        shards = {s for s, _ in part}
        assert len(part) == 7 * len(shards)
    # default: equal shard counts per rank (the remainder dropped, as in the reference)
    equal = [ids(make_dataset(urls, rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(p) for p in equal}) == 1
    assert len(set(x for p in equal for x in p)) == 7 * (10 - 10 % world_size)


def test_fewer_shards_than_ranks_splits_by_sample(reference_shards):
    urls = f"{reference_shards}/{{0..1}}.tar"
    per_rank = [ids(make_dataset(urls, rank=r, world_size=4)) for r in range(4)]
    flat = [x for part in per_rank for x in part]
    assert len(flat) == len(set(flat)) == 14
    assert all(3 <= len(part) <= 4 for part in per_rank)
    assert all({s for s, _ in part} == {"0.tar", "1.tar"} for part in per_rank)


def test_rank_from_environment(reference_shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = ImageEmbeddingDataset(f"{reference_shards}/{{0..3}}.tar", img_preproc=SMALL, extra_keys=["__url__", "__key__"])
    assert (ds.rank, ds.world_size) == (1, 2)
    assert len(ids(ds)) == 14


def test_consumer_split_covers_every_sample_once():
    for n_shards, world, workers in itertools.product([1, 2, 5, 12], [1, 2, 3], [1, 2, 4]):
        shards = list(range(n_shards))
        owners: dict[tuple[int, int], int] = {}
        for r in range(world):
            for w in range(workers):
                split = consumer_split(shards, r, world, w, workers, drop_uneven_shards=False)
                stream = [(s, i) for s in split.shards for i in range(6)]  # 6 samples per shard
                for position, sample in enumerate(stream):
                    if split.keep(position):
                        owners[sample] = owners.get(sample, 0) + 1
        assert owners == {(s, i): 1 for s in shards for i in range(6)}, (n_shards, world, workers)


def test_dataloader_workers_split_shards_and_samples(reference_shards):
    many = create_image_embedding_dataloader(
        f"{reference_shards}/{{0..3}}.tar", num_workers=2, batch_size=5, img_preproc=SMALL,
        extra_keys=["__url__", "__key__"], rank=0, world_size=1,
    )
    got = ids(many, batched=True)
    assert len(got) == len(set(got)) == 28
    one_shard = create_image_embedding_dataloader(
        f"{reference_shards}/0.tar", num_workers=2, batch_size=2, img_preproc=SMALL,
        extra_keys=["__url__", "__key__"], rank=0, world_size=1,
    )
    got = ids(one_shard, batched=True)
    assert sorted(got) == [("0.tar", str(k)) for k in range(7)]


# ---------------------------------------------------------------------------- shuffling
def test_shard_shuffle_is_seeded_and_changes_per_epoch(reference_shards):
    urls = f"{reference_shards}/{{0..9}}.tar"

    def order(**kwargs):
        return [s for s, k in ids(make_dataset(urls, **kwargs)) if k == "0"]

    epoch0 = order(seed=1)
    assert epoch0 == order(seed=1)
    assert sorted(epoch0, key=lambda s: int(s[:-4])) == [f"{i}.tar" for i in range(10)]
    assert epoch0 != [f"{i}.tar" for i in range(10)] or order(seed=2) != epoch0
    ds = make_dataset(urls, seed=1)
    ds.set_epoch(1)
    epoch1 = [s for s, k in ids(ds) if k == "0"]
    assert epoch1 != epoch0
    # every epoch the ranks still see disjoint shards
    parts = []
    for r in range(2):
        d = make_dataset(urls, seed=1, rank=r, world_size=2)
        d.set_epoch(5)
        parts.append(set(ids(d)))
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 70
    # the loader advances the epoch by itself
    loader = create_image_embedding_dataloader(urls, 0, 7, img_preproc=SMALL, extra_keys=["__url__", "__key__"], seed=1, rank=0, world_size=1)
    first = [b[-2][0] for b in loader]
    second = [b[-2][0] for b in loader]
    assert sorted(first) == sorted(second) and first != second


def test_sample_shuffle_buffer(reference_shards):
    urls = f"{reference_shards}/{{0..2}}.tar"
    plain = ids(make_dataset(urls, shuffle_shards=False))
    shuffled = ids(make_dataset(urls, shuffle_shards=False, shuffle_buffer=10, seed=4))
    assert sorted(plain) == sorted(shuffled) and plain != shuffled
    assert shuffled == ids(make_dataset(urls, shuffle_shards=False, shuffle_buffer=10, seed=4))


def test_resampled_shards_stream_is_infinite_and_seeded(reference_shards):
    urls = f"{reference_shards}/{{0..9}}.tar"

    def take(seed, n=30):
        stream = iter(make_dataset(urls, resample=True, seed=seed))
        return [next(stream)[-2:] for _ in range(n)]

    a = take(0)
    assert len(a) == 30 and a == take(0) and a != take(1)
    assert {Path(u).name for u, _ in a} <= {f"{i}.tar" for i in range(10)}


# ---------------------------------------------------------------------------- preprocessing
def test_preprocessing_from_config():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    out = build_image_preprocessing({"RandomResizedCrop": {"size": [8, 8], "scale": [0.5, 1.0], "ratio": [1.0, 1.0]},
                                     "RandomHorizontalFlip": True, "ToTensor": True})(image)
    assert out.shape == (3, 8, 8)
    out = build_image_preprocessing({"Resize": 20, "CenterCrop": 16, "RandomHorizontalFlip": False})(image)
    assert out.shape == (3, 16, 16)  # ToTensor appended when missing
    with pytest.raises(ValueError, match="unknown preprocessing transform 'Normalize'"):
        build_image_preprocessing({"Normalize": {"mean": [0.5], "std": [0.5]}})
    with pytest.raises(ValueError, match="RandomResizedCrop"):
        build_image_preprocessing({"RandomResizedCrop": {"sizee": 8}})


# ---------------------------------------------------------------------------- corrupt data
@pytest.fixture
def damaged_shards(tmp_path, make_shard, samples_for, jpeg):
    """Four shards: good, one with a corrupt and a truncated JPEG, one truncated tar, good."""
    a = make_shard(tmp_path / "000000.tar", samples_for(["a0", "a1", "a2"], seed=0))
    bad = samples_for(["b0", "b1", "b2", "b3"], seed=10)
    bad[1][1]["jpg"] = b"this is not a jpeg" * 20
    bad[2][1]["jpg"] = jpeg(99, size=(64, 64))[:300]
    b = make_shard(tmp_path / "000001.tar", bad)
    full = make_shard(tmp_path / "full.tar", samples_for(["c0", "c1", "c2", "c3"], seed=20)).read_bytes()
    c = tmp_path / "000002.tar"
    c.write_bytes(full[: len(full) // 2])
    d = make_shard(tmp_path / "000003.tar", samples_for(["d0", "d1"], seed=30))
    return [str(p) for p in (a, b, c, d)]


def test_corrupt_samples_and_truncated_tar_are_skipped_and_counted(damaged_shards, caplog):
    ds = make_dataset(damaged_shards, shuffle_shards=False)
    with caplog.at_level("WARNING", logger="dalle2_pytorch.data.counters"):
        got = ids(ds)
    keys = [k for _, k in got]
    assert keys[:5] == ["a0", "a1", "a2", "b0", "b3"]  # b1 (garbage), b2 (truncated JPEG) skipped
    assert keys[-2:] == ["d0", "d1"]  # the run continued after the truncated tar
    assert set(keys[5:-2]) <= {"c0", "c1", "c2", "c3"} and len(keys[5:-2]) < 4
    assert ds.skipped.samples == 2 and ds.skipped.shards == 1
    recorded = {(Path(r.url).name, r.key) for r in ds.skipped.recent}
    assert {("000001.tar", "b1"), ("000001.tar", "b2"), ("000002.tar", None)} == recorded
    assert "000001.tar" in caplog.text and "b1" in caplog.text


def test_skip_counts_reach_the_main_process_from_workers(damaged_shards):
    loader = create_image_embedding_dataloader(
        damaged_shards, num_workers=2, batch_size=2, img_preproc=SMALL, extra_keys=["__url__", "__key__"],
        rank=0, world_size=1, shuffle_shards=False,
    )
    got = ids(loader, batched=True)
    assert {"a0", "a1", "a2", "b0", "b3", "d0", "d1"} <= {k for _, k in got}
    assert loader.skipped.samples == 2 and loader.skipped.shards == 1


def test_reraise_handler_and_consecutive_error_limit(damaged_shards, tmp_path, make_shard):
    with pytest.raises(Exception, match="cannot identify image|truncated"):
        list(make_dataset(damaged_shards, shuffle_shards=False, handler=wds.reraise_exception))
    stop = make_dataset(damaged_shards, shuffle_shards=False, handler=lambda exn: False)
    assert [k for _, k in ids(stop)] == ["a0", "a1", "a2", "b0"]  # a False handler ends the stream
    broken = make_shard(tmp_path / "000009.tar", [(f"k{i}", {"jpg": b"junk", "txt": b"t"}) for i in range(5)])
    ds = make_dataset(str(broken), skip_counter=SkipCounter(max_consecutive_errors=3))
    with pytest.raises(TooManyConsecutiveErrors, match="3 consecutive data errors"):
        list(ds)


def test_missing_extra_key_is_a_skipped_sample(tmp_path, make_shard, samples_for):
    samples = samples_for(["k0", "k1"])
    del samples[1][1]["txt"]
    ds = make_dataset(str(make_shard(tmp_path / "000000.tar", samples)), extra_keys=["txt"])
    assert len(list(ds)) == 1 and ds.skipped.samples == 1


# ---------------------------------------------------------------------------- embeddings
def test_precomputed_embeddings_are_joined_by_key(tmp_path, make_shard, samples_for):
    # img2dataset keys: 4 shard digits + 4 index digits; rows = last index_width=4 characters
    shards, rng = [], np.random.default_rng(0)
    img_dir, txt_dir = tmp_path / "img_emb", tmp_path / "text_emb"
    img_dir.mkdir()
    txt_dir.mkdir()
    tables = {}
    for s in range(3):
        keys = [f"{s:04d}{i:04d}" for i in range(4)]
        shards.append(str(make_shard(tmp_path / f"{s:05d}.tar", samples_for(keys, seed=10 * s))))
        img, txt = rng.normal(size=(4, 8)).astype(np.float16), rng.normal(size=(4, 8)).astype(np.float32)
        if s == 1:
            img[2] = 0  # missing embedding -> sample skipped
        if s != 2:  # shard 2 has no embedding files -> left out
            np.save(img_dir / f"img_emb_{s:04d}.npy", img)
            np.save(txt_dir / f"text_emb_{s:04d}.npy", txt)
        tables[s] = (img, txt)
    ds = make_dataset(shards, img_embedding_folder_url=str(img_dir), text_embedding_folder_url=str(txt_dir),
                      index_width=4, extra_keys=["__key__"], shuffle_shards=False)
    assert len(ds.urls) == 2
    seen = []
    for image, emb, key in ds:
        s, i = int(key[:4]), int(key[4:])
        assert emb["img"].dtype == torch.float32
        torch.testing.assert_close(emb["img"], torch.from_numpy(tables[s][0][i].astype(np.float32)))
        torch.testing.assert_close(emb["text"], torch.from_numpy(tables[s][1][i]))
        seen.append(key)
    assert seen == ["00000000", "00000001", "00000002", "00000003", "00010000", "00010001", "00010003"]
    assert ds.skipped.samples == 1
    # batched: emb becomes a dict of (b, d) tensors
    loader = create_image_embedding_dataloader(shards, 0, 3, img_embeddings_url=str(img_dir), index_width=4,
                                               img_preproc=SMALL, rank=0, world_size=1)
    image, emb = next(iter(loader))
    assert image.shape == (3, 3, 16, 16) and set(emb) == {"img"} and emb["img"].shape == (3, 8)
    with pytest.raises(ValueError, match="no shard has a matching embedding file"):
        make_dataset(shards[2:], img_embedding_folder_url=str(img_dir), index_width=4)


# ---------------------------------------------------------------------------- from config
def test_create_decoder_dataloaders_from_config(reference_shards):
    config = {
        "webdataset_base_url": f"{reference_shards}/{{}}.tar", "num_workers": 0, "batch_size": 4,
        "start_shard": 0, "end_shard": 9, "shard_width": 1, "index_width": 1,
        "splits": {"train": 0.75, "val": 0.15, "test": 0.1}, "shuffle_train": True, "resample_train": False,
        "preprocessing": {"RandomResizedCrop": {"size": [16, 16], "scale": [0.75, 1.0], "ratio": [1.0, 1.0]}, "ToTensor": True},
    }
    loaders = create_decoder_dataloaders(config, rank=0, world_size=1, seed=0, extra_keys=["txt", "__url__"], sampling_batch_size=2)
    assert set(loaders) == {"train", "val", "test", "train_sampling", "test_sampling"}
    shards = {name: {Path(u).name for b in loaders[name] for u in b[-1]} for name in ("train", "val", "test")}
    assert [len(shards[k]) for k in ("train", "val", "test")] == [7, 2, 1]
    assert not (shards["train"] & shards["val"]) and not (shards["val"] & shards["test"])
    image, emb, txt, url = next(iter(loaders["test_sampling"]))
    assert image.shape == (2, 3, 16, 16) and len(txt) == 2
    with pytest.raises(ValueError, match="unknown preprocessing transform"):
        create_decoder_dataloaders({**config, "preprocessing": {"ColorJitter": True}})


@pytest.mark.slow  # ~10 s: spawned workers re-import torch
def test_skip_counts_from_spawned_workers(reference_shards):
    # spawn (and forkserver, Python 3.14's default) pickle the dataset into the workers
    ds = make_dataset([str(reference_shards / "missing_000005.tar"), str(reference_shards / "1.tar")], shuffle_shards=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    assert sum(len(batch[0]) for batch in loader) == 7
    assert ds.skipped.shards == 1 and ds.skipped.samples == 0


def test_create_decoder_dataloaders_from_pydantic_config(reference_shards):
    from dalle2_pytorch.config.decoder import DecoderDataConfig

    config = DecoderDataConfig(
        webdataset_base_url=f"{reference_shards}/{{}}.tar", shard_width=1, end_shard=9, num_workers=0, batch_size=4,
        splits={"train": 0.75, "val": 0.15, "test": 0.1}, preprocessing={"Resize": {"size": [16, 16]}, "ToTensor": True},
    )
    counts = {name: sum(len(batch[0]) for batch in loader) for name, loader in create_decoder_dataloaders(config).items()}
    assert counts == {"train": 49, "val": 14, "test": 7}
