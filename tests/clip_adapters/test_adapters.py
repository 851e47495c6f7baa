"""CLIP adapters: shapes, normalisation, masks, tokenizer, freezing, image checks, weight loading.

Everything uses random weights of tiny architectures; nothing is downloaded.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dalle2_pytorch.clip_adapters import (  # noqa: E402
    BaseClipAdapter,
    EmbeddedImage,
    EmbeddedText,
    OpenAIClipAdapter,
    OpenClipAdapter,
    SimpleTokenizer,
    XClipAdapter,
    build_clip_adapter,
    load_clip_state_dict,
)
from dalle2_pytorch.clip_adapters import tokenizer as tokenizer_module  # noqa: E402

SOT, EOT = 49406, 49407
# embed_dim (24) deliberately differs from the text width (32): dim_latent != text_encodings_dim
TINY_OPEN_CLIP = dict(
    embed_dim=24,
    vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
)
TINY_X_CLIP = dict(
    dim_text=32, dim_image=32, dim_latent=32, num_text_tokens=49408, text_enc_depth=1,
    text_seq_len=16, visual_enc_depth=1, visual_image_size=32, visual_patch_size=8,
    text_heads=2, visual_heads=2, text_dim_head=16, visual_dim_head=16,
)
TEXTS = ["a photo of a cat", "dog", "an oil painting of a lighthouse at dusk"]


def make_open_clip(seed: int = 0, **kwargs) -> OpenClipAdapter:
    torch.manual_seed(seed)
    return OpenClipAdapter("ViT-B/32", pretrained=None, model_kwargs=TINY_OPEN_CLIP, **kwargs)


def make_x_clip(seed: int = 0) -> XClipAdapter:
    from x_clip import CLIP

    torch.manual_seed(seed)
    return XClipAdapter(CLIP(**TINY_X_CLIP))


@pytest.fixture(scope="module")
def open_clip_adapter() -> OpenClipAdapter:
    return make_open_clip()


@pytest.fixture(scope="module")
def x_clip_adapter() -> XClipAdapter:
    return make_x_clip()


# OpenAI files carry no head counts: readers infer heads = width // 64, so use 64-wide towers here
TINY_OPENAI = dict(
    embed_dim=24,
    vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=8, head_width=64),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
)


@pytest.fixture(scope="module")
def openai_adapter() -> OpenAIClipAdapter:
    torch.manual_seed(1)
    return OpenAIClipAdapter("ViT-B/32", pretrained=False, model_kwargs=TINY_OPENAI)


def expected_mask(tokens: torch.Tensor) -> torch.Tensor:
    """Positions up to and including the first EOT, excluding padding (computed by a plain loop)."""
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for i, row in enumerate(tokens.tolist()):
        for j, t in enumerate(row):
            if t == 0:
                continue
            mask[i, j] = True
            if t == EOT:
                break
    return mask


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_adds_start_end_and_pads():
    tok = SimpleTokenizer(context_length=12)
    ids = tok(["a photo of a cat", "dog"])
    assert ids.shape == (2, 12) and ids.dtype == torch.long
    body = tok.encode("a photo of a cat")
    assert ids[0, 0] == SOT and ids[0, len(body) + 1] == EOT
    assert ids[0, 1 : len(body) + 1].tolist() == body
    assert (ids[0, len(body) + 2 :] == 0).all()
    assert ids[1, :3].tolist() == [SOT, *tok.encode("dog"), EOT][:3] and (ids[1, 3:] == 0).all()
    assert tok.decode(ids[0]) == "a photo of a cat"


def test_tokenizer_truncation_keeps_eot_and_reference_options():
    tok = SimpleTokenizer(context_length=6)
    long_text = "one two three four five six seven eight"
    ids = tok(long_text)
    assert ids.shape == (1, 6)
    assert ids[0, 0] == SOT and ids[0, -1] == EOT
    assert ids[0, 1:5].tolist() == tok.encode(long_text)[:4]
    with pytest.raises(ValueError, match="truncate_text"):
        tok.tokenize(long_text, context_length=6)
    # reference layout: 256 long, no start/end tokens
    old = tok.tokenize("dog", add_start_end=False)
    assert old.shape == (1, 256) and old[0, 0].item() == tok.encode("dog")[0] and (old[0, 1:] == 0).all()
    # the module-level default instance is built lazily and is a SimpleTokenizer
    assert isinstance(tokenizer_module.tokenizer, SimpleTokenizer)
    assert tok.vocab_size == 49408 and (tok.sot_token_id, tok.eot_token_id) == (SOT, EOT)


def test_adapter_tokenize(open_clip_adapter, x_clip_adapter):
    ids = open_clip_adapter.tokenize(TEXTS)
    assert ids.shape == (3, 77) and (ids[:, 0] == SOT).all() and ((ids == EOT).sum(-1) == 1).all()
    ids = x_clip_adapter.tokenize("dog")
    assert ids.shape == (1, 16) and ids[0, :3].tolist() == [SOT, SimpleTokenizer().encode("dog")[0], EOT]
    with pytest.raises(TypeError):
        open_clip_adapter.tokenize(3)


# ----------------------------------------------------------------------------- open_clip
def test_open_clip_text_shapes_norms_masks(open_clip_adapter):
    a = open_clip_adapter
    assert isinstance(a, BaseClipAdapter)
    assert (a.dim_latent, a.text_encodings_dim, a.image_size, a.image_channels, a.max_text_len) == (24, 32, 32, 3, 77)
    tokens = a.tokenize(TEXTS)
    out = a.embed_text(tokens)
    assert isinstance(out, EmbeddedText)
    embed, encodings = out  # two-field unpacking like the reference
    assert embed.shape == (3, 24) and encodings.shape == (3, 77, 32)
    assert embed.dtype == torch.float32 and encodings.dtype == torch.float32
    torch.testing.assert_close(embed.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    mask = expected_mask(tokens)
    assert torch.equal(out.text_mask, mask)
    assert (encodings[~mask] == 0).all()
    # pooled embedding is exactly open_clip's own encode_text
    torch.testing.assert_close(embed, a.clip.encode_text(tokens, normalize=True), atol=1e-6, rtol=0)
    # per-token states are ln_final of the text tower (checked against a forward hook)
    captured = {}
    handle = a.clip.ln_final.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    try:
        a.clip.encode_text(tokens)
    finally:
        handle.remove()
    torch.testing.assert_close(encodings, captured["x"].masked_fill(~mask[..., None], 0.0), atol=1e-6, rtol=0)


def test_open_clip_short_long_and_eot_less_tokens(open_clip_adapter):
    a = open_clip_adapter
    full = a.tokenize(TEXTS)
    short = full[:, :10]
    out_full, out_short = a.embed_text(full), a.embed_text(short)
    assert out_short.text_encodings.shape == (3, 77, 32)  # padded to the context length
    torch.testing.assert_close(out_short.text_embed, out_full.text_embed, atol=1e-6, rtol=0)
    longer = F.pad(full, (0, 50))
    assert a.embed_text(longer).text_encodings.shape == (3, 77, 32)
    # reference-tokenizer tokens (no SOT/EOT): mask is simply token != 0
    plain = SimpleTokenizer().tokenize(TEXTS, context_length=256, add_start_end=False)
    out = a.embed_text(plain)
    assert torch.equal(out.text_mask, plain[:, :77] != 0)
    with pytest.raises(TypeError):
        a.embed_text(full.float())
    with pytest.raises(ValueError):
        a.embed_text(full[0])


def test_open_clip_image(open_clip_adapter):
    a = open_clip_adapter
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    out = a.embed_image(images)
    assert isinstance(out, EmbeddedImage) and out.image_encodings is None
    assert out.image_embed.shape == (2, 24) and out.image_embed.dtype == torch.float32
    torch.testing.assert_close(out.image_embed.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    manual = F.normalize(a.clip.encode_image((images - mean) / std), dim=-1)
    torch.testing.assert_close(out.image_embed, manual, atol=1e-6, rtol=0)


def test_image_validation_and_resize(open_clip_adapter, x_clip_adapter):
    torch.manual_seed(0)
    for a in (open_clip_adapter, x_clip_adapter):
        with pytest.raises(ValueError, match="smaller"):
            a.embed_image(torch.rand(1, 3, 31, 64))
        with pytest.raises(ValueError, match="channels"):
            a.embed_image(torch.rand(1, 1, 32, 32))
        with pytest.raises(ValueError):
            a.embed_image(torch.rand(3, 32, 32))
        with pytest.raises(TypeError):
            a.embed_image(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
        big = torch.rand(2, 3, 64, 48)
        resized = a.validate_and_resize_image(big)
        assert resized.shape == (2, 3, 32, 32)
        expected = F.interpolate(big, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
        torch.testing.assert_close(resized, expected)
        torch.testing.assert_close(a.embed_image(big).image_embed, a.embed_image(expected).image_embed)
        same = torch.rand(1, 3, 32, 32)
        assert a.validate_and_resize_image(same) is same


def test_frozen_and_eval_locked(open_clip_adapter, x_clip_adapter):
    for a in (open_clip_adapter, x_clip_adapter):
        assert all(not p.requires_grad for p in a.parameters())
        parent = torch.nn.Sequential(a)
        parent.train()
        assert not a.training and not any(m.training for m in a.modules())
        with torch.enable_grad():
            tokens = a.tokenize(TEXTS)
            assert not a.embed_text(tokens).text_embed.requires_grad
            assert not a.embed_image(torch.rand(1, 3, 32, 32)).image_embed.requires_grad


def test_deterministic(open_clip_adapter, x_clip_adapter):
    torch.manual_seed(3)
    images = torch.rand(2, 3, 32, 32)
    for a in (open_clip_adapter, x_clip_adapter):
        tokens = a.tokenize(TEXTS)
        a.train()  # x-clip's patch dropout must stay off
        assert torch.equal(a.embed_text(tokens).text_embed, a.embed_text(tokens).text_embed)
        assert torch.equal(a.embed_image(images).image_embed, a.embed_image(images).image_embed)
    other = make_open_clip(seed=0)
    tokens = other.tokenize(TEXTS)
    assert torch.equal(other.embed_text(tokens).text_embed, open_clip_adapter.embed_text(tokens).text_embed)


def test_adapter_adds_only_clip_keys(open_clip_adapter):
    keys = list(open_clip_adapter.state_dict())
    assert keys and all(k.startswith("clip.") for k in keys)
    assert "clip.ln_final.weight" in keys and "clip.visual.conv1.weight" in keys


# ----------------------------------------------------------------------------- weight files
def test_local_weights_round_trip(open_clip_adapter, tmp_path):
    from safetensors.torch import save_file

    source = open_clip_adapter
    tokens = source.tokenize(TEXTS)
    images = torch.rand(2, 3, 32, 32)
    ref_text, ref_image = source.embed_text(tokens), source.embed_image(images).image_embed

    state = source.clip.state_dict()
    pt_path, st_path = tmp_path / "clip.pt", tmp_path / "clip.safetensors"
    torch.save(state, pt_path)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st_path))
    for path in (pt_path, st_path, str(pt_path)):
        torch.manual_seed(123)  # different random init, then overwritten by the file
        loaded = OpenClipAdapter("ViT-B-32", pretrained=path, model_kwargs=TINY_OPEN_CLIP)
        out = loaded.embed_text(tokens)
        assert torch.equal(out.text_embed, ref_text.text_embed)
        assert torch.equal(out.text_encodings, ref_text.text_encodings)
        assert torch.equal(loaded.embed_image(images).image_embed, ref_image)

    # without loading, a different seed gives different embeddings (the round trip is meaningful)
    assert not torch.allclose(make_open_clip(seed=123).embed_text(tokens).text_embed, ref_text.text_embed)


def test_weight_file_errors(open_clip_adapter, tmp_path):
    state = open_clip_adapter.clip.state_dict()
    bad = dict(state)
    bad.pop("ln_final.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing keys: ln_final.weight.*unexpected keys: extra.weight"):
        OpenClipAdapter("ViT-B/32", pretrained=tmp_path / "bad.pt", model_kwargs=TINY_OPEN_CLIP)
    torch.save(state, tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="shape mismatches"):  # full-size architecture, tiny weights
        OpenClipAdapter("ViT-B/32", pretrained=tmp_path / "ok.pt", model_kwargs={**TINY_OPEN_CLIP, "embed_dim": 16})
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, str(tmp_path / "scripted.pt"))
    # TorchScript archives (OpenAI's downloads) are read without running their code
    read = load_clip_state_dict(tmp_path / "scripted.pt")
    assert read.keys() == scripted.state_dict().keys()
    assert all(torch.equal(read[k], v) for k, v in scripted.state_dict().items())
    torch.save({"not": "tensors"}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="state dict"):
        load_clip_state_dict(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_clip_state_dict(tmp_path / "missing.pt")


def test_pretrained_tag_validation_without_download():
    with pytest.raises(ValueError, match="available tags"):
        OpenClipAdapter("ViT-H/14", pretrained="laion400m_e32")  # the reference README's failing example
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        OpenClipAdapter("ViT-Z/99", pretrained=None)
    with pytest.raises(ValueError, match="not an OpenAI CLIP"):
        OpenAIClipAdapter("ViT-H/14", pretrained=False)


def test_pretrained_tag_goes_through_safe_loader(open_clip_adapter, tmp_path, monkeypatch):
    """A tag is resolved by open_clip's downloader (stubbed here) and read by our safe loader."""
    from open_clip import pretrained as oc_pretrained

    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in open_clip_adapter.clip.state_dict().items()}, str(path))
    requested = []

    def fake_download(cfg, *args, **kwargs):
        requested.append(cfg)
        return str(path)

    monkeypatch.setattr(oc_pretrained, "download_pretrained", fake_download)
    torch.manual_seed(7)
    adapter = OpenClipAdapter("ViT-B/32", pretrained="laion400m_e32", model_kwargs=TINY_OPEN_CLIP)
    assert len(requested) == 1 and "laion400m_e32" in requested[0]["hf_hub"]
    # that tag was trained with QuickGELU, so the architecture uses it
    assert type(adapter.clip.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    tokens = adapter.tokenize(TEXTS)
    # weights equal, activation differs -> embeddings differ from the GELU source model
    for name, tensor in adapter.clip.state_dict().items():
        assert torch.equal(tensor, open_clip_adapter.clip.state_dict()[name])
    assert not torch.allclose(adapter.embed_text(tokens).text_embed, open_clip_adapter.embed_text(tokens).text_embed)


# ----------------------------------------------------------------------------- OpenAI
def test_openai_adapter_architecture_and_openai_layout(openai_adapter, tmp_path):
    a = openai_adapter
    assert type(a.clip.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert a.max_text_len == 77
    tokens = a.tokenize(TEXTS)
    out = a.embed_text(tokens)
    assert torch.equal(out.text_mask, expected_mask(tokens))
    torch.testing.assert_close(out.text_embed.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    # an OpenAI-format state dict (with TorchScript's extra non-parameter entries) loads back
    state = dict(a.clip.state_dict())
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, tmp_path / "openai_sd.pt")
    loaded = OpenAIClipAdapter("ViT-B-32", pretrained=tmp_path / "openai_sd.pt", model_kwargs=TINY_OPENAI)
    assert torch.equal(loaded.embed_text(tokens).text_embed, out.text_embed)
    # and open_clip's own OpenAI state-dict builder accepts our keys: same layout as OpenAI's files
    from open_clip.model import build_model_from_openai_state_dict

    rebuilt = build_model_from_openai_state_dict(dict(state)).float().eval()
    assert sorted(rebuilt.state_dict()) == sorted(a.clip.state_dict())
    rebuilt.load_state_dict(a.clip.state_dict())  # the builder rounds weights to fp16; restore fp32
    torch.testing.assert_close(
        F.normalize(rebuilt.encode_text(tokens), dim=-1), out.text_embed, atol=1e-6, rtol=0
    )


@pytest.mark.slow
def test_real_architecture_dims():
    """Full-size random ViT-B/32 and RN50: projected width vs per-token width."""
    vit = OpenClipAdapter("ViT-B/32", pretrained=None)
    assert (vit.dim_latent, vit.text_encodings_dim, vit.image_size, vit.max_text_len) == (512, 512, 224, 77)
    rn = OpenAIClipAdapter("RN50", pretrained=False)
    assert (rn.dim_latent, rn.text_encodings_dim, rn.image_size) == (1024, 512, 224)
    tokens = rn.tokenize(["a dog"])
    out = rn.embed_text(tokens)
    assert out.text_embed.shape == (1, 1024) and out.text_encodings.shape == (1, 77, 512)
    assert rn.embed_image(torch.rand(1, 3, 224, 224)).image_embed.shape == (1, 1024)


# ----------------------------------------------------------------------------- x-clip
def test_x_clip_text_and_image(x_clip_adapter):
    a = x_clip_adapter
    assert (a.dim_latent, a.text_encodings_dim, a.image_size, a.image_channels, a.max_text_len) == (32, 32, 32, 3, 16)
    tokens = a.tokenize(TEXTS)
    embed, encodings = a.embed_text(tokens)
    assert embed.shape == (3, 32) and encodings.shape == (3, 16, 32)
    torch.testing.assert_close(embed.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    assert torch.equal(a.embed_text(tokens).text_mask, tokens != 0)
    # default (reference): encoder run without a padding mask; CLS dropped, padding zeroed
    unmasked = a.clip.text_transformer(tokens)
    torch.testing.assert_close(encodings, unmasked[:, 1:].masked_fill((tokens == 0)[..., None], 0.0))
    torch.testing.assert_close(embed, F.normalize(a.clip.to_text_latent(unmasked[:, 0]), dim=-1))
    # text_mask_in_encoder=True: same encodings as x-clip's own forward(return_encodings=True)
    masked_adapter = XClipAdapter(a.clip, text_mask_in_encoder=True)
    images = torch.rand(3, 3, 32, 32)
    enc_text, enc_image = a.clip(tokens, images, return_encodings=True)
    m_embed, m_encodings = masked_adapter.embed_text(tokens)
    torch.testing.assert_close(m_encodings, enc_text[:, 1:].masked_fill((tokens == 0)[..., None], 0.0))
    torch.testing.assert_close(m_embed, F.normalize(a.clip.to_text_latent(enc_text[:, 0]), dim=-1))
    assert not torch.allclose(m_embed, embed)  # the mask matters for padded rows
    image_embed, image_encodings = a.embed_image(images)
    assert image_embed.shape == (3, 32) and image_encodings.shape == (3, 16, 32)
    torch.testing.assert_close(image_embed, F.normalize(a.clip.to_visual_latent(enc_image[:, 0]), dim=-1))
    # tokens longer than text_seq_len are truncated
    assert a.embed_text(F.pad(tokens, (0, 10))).text_encodings.shape == (3, 16, 32)


def test_x_clip_small_vocab_custom_tokenizer():
    from x_clip import CLIP

    torch.manual_seed(0)
    clip = CLIP(**{**TINY_X_CLIP, "num_text_tokens": 100})
    char_tokenizer = lambda texts: [[ord(c) % 99 + 1 for c in t] for t in texts]  # noqa: E731
    ragged = XClipAdapter(clip, tokenizer=lambda texts: torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(ids) for ids in char_tokenizer(texts)], batch_first=True))
    ids = ragged.tokenize(["ab", "a much longer caption"])
    assert ids.shape == (2, 16) and ids[0, 2:].eq(0).all() and ids[1].ne(0).all()
    assert ragged.embed_text(ids).text_embed.shape == (2, 32)
    default = XClipAdapter(clip)  # BPE ids exceed the 100-token vocabulary
    with pytest.raises(ValueError, match="vocabulary"):
        default.embed_text(default.tokenize("dog"))
    with pytest.raises(TypeError, match="overrides"):
        XClipAdapter(clip, bogus=1)
    assert XClipAdapter(clip, image_size=64).image_size == 64
    with pytest.raises(TypeError, match="x_clip.CLIP"):
        XClipAdapter(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- factory
def test_build_clip_adapter(tmp_path, x_clip_adapter):
    adapter = build_clip_adapter("openai", "ViT-B/32", pretrained=False, base_model_kwargs=TINY_OPEN_CLIP)
    assert isinstance(adapter, OpenAIClipAdapter) and adapter.dim_latent == 24
    adapter = build_clip_adapter("open_clip", "ViT-B-32", pretrained=None, base_model_kwargs=TINY_OPEN_CLIP)
    assert type(adapter) is OpenClipAdapter
    torch.save(x_clip_adapter.clip.state_dict(), tmp_path / "xclip.pt")
    adapter = build_clip_adapter("x-clip", pretrained=tmp_path / "xclip.pt", base_model_kwargs=TINY_X_CLIP)
    tokens = adapter.tokenize(TEXTS)
    assert torch.equal(adapter.embed_text(tokens).text_embed, x_clip_adapter.embed_text(tokens).text_embed)
    with pytest.raises(ValueError, match="coca_pytorch"):  # the reference's coca_pytorch arguments
        build_clip_adapter("coca", pretrained=None, base_model_kwargs={"dim": 32, "num_tokens": 100, "unimodal_depth": 1})
    with pytest.raises(ValueError, match="unknown CLIP adapter make"):
        build_clip_adapter("dalle")
    with pytest.raises(ValueError, match="model name"):
        build_clip_adapter("open_clip")
