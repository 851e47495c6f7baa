"""CoCa adapter (open_clip CoCa, random weights) and OpenAI CLIP files given as the model name."""

import io
import pickle
import zipfile

import pytest
import torch

from dalle2_pytorch.clip_adapters import CoCaAdapter, OpenAIClipAdapter, build_clip_adapter
from dalle2_pytorch.clip_adapters.torchscript_weights import read_torchscript_tensors

TINY_COCA = dict(
    embed_dim=24,
    vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16, attentional_pool=True,
                    attn_pooler_heads=2, attn_pooler_queries=8, output_tokens=True),
    text_cfg=dict(context_length=76, vocab_size=49408, width=32, heads=2, layers=1, embed_cls=True, output_tokens=True),
    multimodal_cfg=dict(context_length=76, vocab_size=49408, width=32, heads=2, layers=1, attn_pooler_heads=2),
)
TINY_OPENAI = dict(
    embed_dim=24,
    vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=8, head_width=64),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
)
TEXTS = ["a red circle", "a small blue square on a white background"]


@pytest.fixture(scope="module")
def coca() -> CoCaAdapter:
    torch.manual_seed(0)
    return CoCaAdapter("coca_ViT-B-32", pretrained=None, model_kwargs=TINY_COCA)


def test_coca_adapter_embeddings(coca):
    assert (coca.dim_latent, coca.text_encodings_dim, coca.image_size, coca.max_text_len) == (24, 32, 32, 76)
    tokens = coca.tokenize(TEXTS)
    assert tokens.shape == (2, 76)
    text = coca.embed_text(tokens)
    assert text.text_embed.shape == (2, 24) and text.text_encodings.shape == (2, 76, 32)
    torch.testing.assert_close(text.text_embed.norm(dim=-1), torch.ones(2))
    assert torch.equal(text.text_mask, tokens != 0)  # zero exactly at padding
    assert not torch.allclose(text.text_embed[0], text.text_embed[1])
    # the embedding is CoCa's own contrastive text embedding
    torch.testing.assert_close(text.text_embed, coca.clip.encode_text(tokens, normalize=True))
    image = coca.embed_image(torch.rand(2, 3, 48, 48))  # resized to 32
    # attentional pool: 8 queries, the first is the pooled embedding, the other 7 the tokens CoCa decodes from
    assert image.image_embed.shape == (2, 24) and image.image_encodings.shape == (2, 7, 24)
    torch.testing.assert_close(image.image_embed.norm(dim=-1), torch.ones(2))
    assert not any(p.requires_grad for p in coca.parameters())
    coca.train()
    assert not coca.training and all(k.startswith("clip.") for k in coca.state_dict())


def test_coca_through_the_factory_config_and_a_decoder(coca):
    from dalle2_pytorch.config.clip import AdapterConfig
    from dalle2_pytorch.decoder import Decoder, Unet

    torch.manual_seed(0)
    built = AdapterConfig(make="coca", model="coca_ViT-B-32", pretrained=False, base_model_kwargs=TINY_COCA).create()
    assert isinstance(built, CoCaAdapter)
    for (key, a), b in zip(built.clip.state_dict().items(), coca.clip.state_dict().values()):
        assert torch.equal(a, b), key  # same seed, same random weights: the config reached open_clip
    unet = Unet(dim=8, image_embed_dim=24, cond_dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
    decoder = Decoder(unet, clip=coca, timesteps=10, learned_variance=False)
    loss = decoder(torch.rand(2, 3, 32, 32))  # image embeddings from the CoCa adapter
    assert torch.isfinite(loss)


def test_coca_errors():
    with pytest.raises(ValueError, match="coca_pytorch"):
        CoCaAdapter("coca_ViT-B-32", model_kwargs={"dim": 32, "unimodal_depth": 1, "num_tokens": 10})
    with pytest.raises(ValueError, match="not an open_clip CoCa"):
        CoCaAdapter("ViT-B-32")
    with pytest.raises(TypeError, match="open_clip CoCa"):
        CoCaAdapter(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="available tags"):
        build_clip_adapter("coca", "coca_ViT-B-32", pretrained="no-such-tag", base_model_kwargs=TINY_COCA)


@pytest.fixture(scope="module")
def openai_source() -> OpenAIClipAdapter:
    torch.manual_seed(1)
    return OpenAIClipAdapter("ViT-B/32", pretrained=False, model_kwargs=TINY_OPENAI)


def test_openai_adapter_takes_a_torchscript_file_as_the_model_name(openai_source, tmp_path):
    """OpenAI's downloads are TorchScript archives; the reference's `OpenAIClipAdapter(path)` loaded them."""
    traced = torch.jit.trace(openai_source.clip, (torch.rand(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)),
                             check_trace=False, strict=False)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(traced, str(path))
    adapter = OpenAIClipAdapter(str(path))
    assert (adapter.image_size, adapter.max_text_len, adapter.dim_latent) == (32, 77, 24)
    tokens = adapter.tokenize(TEXTS)
    assert torch.equal(adapter.embed_text(tokens).text_embed, openai_source.embed_text(tokens).text_embed)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(adapter.embed_image(images).image_embed, openai_source.embed_image(images).image_embed)
    # a state-dict file works the same way (architecture read from the weights)
    torch.save(openai_source.clip.state_dict(), tmp_path / "sd.pt")
    from_sd = OpenAIClipAdapter(tmp_path / "sd.pt")
    assert torch.equal(from_sd.embed_text(tokens).text_embed, openai_source.embed_text(tokens).text_embed)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="OpenAI CLIP weights"):
        OpenAIClipAdapter(tmp_path / "junk.pt")


def _archive_with(data_pkl: bytes, path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/constants.pkl", pickle.dumps(()))
        zf.writestr("archive/code/__torch__/m.py", "")


def test_torchscript_reader_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    _archive_with(pickle.dumps(Evil(), protocol=2), tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"refers to __builtin__\.print, which is not allowed"):
        read_torchscript_tensors(tmp_path / "evil.pt")
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    (tmp_path / "plain.pt").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        read_torchscript_tensors(tmp_path / "plain.pt")
