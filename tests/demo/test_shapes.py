"""The procedural shapes dataset: determinism, captions, held-out combinations, shard layout."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dalle2_pytorch.demo.captions import caption_for, parse_prompt, prompt_for
from dalle2_pytorch.demo.shapes import (
    COLOURS, DEFAULT_HELDOUT, SHAPES, DatasetInfo, ShapeAttributes, generate_dataset, main, render,
    sample_attributes, sample_heldout_attributes,
)

TINY = dict(num_train=48, num_val=12, image_size=32, samples_per_shard=20)


def _members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _all_samples(info: DatasetInfo) -> list[dict]:
    out = []
    for shard in info.train_shards + info.val_shards:
        members = _members(shard)
        for name in sorted(members):
            if name.endswith(".json"):
                key = name[: -len(".json")]
                out.append({"attrs": json.loads(members[name]), "txt": members[key + ".txt"].decode(),
                            "png": members[key + ".png"], "key": key})
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> DatasetInfo:
    return generate_dataset(tmp_path_factory.mktemp("shapes") / "a", seed=0, **TINY)


def test_same_seed_gives_identical_shards_and_other_seed_differs(tiny, tmp_path):
    again = generate_dataset(tmp_path / "b", seed=0, **TINY)
    other = generate_dataset(tmp_path / "c", seed=1, **TINY)
    assert [Path(p).name for p in again.train_shards] == ["shapes-000000.tar", "shapes-000001.tar", "shapes-000002.tar"]
    for a, b in zip(tiny.train_shards + tiny.val_shards, again.train_shards + again.val_shards):
        assert Path(a).read_bytes() == Path(b).read_bytes()
    assert Path(tiny.train_shards[0]).read_bytes() != Path(other.train_shards[0]).read_bytes()


def test_samples_have_image_caption_and_attributes(tiny):
    samples = _all_samples(tiny)
    assert len(samples) == TINY["num_train"] + TINY["num_val"]
    assert sum(s["key"].startswith("train-") for s in samples) == TINY["num_train"]
    for s in samples[:10]:
        image = Image.open(io.BytesIO(s["png"]))
        assert image.mode == "RGB" and image.size == (32, 32)
        attrs = ShapeAttributes.from_dict({k: v for k, v in s["attrs"].items() if k != "caption"})
        assert np.array_equal(np.asarray(image), np.asarray(render(attrs, 32)))  # json describes the image
        assert s["attrs"]["caption"] == s["txt"]


def test_captions_vary_and_name_colour_and_shape(tiny):
    samples = _all_samples(tiny)
    captions = [s["txt"] for s in samples]
    assert len(set(captions)) > 0.8 * len(captions)
    # several phrasings, not one template
    starts = {c.split()[0] for c in captions}
    assert len(starts) >= 4
    for s in samples:
        assert parse_prompt(s["txt"]) == (s["attrs"]["colour"], s["attrs"]["shape"]), s["txt"]


def test_heldout_combinations_never_rendered(tiny):
    seen = {(s["attrs"]["colour"], s["attrs"]["shape"]) for s in _all_samples(tiny)}
    assert not seen & set(DEFAULT_HELDOUT)
    assert [parse_prompt(p) for p in tiny.heldout_prompts] == list(DEFAULT_HELDOUT)
    # a larger sample of the attribute sampler: all allowed pairs appear, held-out ones never
    rng = np.random.default_rng(0)
    pairs = {(a.colour, a.shape) for a in (sample_attributes(rng, DEFAULT_HELDOUT) for _ in range(2000))}
    assert pairs == {(c, s) for c in COLOURS for s in SHAPES} - set(DEFAULT_HELDOUT)
    held = {(a.colour, a.shape) for a in (sample_heldout_attributes(rng) for _ in range(200))}
    assert held == set(DEFAULT_HELDOUT)


def test_info_roundtrip_and_brace_pattern(tiny):
    import webdataset as wds

    loaded = DatasetInfo.load(tiny.root)
    assert loaded == tiny
    assert tiny.train_urls.endswith("train/shapes-{000000..000002}.tar")
    keys = [s["__key__"] for s in wds.WebDataset(tiny.train_urls, shardshuffle=False)]
    assert len(keys) == TINY["num_train"] and keys[0] == "train-0000000"


def test_existing_dataset_is_reused_unless_overwritten(tmp_path):
    info = generate_dataset(tmp_path, seed=3, **TINY)
    shard = Path(info.train_shards[0])
    stamp = shard.stat().st_mtime_ns
    assert generate_dataset(tmp_path, seed=3, **TINY) == info
    assert shard.stat().st_mtime_ns == stamp
    changed = generate_dataset(tmp_path, seed=4, **TINY)
    assert changed.params["seed"] == 4 and shard.read_bytes() != b""
    assert Path(changed.train_shards[0]).stat().st_mtime_ns != stamp


def test_render_is_pure_and_resolution_independent():
    attrs = sample_attributes(np.random.default_rng(5), max_rotation=90)
    a, b = render(attrs, 48), render(attrs, 48)
    assert a.size == (48, 48) and a.tobytes() == b.tobytes()
    assert ShapeAttributes.from_dict(json.loads(json.dumps(attrs.to_dict()))) == attrs
    # same picture at two resolutions: mean colour agrees
    big, small = np.asarray(render(attrs, 64), dtype=float), np.asarray(render(attrs, 32), dtype=float)
    assert np.abs(big.mean((0, 1)) - small.mean((0, 1))).max() < 2.0


def test_caption_and_prompt_wording():
    rng = np.random.default_rng(0)
    attrs = sample_attributes(rng, colour="orange", shape="cross")
    captions = {caption_for(attrs, rng) for _ in range(60)}
    assert len(captions) > 20
    assert prompt_for("orange", "star") == "an orange star"
    assert prompt_for("red", "circle", "small") == "a small red circle"


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        generate_dataset(tmp_path, num_train=0, num_val=0)
    with pytest.raises(ValueError, match="image_format"):
        generate_dataset(tmp_path, num_train=2, num_val=0, image_format="gif")
    with pytest.raises(ValueError, match="colour"):
        sample_attributes(np.random.default_rng(0), exclude=[("teal", "star")])
    with pytest.raises(ValueError, match="no allowed"):
        sample_attributes(np.random.default_rng(0), exclude=DEFAULT_HELDOUT, colour="red", shape="star")
    with pytest.raises(ValueError, match="image_size"):
        render(sample_attributes(np.random.default_rng(0)), 4)


def test_cli(tmp_path, capsys):
    info = main(["--out", str(tmp_path), "--num-train", "5", "--num-val", "2", "--image-size", "32", "--format", "jpg"])
    assert info.image_key == "jpg" and info.num_train == 5
    assert "wrote 5 train + 2 val" in capsys.readouterr().out
    assert any(name.endswith(".jpg") for name in _members(info.val_shards[0]))
