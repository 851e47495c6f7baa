"""The demo CLIP: word tokenizer, a few training steps, save/load round trips, the adapter."""

from __future__ import annotations

import json

import pytest
import torch

from dalle2_pytorch.demo.shapes import DatasetInfo, generate_dataset
from dalle2_pytorch.demo.text_tokenizer import WordTokenizer
from dalle2_pytorch.demo.train_clip import (
    CONFIG_FILE, encode_images, encode_texts, load_clip, load_split, main, train_clip,
)

TINY_MODEL = dict(dim_text=32, dim_image=32, dim_latent=16, text_depth=1, text_heads=2, image_widths=[16, 16],
                  image_grid=2)
TEXTS = ["a small red triangle in the top left", "blue circle on a beige background", "a large green square"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> DatasetInfo:
    return generate_dataset(tmp_path_factory.mktemp("clipdata"), num_train=40, num_val=8, image_size=32, seed=0)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    return train_clip(data, out, steps=3, batch_size=8, model_kwargs=TINY_MODEL, evaluate=False, verbose=False)


def test_word_tokenizer():
    tok = WordTokenizer(["red", "star", "a"], context_length=6)
    ids = tok(["a red star", "A RED, zebra"])
    assert ids.dtype == torch.long and ids.shape == (2, 6)
    assert ids[0].tolist() == [1, 6, 4, 5, 2, 0]
    assert ids[1].tolist() == [1, 6, 4, 3, 2, 0]  # unknown word -> 3
    assert tok("a red star").shape == (1, 6)
    assert tok.decode(ids[1]) == "a red <unk>"
    assert tok(["a a a a a a a"])[0].tolist() == [1, 6, 6, 6, 6, 2]  # cut, end token kept
    with pytest.raises(ValueError, match="context length"):
        tok(["a a a a a a a"], truncate_text=False)
    assert WordTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))("a red star").equal(tok("a red star"))
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["red", "red"])
    caption_tok = WordTokenizer.for_captions()
    assert (caption_tok(TEXTS) != WordTokenizer.unk_id).all()  # every caption word is known


def test_training_saves_a_model_that_loads_identically(trained, data):
    images, captions, _ = load_split(data.val_shards, 32)
    pixels = images.float() / 255
    tokens = trained.tokenizer(captions)
    with torch.no_grad():
        before = encode_texts(trained.clip, tokens), encode_images(trained.clip, pixels)
        clip, tokenizer = load_clip(trained.out_dir)
        after = encode_texts(clip, tokenizer(captions)), encode_images(clip, pixels)
    assert not clip.training
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert before[0].shape == (8, 16) and torch.allclose(before[0].norm(dim=-1), torch.ones(8))
    assert tokenizer.context_length == clip.text_seq_len


def test_training_changed_the_weights_and_records_settings(trained):
    config = json.loads((trained.out_dir / CONFIG_FILE).read_text())
    assert config["finished"] and config["train"]["steps"] == 3
    assert config["model_kwargs"]["num_text_tokens"] == trained.tokenizer.vocab_size
    from dalle2_pytorch.demo.train_clip import build_clip

    torch.manual_seed(0)
    fresh = build_clip(config["model_kwargs"])
    diffs = [not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.clip.state_dict().values())]
    assert all(diffs[:3]) and sum(diffs) > len(diffs) // 2


def test_finished_model_is_reused_and_changed_settings_retrain(trained, data, capsys):
    again = train_clip(data, trained.out_dir, steps=3, batch_size=8, model_kwargs=TINY_MODEL, evaluate=False)
    assert again.reused and "reusing" in capsys.readouterr().out
    for a, b in zip(again.clip.state_dict().values(), trained.clip.state_dict().values()):
        assert torch.equal(a, b)
    retrained = train_clip(data, trained.out_dir.parent / "other", steps=2, batch_size=8,
                           model_kwargs=TINY_MODEL, evaluate=False, verbose=False)
    assert not retrained.reused


def test_adapter_gives_the_same_embeddings(trained, data):
    from dalle2_pytorch.clip_adapters import SmallClipAdapter, load_clip_folder

    clip, tokenizer = load_clip(trained.out_dir)
    adapter = load_clip_folder(trained.out_dir)
    assert isinstance(adapter, SmallClipAdapter)
    tokens = adapter.tokenize(TEXTS)
    assert torch.equal(tokens, tokenizer(TEXTS))
    images = load_split(data.val_shards, 32)[0].float() / 255
    with torch.no_grad():
        text = adapter.embed_text(tokens)
        image = adapter.embed_image(images)
        torch.testing.assert_close(text.text_embed, encode_texts(clip, tokens))
        torch.testing.assert_close(image.image_embed, encode_images(clip, images))
    assert adapter.dim_latent == 16 and adapter.image_size == 32 and adapter.max_text_len == tokenizer.context_length
    assert text.text_encodings.shape == (3, tokenizer.context_length, 32)
    assert (text.text_encodings[tokens == 0] == 0).all()  # padding zeroed


def test_cli_and_errors(data, tmp_path):
    result = main(["--data", data.root, "--out", str(tmp_path), "--steps", "2", "--batch-size", "8", "--no-eval"])
    assert (tmp_path / "clip.safetensors").is_file() and not result.reused
    with pytest.raises(FileNotFoundError, match="train the demo CLIP"):
        load_clip(tmp_path / "missing")
    with pytest.raises(ValueError, match="divisible by 8"):
        train_clip(data, tmp_path / "y", steps=1, batch_size=8, verbose=False,
                   model_kwargs={**TINY_MODEL, "image_widths": [12, 16]})
    with pytest.raises(ValueError, match="batch_size"):
        train_clip(data, tmp_path / "x", steps=1, batch_size=100, model_kwargs=TINY_MODEL, verbose=False)


@pytest.mark.heavy
def test_trained_demo_clip_knows_colours_and_shapes(tmp_path):
    """The demo configuration (10k samples, the demo's steps): a few minutes on one CPU core."""
    import numpy as np

    from dalle2_pytorch.clip_adapters.base import resize_image
    from dalle2_pytorch.demo.captions import caption_for
    from dalle2_pytorch.demo.shapes import COLOURS, render, sample_heldout_attributes

    info = generate_dataset(tmp_path / "data", num_train=10_000, num_val=512, seed=0)
    from dalle2_pytorch.demo.run import FULL

    result = train_clip(info, tmp_path / "clip", steps=FULL.clip_steps, log_every=500)
    m = result.metrics
    assert m["val_t2i_top1"] > 10 * m["val_chance"], m  # text -> image retrieval among 64 candidates
    assert m["val_t2i_top1_attr"] >= 0.9, m
    assert m["seen_colour_acc"] >= 0.95 and m["seen_shape_acc"] >= 0.85, m
    # (colour, shape) pairs never seen in training
    assert m["heldout_colour_acc"] >= 0.95 and m["heldout_shape_acc"] >= 0.6, m
    assert m["seen_position_acc"] >= 0.9, m  # the image embedding knows where the object is
    # a full caption beats the same caption with another colour word
    rng = np.random.default_rng(0)
    wins = []
    with torch.no_grad():
        for _ in range(100):
            attrs = sample_heldout_attributes(rng, info.heldout)
            caption = caption_for(attrs, rng)
            wrong = caption.replace(attrs.colour, [c for c in COLOURS if c != attrs.colour][int(rng.integers(5))])
            pixels = torch.from_numpy(np.asarray(render(attrs, 64)).copy()).permute(2, 0, 1)[None].float() / 255
            size = result.clip.image_size
            image = encode_images(result.clip, resize_image(pixels, (size, size)).clamp(0, 1))
            text = encode_texts(result.clip, result.tokenizer([caption, wrong]))
            sims = (image @ text.T)[0]
            wins.append(bool(sims[0] > sims[1]))
    assert np.mean(wins) >= 0.9
