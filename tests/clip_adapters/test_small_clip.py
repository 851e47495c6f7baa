"""The torch-only small CLIP: towers, loss, adapter, saved folders (lazy image tower), old x-clip folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dalle2_pytorch.clip_adapters import (
    SmallCLIP,
    SmallClipAdapter,
    WordTokenizer,
    build_clip_adapter,
    load_clip_folder,
    load_small_clip,
    save_small_clip,
)
from dalle2_pytorch.clip_adapters.clip_folder import folder_architecture

VOCAB = ["a", "red", "blue", "star", "circle", "in", "the", "top", "left", "bottom", "right"]
KWARGS = dict(dim_text=16, text_depth=1, text_heads=2, dim_image=16, image_size=16, image_widths=[8, 16],
              image_grid=2, dim_latent=8)


def _model(seed: int = 0) -> tuple[SmallCLIP, WordTokenizer, dict]:
    tokenizer = WordTokenizer(VOCAB, context_length=8)
    kwargs = {**KWARGS, "num_text_tokens": tokenizer.vocab_size, "text_seq_len": 8}
    torch.manual_seed(seed)
    return SmallCLIP(**kwargs), tokenizer, kwargs


def test_embeddings_shapes_norms_and_padding():
    clip, tokenizer, _ = _model()
    adapter = SmallClipAdapter(clip, tokenizer)
    tokens = adapter.tokenize(["a red star", "a blue circle in the top left"])
    text = adapter.embed_text(tokens)
    assert text.text_embed.shape == (2, 8) and torch.allclose(text.text_embed.norm(dim=-1), torch.ones(2))
    assert text.text_encodings.shape == (2, 8, 16)
    assert (text.text_encodings[tokens == 0] == 0).all() and (text.text_encodings[tokens != 0] != 0).any()
    # padding does not change the embedding: the same text with a longer context
    longer = SmallClipAdapter(clip, WordTokenizer(VOCAB, context_length=8))
    assert torch.allclose(longer.embed_text(longer.tokenize(["a red star"])).text_embed, text.text_embed[:1], atol=1e-5)
    image = adapter.embed_image(torch.rand(3, 3, 32, 32))  # resized to 16 px
    assert image.image_embed.shape == (3, 8) and image.image_encodings.shape == (3, 16, 16)
    assert adapter.dim_latent == 8 and adapter.image_size == 16 and adapter.max_text_len == 8
    with pytest.raises(ValueError, match="vocabulary"):
        adapter.embed_text(torch.full((1, 3), 99))


def test_image_embedding_knows_the_position():
    """The grid-pooled head sees where an object is (a mean pool alone could not)."""
    clip, _, _ = _model()
    left, right = torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)
    left[..., 2:6, 2:6] = 1.0
    right[..., 10:14, 10:14] = 1.0
    with torch.no_grad():
        a, b = clip.encode_image(left)[0], clip.encode_image(right)[0]
    assert not torch.allclose(a, b, atol=1e-3)


def test_contrastive_loss_trains():
    clip, tokenizer, _ = _model()
    texts = ["a red star", "a blue circle", "a red circle", "a blue star"]
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer(texts)
    opt = torch.optim.Adam(clip.parameters(), lr=3e-3)
    first = clip(tokens, images).item()
    for _ in range(30):
        loss = clip(tokens, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert clip(tokens, images).item() < 0.5 * first


def test_saved_folder_round_trip_and_lazy_image_tower(tmp_path, monkeypatch):
    clip, tokenizer, kwargs = _model(3)
    save_small_clip(clip.eval(), tokenizer, tmp_path, kwargs, metrics={"x": 1.0})
    assert folder_architecture(tmp_path) == "small-clip"
    assert json.loads((tmp_path / "clip_config.json").read_text())["metrics"] == {"x": 1.0}
    images = torch.rand(2, 3, 16, 16)
    tokens = tokenizer(["a red star", "the blue circle"])
    with torch.no_grad():
        expected_text, expected_image = clip.encode_text(tokens)[0], clip.encode_image(images)[0]

    whole, tok, loader = load_small_clip(tmp_path)
    assert loader is None and whole.image_tower is not None and tok.vocab == tokenizer.vocab
    with torch.no_grad():
        torch.testing.assert_close(whole.encode_image(images)[0], expected_image)

    adapter = load_clip_folder(tmp_path, image_tower="lazy")
    assert isinstance(adapter, SmallClipAdapter) and not adapter.has_image_tower
    assert not any(k.startswith("clip.image_tower.") for k in adapter.state_dict())
    torch.testing.assert_close(adapter.embed_text(tokens).text_embed, expected_text)
    assert not adapter.has_image_tower  # text only: the image tower is still not built
    torch.testing.assert_close(adapter.embed_image(images).image_embed, expected_image)
    assert adapter.has_image_tower and not adapter.clip.image_tower.training
    assert all(not p.requires_grad for p in adapter.parameters())

    text_only = load_clip_folder(tmp_path, image_tower="none")
    with pytest.raises(ValueError, match="no image tower"):
        text_only.embed_image(images)
    # the adapter factory and the config's `make`
    assert isinstance(build_clip_adapter("small-clip", str(tmp_path)), SmallClipAdapter)
    assert isinstance(build_clip_adapter("x-clip", str(tmp_path)), SmallClipAdapter)  # folders describe themselves
    with pytest.raises(ValueError, match="saved small-CLIP folder"):
        build_clip_adapter("small-clip", str(tmp_path / "missing"))


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved CLIP folder"):
        load_clip_folder(tmp_path)
    clip, tokenizer, kwargs = _model()
    save_small_clip(clip, tokenizer, tmp_path, {**kwargs, "dim_latent": 4})  # config does not match the weights
    with pytest.raises(ValueError, match="does not match"):
        load_small_clip(tmp_path)
    (tmp_path / "clip.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="could not read"):
        load_small_clip(tmp_path)


def test_old_x_clip_demo_folders_still_load(tmp_path):
    from dalle2_pytorch.clip_adapters import XClipAdapter
    from dalle2_pytorch.clip_adapters.x_clip_folder import build_clip, save_clip

    tokenizer = WordTokenizer(VOCAB, context_length=8)
    kwargs = dict(dim_text=16, dim_image=16, dim_latent=8, num_text_tokens=tokenizer.vocab_size, text_enc_depth=1,
                  text_seq_len=8, text_heads=2, text_dim_head=8, visual_enc_depth=1, visual_heads=2,
                  visual_dim_head=8, visual_image_size=16, visual_patch_size=8,
                  image_encoder={"type": "conv", "widths": [8, 16]}, text_encode_without_mask=True)
    old = build_clip(kwargs).eval()
    save_clip(old, tokenizer, tmp_path, kwargs)
    assert folder_architecture(tmp_path) == "x-clip"
    adapter = load_clip_folder(tmp_path)
    assert isinstance(adapter, XClipAdapter)
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(old.to_visual_latent(old.visual_transformer(images)[:, 0]), dim=-1)
    torch.testing.assert_close(adapter.embed_image(images).image_embed, expected)


def test_text_embedding_from_a_folder_imports_no_heavy_package(tmp_path):
    """The dream fast path: a small-CLIP folder embeds text without x-clip, torchvision or open_clip."""
    clip, tokenizer, kwargs = _model()
    save_small_clip(clip, tokenizer, tmp_path, kwargs)
    code = (
        "import sys; from dalle2_pytorch.clip_adapters.clip_folder import load_clip_folder\n"
        f"a = load_clip_folder({str(tmp_path)!r}, image_tower='lazy')\n"
        "a.embed_text(a.tokenize(['a red star']))\n"
        "heavy = [m for m in ('x_clip', 'torchvision', 'open_clip', 'torch._dynamo', 'pydantic') if m in sys.modules]\n"
        "print('HEAVY', heavy, a.has_image_tower)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY [] False" in out, out
