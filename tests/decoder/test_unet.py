"""Decoder Unet: reference fixtures (both key generations), option matrix, guidance, errors.

Fixtures (tests/fixtures/compat/decoder_*) are small decoders saved by the reference package with
its own unet outputs; see tests/fixtures/compat/*/case.json for the exact calls.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle2_pytorch.compat.decoder_keys import (
    convert_decoder_state_dict,
    detect_decoder_layout,
    load_unet_state_dict,
    split_unet_state_dicts,
)
from dalle2_pytorch.decoder import Unet
from dalle2_pytorch.decoder import unet as unet_module
from dalle2_pytorch.decoder.attention import LinearAttention, SelfAttention
from dalle2_pytorch.serialization import safe_torch_load

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compat"
CASES = {"decoder_laion_1.1.0": "1.1.0", "decoder_upsampler_1.1.0": "1.1.0", "decoder_1.15.6": "1.15.6"}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def decoder_unet_kwargs(decoder_cfg: dict, index: int) -> dict:
    """Unet kwargs of `decoder.unets[index]` recast the way the reference Decoder recasts them."""
    kwargs = dict(decoder_cfg["unets"][index])
    kwargs.update(cond_on_image_embeds=index == 0, lowres_cond=index > 0)
    learned = decoder_cfg.get("learned_variance", True)
    learned = list(learned) if isinstance(learned, (list, tuple)) else [learned] + [False] * 10
    if index < len(learned) and learned[index]:
        kwargs["channels_out"] = 2 * kwargs.get("channels", 3)
    return kwargs


@functools.lru_cache(maxsize=None)
def loaded_case(case: str) -> tuple[list[Unet], dict[str, torch.Tensor]]:
    root = FIXTURES / case
    cfg = json.loads((root / "config.json").read_text())["decoder"]
    state = safe_torch_load(root / "checkpoint.pth")["model"]
    layout = detect_decoder_layout(state)
    assert layout == CASES[case]
    unet_state, _, other = convert_decoder_state_dict(state, layout)
    assert other == {}
    unets = []
    for i, sd in split_unet_state_dicts(unet_state).items():
        unet = Unet(**decoder_unet_kwargs(cfg, i), layout=layout).eval()
        load_unet_state_dict(unet, sd, context=f"{case} unet {i + 1}")
        unets.append(unet)
    assert len(unets) == len(cfg["unets"])
    io = {k: v.clone() for k, v in load_file(root / "io.safetensors").items()}
    return unets, io


def run_unet1(unet: Unet, io: dict, branch: str) -> torch.Tensor:
    args = (io["in.unet1.x_t"], io["in.timesteps"])
    kw = dict(image_embed=io["in.image_embed"], text_encodings=io["in.text_encodings"])
    with torch.no_grad():
        if branch == "cond":
            return unet(*args, **kw, image_cond_drop_prob=0.0, text_cond_drop_prob=0.0)
        if branch == "null":
            return unet(*args, **kw, image_cond_drop_prob=1.0, text_cond_drop_prob=1.0)
        return unet.forward_with_cond_scale(*args, **kw, cond_scale=1.7)


@pytest.mark.parametrize("branch", ["cond", "null", "guided"])
@pytest.mark.parametrize("case", list(CASES))
def test_fixture_unet1_outputs(case: str, branch: str) -> None:
    unets, io = loaded_case(case)
    assert_matches(run_unet1(unets[0], io, branch), io[f"out.unet1.{branch}"])


def test_fixture_upsampler_unet2_output() -> None:
    unets, io = loaded_case("decoder_upsampler_1.1.0")
    with torch.no_grad():
        out = unets[1](
            io["in.unet2.x_t"], io["in.timesteps"], image_embed=io["in.image_embed"], text_encodings=None,
            lowres_cond_img=io["in.unet2.lowres_cond_img"],
        )
    assert out.shape == (2, 3, 32, 32)
    assert_matches(out, io["out.unet2.cond"])


def test_fixture_is_sensitive_to_1_1_0_attention_maths() -> None:
    """The 1.1.0 fixture fails with 1.15.6 attention maths: the layout switch really matters."""
    unets, io = loaded_case("decoder_laion_1.1.0")
    wrong = copy.deepcopy(unets[0])
    for module in wrong.modules():
        if isinstance(module, SelfAttention):
            module.scale = module.dim_head**-1.0
        if isinstance(module, LinearAttention):
            module.layout = "1.15.6"
    with pytest.raises(AssertionError):
        assert_matches(run_unet1(wrong, io, "cond"), io["out.unet1.cond"])


# ---------------------------------------------------------------------------- tiny configs

BASE = dict(
    dim=8, dim_mults=(1, 2), cond_dim=8, image_embed_dim=6, text_embed_dim=5, cond_on_image_embeds=True,
    cond_on_text_encodings=True, attn_heads=2, attn_dim_head=4, num_resnet_blocks=1, max_text_len=6,
)

OPTION_MATRIX = {
    "plain": {},
    "memory_efficient_sparse": dict(memory_efficient=True, sparse_attn=True, self_attn=(False, True)),
    "self_attn_cosine": dict(self_attn=True, cosine_sim_self_attn=True, cosine_sim_cross_attn=True),
    "cross_embed_down_nearest_up": dict(cross_embed_downsample=True, pixel_shuffle_upsample=False),
    "combine_fmaps_scaled_skips": dict(combine_upsample_fmaps=True, scale_skip_connection=True),
    "combine_fmaps_memory_efficient": dict(combine_upsample_fmaps=True, memory_efficient=True),
    "self_cond_lowres_noise": dict(self_cond=True, lowres_cond=True, lowres_noise_cond=True),
    "weight_std_tuples": dict(resnet_weight_standardization=True, resnet_groups=(4, 8), num_resnet_blocks=(1, 2)),
    "plain_init_conv": dict(init_cross_embed=False, init_conv_kernel_size=3, final_conv_kernel_size=3,
                            add_image_embeds_to_time=False),
    "layout_1.1.0": dict(layout="1.1.0", sparse_attn=True, self_attn=(False, True)),
    "layout_1.1.0_memory_efficient": dict(layout="1.1.0", memory_efficient=True, self_attn=True),
    "layout_1.1.0_cross_embed": dict(layout="1.1.0", memory_efficient=True, cross_embed_downsample=True),
    "dim_mults_not_1_init_dim": dict(dim_mults=(2, 3), init_dim=16),
    "dim_mults_not_1_memory_efficient": dict(dim_mults=(2, 3), init_dim=16, memory_efficient=True),
    "unconditioned_three_stages": dict(cond_on_image_embeds=False, cond_on_text_encodings=False,
                                       dim_mults=(1, 2, 2), self_attn=(False, True, False), sparse_attn=True),
    "image_embed_dim_equals_cond_dim": dict(image_embed_dim=8),
    "checkpointing": dict(checkpoint_during_training=True, self_attn=True, memory_efficient=True),
}


def make_inputs(unet: Unet, b: int = 2, size: int = 8, seed: int = 0, text_len: int = 4) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, unet.channels, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    kw: dict = dict(image_embed=torch.randn(b, unet.image_embed_dim or 6, generator=g))
    if unet.cond_on_text_encodings:
        text = torch.randn(b, text_len, unet.text_embed_dim, generator=g)
        text[0, text_len // 2:] = 0.0  # padding of the first row
        kw["text_encodings"] = text
    if unet.lowres_cond:
        kw["lowres_cond_img"] = torch.randn(b, unet.channels, size, size, generator=g)
    if unet.lowres_noise_cond:
        kw["lowres_noise_level"] = torch.randint(0, 1000, (b,), generator=g)
    if unet.self_cond:
        kw["self_cond"] = torch.randn(b, unet.channels, size, size, generator=g)
    return (x, t), kw


def build(seed: int = 0, **overrides) -> Unet:
    torch.manual_seed(seed)
    unet = Unet(**{**BASE, **overrides})
    torch.nn.init.normal_(unet.to_out.weight, std=0.1)  # zero-initialised: gradients would vanish
    return unet


@pytest.mark.parametrize("name", list(OPTION_MATRIX))
def test_option_matrix_forward_backward(name: str) -> None:
    unet = build(**OPTION_MATRIX[name]).train()
    size = max(8, 2 * unet.downsample_factor)
    args, kw = make_inputs(unet, b=4, size=size)
    out = unet(*args, **kw, image_cond_drop_prob=0.5, text_cond_drop_prob=0.5, generator=torch.Generator().manual_seed(3))
    assert out.shape == (4, unet.channels_out, size, size)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in unet.named_parameters():
        if pname.startswith("null_"):  # used only for dropped rows (null_image_hiddens: not at all here)
            assert p.grad is None or torch.isfinite(p.grad).all(), pname
            continue
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


def test_dim_mults_not_one_fixes_reference_crash_channel_counts() -> None:
    unet = Unet(**{**BASE, "dim_mults": (2, 3), "init_dim": 16})
    assert unet.final_resnet_block.block1.project.in_channels == 16 + 16  # x (dim·m1) + r (init_dim)
    assert unet.final_resnet_block.block2.project.out_channels == 8


def test_checkpointing_matches_plain_and_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = build(**{**OPTION_MATRIX["checkpointing"], "checkpoint_during_training": False}).train()
    ckpt = build(**OPTION_MATRIX["checkpointing"]).train()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    real = unet_module.checkpoint
    monkeypatch.setattr(unet_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    args, kw = make_inputs(plain, size=8)
    outs = []
    for unet in (plain, ckpt):
        out = unet(*args, **kw)
        out.square().mean().backward()
        outs.append(out)
    assert len(calls) > 0
    torch.testing.assert_close(outs[0], outs[1])
    for (n, p1), (_, p2) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, msg=n)
    calls.clear()
    ckpt(*args, **kw, disable_checkpoint=True)
    ckpt.eval()(*args, **kw)
    assert calls == []


@pytest.mark.parametrize("overrides", [{}, dict(memory_efficient=True, self_cond=True, lowres_cond=True)])
def test_batched_guidance_equals_two_passes(overrides: dict) -> None:
    unet = build(**overrides).eval()
    args, kw = make_inputs(unet)
    with torch.no_grad():
        cond = unet(*args, **kw)
        null = unet(*args, **kw, image_cond_drop_prob=1.0, text_cond_drop_prob=1.0)
        guided = unet.forward_with_cond_scale(*args, **kw, cond_scale=3.0)
        one = unet.forward_with_cond_scale(*args, **kw, cond_scale=1.0)
    assert (cond - null).abs().max() > 1e-3  # the branches really differ
    torch.testing.assert_close(guided, null + (cond - null) * 3.0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one, cond)


def test_generator_makes_dropout_reproducible() -> None:
    unet = build().eval()
    args, kw = make_inputs(unet, b=8)
    drop = dict(image_cond_drop_prob=0.5, text_cond_drop_prob=0.5)
    with torch.no_grad():
        a = unet(*args, **kw, **drop, generator=torch.Generator().manual_seed(7))
        b = unet(*args, **kw, **drop, generator=torch.Generator().manual_seed(7))
        c = unet(*args, **kw, **drop, generator=torch.Generator().manual_seed(8))
        keep = unet(*args, **kw)
        null = unet(*args, **kw, image_cond_drop_prob=1.0, text_cond_drop_prob=1.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    # every row is one of the four (image, text) keep/drop combinations; both extremes occur for seed 7
    assert any(torch.allclose(a[i], keep[i], atol=1e-6) for i in range(8))
    assert not all(torch.allclose(a[i], keep[i], atol=1e-6) for i in range(8))
    assert not torch.allclose(a, null)


def test_text_padding_and_truncation() -> None:
    unet = build().eval()
    args, kw = make_inputs(unet, text_len=4)
    text = kw.pop("text_encodings")
    with torch.no_grad():
        base = unet(*args, **kw, text_encodings=text)
        padded = unet(*args, **kw, text_encodings=torch.cat((text, torch.zeros(2, 2, 5)), dim=1))
        long = torch.cat((text, torch.randn(2, 6, 5)), dim=1)  # 10 tokens > max_text_len 6
        truncated = unet(*args, **kw, text_encodings=long)
        first6 = unet(*args, **kw, text_encodings=long[:, :6])
        no_text = unet(*args, **kw, text_encodings=None)
    torch.testing.assert_close(base, padded)
    torch.testing.assert_close(truncated, first6)
    assert not torch.allclose(base, no_text)


def test_aliases_ignored_args_and_dtype() -> None:
    unet = build(**OPTION_MATRIX["self_cond_lowres_noise"]).eval()
    args, kw = make_inputs(unet)
    level = kw.pop("lowres_noise_level")
    with torch.no_grad():
        a = unet(*args, **kw, lowres_noise_level=level)
        b = unet(*args, **kw, lowres_noise_times=level, blur_sigma=0.6, blur_kernel_size=3)
        c = unet(*args, **kw, lowres_noise_level=level + 100)
        d = unet.double()(*(args[0].double(), args[1]), **{k: v.double() if v.is_floating_point() else v
                                                              for k, v in kw.items()}, lowres_noise_level=level)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert d.dtype == torch.float64 and torch.isfinite(d).all()  # (norm eps is 1e-3 outside float32)


def test_self_cond_defaults_to_zeros() -> None:
    unet = build(self_cond=True).eval()
    args, kw = make_inputs(unet)
    kw.pop("self_cond")
    with torch.no_grad():
        torch.testing.assert_close(unet(*args, **kw), unet(*args, **kw, self_cond=torch.zeros_like(args[0])))


def test_cast_model_parameters() -> None:
    unet = build()
    assert unet.cast_model_parameters(lowres_cond=False, channels_out=3) is unet
    recast = unet.cast_model_parameters(lowres_cond=True, cond_on_image_embeds=False, channels_out=6)
    assert recast is not unet and recast.lowres_cond and recast.channels_out == 6
    assert recast.config["dim_mults"] == (1, 2) and recast.init_conv.convs[0].in_channels == 6
    with pytest.raises(TypeError, match="dim"):
        unet.cast_model_parameters(dim=16)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a, k: ((a[0][:, :2], a[1]), k), "channels"),
        (lambda a, k: (a, {**k, "image_embed": torch.randn(2, 7)}), "image_embed"),
        (lambda a, k: (a, {**k, "image_embed": None}), "image_embed is required"),
        (lambda a, k: (a, {**k, "text_encodings": torch.randn(2, 3, 4)}), "text_encodings"),
        (lambda a, k: ((torch.randn(2, 3, 5, 5), a[1]), k), "divisible by 2"),
        (lambda a, k: ((a[0], a[1][:1].repeat(3)), k), "time"),
        (lambda a, k: (a, {**k, "lowres_cond_img": torch.randn(2, 3, 8, 8)}), "lowres_cond=False"),
        (lambda a, k: (a, {**k, "self_cond": torch.randn(2, 3, 8, 8)}), "self_cond=False"),
        (lambda a, k: (a, {**k, "image_cond_drop_prob": 1.5}), r"\[0, 1\]"),
    ],
)
def test_bad_forward_inputs_raise_clear_errors(change, message: str) -> None:
    unet = build().eval()
    args, kw = change(*make_inputs(unet))
    with pytest.raises(ValueError, match=message):
        unet(*args, **kw)


def test_missing_conditioning_inputs() -> None:
    unet = build(lowres_cond=True, lowres_noise_cond=True).eval()
    args, kw = make_inputs(unet)
    with pytest.raises(ValueError, match="lowres_cond_img is required"):
        unet(*args, **{k: v for k, v in kw.items() if k != "lowres_cond_img"})
    with pytest.raises(ValueError, match="lowres_noise_level is required"):
        unet(*args, **{k: v for k, v in kw.items() if k != "lowres_noise_level"})
    with pytest.raises(TypeError, match="alias"):
        unet(*args, **kw, lowres_noise_times=kw["lowres_noise_level"])


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(bar=8, foo=1), TypeError, "bar, foo"),  # sparse_attn_window: a legacy key (warning)
        (dict(dim=12), ValueError, "divisible by resnet_groups"),
        (dict(resnet_groups=(8, 5)), ValueError, "stage 1"),
        (dict(image_embed_dim=None), ValueError, "image_embed_dim is required"),
        (dict(text_embed_dim=None), ValueError, "text_embed_dim is required"),
        (dict(layout="0.15.4"), ValueError, "unknown layout"),
        (dict(dim_mults=()), ValueError, "dim_mults"),
        (dict(self_attn=(True, False, True)), ValueError, "expected 2 values"),
    ],
)
def test_bad_constructor_arguments(overrides: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        Unet(**{**BASE, **overrides})


# ---------------------------------------------------------------------------- attention maths


def naive_attention(q, k, v, scale):
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


@pytest.mark.parametrize("layout, cosine", [("1.15.6", False), ("1.1.0", False), ("1.15.6", True)])
def test_self_attention_matches_explicit_maths(layout: str, cosine: bool) -> None:
    torch.manual_seed(0)
    attn = SelfAttention(12, dim_head=4, heads=3, cosine_sim=cosine, layout=layout)
    x = torch.randn(2, 5, 12)
    h = attn.norm(x)
    q = attn.to_q(h).view(2, 5, 3, 4).transpose(1, 2)
    k, v = attn.to_kv(h).chunk(2, dim=-1)
    k = torch.cat((attn.null_kv[0].expand(2, 1, 4), k), dim=1)[:, None]
    v = torch.cat((attn.null_kv[1].expand(2, 1, 4), v), dim=1)[:, None]
    if cosine:
        q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    scale = 16.0 if cosine else (4**-1.0 if layout == "1.15.6" else 4**-0.5)
    expected = attn.to_out(naive_attention(q, k, v, scale).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x), expected)


@pytest.mark.parametrize("layout", ["1.15.6", "1.1.0"])
def test_linear_attention_matches_explicit_maths(layout: str) -> None:
    torch.manual_seed(0)
    attn = LinearAttention(6, dim_head=4, heads=2, layout=layout)
    x = torch.randn(2, 6, 3, 5)
    q, k, v = attn.to_qkv(attn.norm(x)).chunk(3, dim=1)
    split = lambda t: t.reshape(2, 2, 4, 15).permute(0, 1, 3, 2)  # noqa: E731  (b, h, n, d)
    q, k, v = split(q).softmax(-1) * 0.5, split(k).softmax(-2), split(v)
    if layout == "1.15.6":
        v = torch.nn.functional.normalize(v, dim=-1) / 15**0.5
        k = k / 15**0.5
    out = q @ (k.transpose(-1, -2) @ v)  # (b, h, n, d)
    out = out.permute(0, 1, 3, 2).reshape(2, 8, 3, 5)
    torch.testing.assert_close(attn(x), attn.to_out(torch.nn.functional.gelu(out)))


def test_weight_standardization_is_invariant_to_per_channel_affine_weights() -> None:
    unet = build(resnet_weight_standardization=True).eval()
    args, kw = make_inputs(unet)
    with torch.no_grad():
        conv = unet.downs[1][1].block1.project
        conv.weight.normal_()
        before = unet(*args, **kw)
        conv.weight.mul_(3.0).add_(0.5)
        torch.testing.assert_close(unet(*args, **kw), before, rtol=1e-4, atol=1e-4)
        plain = build(resnet_weight_standardization=False).eval()
        plain.downs[1][1].block1.project.weight.mul_(3.0)
        assert not torch.allclose(plain(*args, **kw), build().eval()(*args, **kw))
