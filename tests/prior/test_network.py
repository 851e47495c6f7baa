"""DiffusionPriorNetwork and its transformer on small configurations no fixture covers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dalle2_pytorch.layers.embeddings import MLP, SinusoidalPosEmb
from dalle2_pytorch.layers.rotary import RotaryEmbedding
from dalle2_pytorch.prior import Attention, CausalTransformer, DiffusionPriorNetwork, RelPosBias

DIM = 32


def make_net(**overrides) -> DiffusionPriorNetwork:
    torch.manual_seed(0)
    kwargs = dict(dim=DIM, num_timesteps=100, max_text_len=6, depth=2, dim_head=8, heads=2, normformer=True)
    kwargs.update(overrides)
    net = DiffusionPriorNetwork(**kwargs).eval()
    with torch.no_grad():  # make every parameter matter (fresh gains are all ones)
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
        if net.layout == "1.1.0":  # that layout applies the bias 128x: keep the softmax unsaturated
            net.causal_transformer.rel_pos_bias.relative_attention_bias.weight.div_(128.0)
    return net


def make_inputs(b: int = 3, seq: int = 5, float_time: bool = False, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(b, seq, DIM, generator=g)
    enc[0, 2:] = 0.0  # padding, as the CLIP adapters mark it
    t = torch.rand(b, generator=g) * 100 if float_time else torch.randint(0, 100, (b,), generator=g)
    return dict(
        image_embed=torch.randn(b, DIM, generator=g),
        diffusion_timesteps=t,
        text_embed=torch.randn(b, DIM, generator=g),
        text_encodings=enc,
    )


def call(net, inputs, method: str = "forward", **kw) -> torch.Tensor:
    inputs = dict(inputs)
    x, t = inputs.pop("image_embed"), inputs.pop("diffusion_timesteps")
    with torch.no_grad():
        return getattr(net, method)(x, t, **inputs, **kw)


# ----------------------------------------------------------------------------- primitives


def naive_attention(attn: Attention, x: torch.Tensor, bias: torch.Tensor, layout: str) -> torch.Tensor:
    """Step-by-step spec implementation (reference-inventory §2.1) without SDPA, in float64."""
    x = x.double()
    b, n, _ = x.shape
    h, dh = attn.heads, attn.dim_head
    xn = F.layer_norm(x, (x.shape[-1],), weight=attn.norm.g.double(), eps=1e-5)
    q = (xn @ attn.to_q.weight.double().T).view(b, n, h, dh).transpose(1, 2)
    k, v = (xn @ attn.to_kv.weight.double().T).chunk(2, dim=-1)
    if attn.rotary_emb is not None:  # complex-number form of interleaved RoPE on the first d_rot features
        d_rot = attn.rotary_emb.dim
        theta = 10000.0 ** (-torch.arange(0, d_rot, 2, dtype=torch.float64) / d_rot)
        rot = torch.polar(torch.ones(n, d_rot // 2, dtype=torch.float64), torch.arange(n).double()[:, None] * theta)

        def rope(t):
            z = torch.view_as_complex(t[..., :d_rot].reshape(*t.shape[:-1], d_rot // 2, 2).contiguous())
            return torch.cat((torch.view_as_real(z * rot).flatten(-2), t[..., d_rot:]), dim=-1)

        q, k = rope(q), rope(k)
    null_k, null_v = attn.null_kv.double()
    k = torch.cat((null_k.expand(b, 1, dh), k), dim=1)
    v = torch.cat((null_v.expand(b, 1, dh), v), dim=1)
    if layout == "1.15.6":
        sim = 16.0 * torch.einsum("bhid,bjd->bhij", F.normalize(q, dim=-1), F.normalize(k, dim=-1))
        sim = sim + bias.double()
    else:  # pre-divide by 128, add the bias, subtract the max, multiply by 128
        sim = torch.einsum("bhid,bjd->bhij", q * dh**-0.5 / 128.0, k) + bias.double()
    causal = torch.ones(n, n + 1, dtype=torch.bool).triu(2)
    sim = sim.masked_fill(causal, -torch.finfo(sim.dtype).max)
    if layout == "1.1.0":
        sim = (sim - sim.amax(dim=-1, keepdim=True)) * 128.0
    out = torch.einsum("bhij,bjd->bhid", sim.softmax(dim=-1), v)
    out = out.transpose(1, 2).reshape(b, n, h * dh) @ attn.to_out[0].weight.double().T
    return F.layer_norm(out, (out.shape[-1],), weight=attn.to_out[1].g.double(), eps=1e-5)


@pytest.mark.parametrize("layout", ["1.15.6", "1.1.0"])
@pytest.mark.parametrize("dim_head", [64, 16])  # 64: rotary on the first 32 features only
def test_sdpa_attention_matches_step_by_step_spec(layout: str, dim_head: int) -> None:
    torch.manual_seed(0)
    tr = CausalTransformer(dim=DIM, depth=1, dim_head=dim_head, heads=3, layout=layout)
    with torch.no_grad():
        tr.rel_pos_bias.relative_attention_bias.weight.mul_(0.02 if layout == "1.1.0" else 1.0)
        for p in tr.parameters():
            if p.requires_grad and p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
    attn = tr.layers[0][0]
    x = torch.randn(2, 9, DIM)
    bias = tr.rel_pos_bias(9, 10)
    expected = naive_attention(attn, x, bias, layout)
    with torch.no_grad():
        actual = attn(x, tr.attention_bias(9, x.device, x.dtype))
    torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-5)
    assert attn.rotary_emb.dim == min(32, dim_head)


def test_rel_pos_bias_buckets_and_off_by_one() -> None:
    rpb = RelPosBias(heads=1)
    with torch.no_grad():
        rpb.relative_attention_bias.weight.copy_(torch.arange(32.0)[:, None])  # value = bucket index
    distance = torch.tensor([0, 1, 15, 16, 17, 31, 32, 64, 127, 128, 500])
    expected = [0, 1, 15, 16, 16, 21, 21, 26, 31, 31, 31]
    for d, e in zip(distance.tolist(), expected):
        if d >= 16:  # log buckets: 16 + floor(log(d/16) / log(8) * 16), capped at 31
            assert e == min(16 + int(math.log(d / 16) / math.log(8) * 16), 31)
    assert rpb.bucket(-distance).tolist() == expected
    assert rpb.bucket(torch.tensor([1, 5])).tolist() == [0, 0]  # future keys clamp to 0
    bias = rpb(5, 6)[0]  # (i, j) with key 0 = the null key
    assert bias[:, 0].tolist() == [0, 1, 2, 3, 4]  # null key sits at distance = query position
    assert [bias[m, m + 1].item() for m in range(5)] == [0] * 5  # the token itself
    assert [bias[m, m].item() for m in range(1, 5)] == [0] * 4  # its predecessor: same bucket (quirk)
    assert bias[4, 1].item() == 3


def test_rotary_freqs_state_and_sharing() -> None:
    net = make_net(dim_head=64, heads=1)
    sd = net.state_dict()
    freqs = [sd[f"causal_transformer.layers.{i}.0.rotary_emb.freqs"] for i in range(2)]
    assert freqs[0].shape == (16,) and torch.equal(freqs[0], freqs[1])
    torch.testing.assert_close(freqs[0], 10000.0 ** (-torch.arange(0, 32, 2).float() / 32))
    rot = net.causal_transformer.layers[0][0].rotary_emb
    assert rot is net.causal_transformer.layers[1][0].rotary_emb and not rot.freqs.requires_grad
    assert all(p is not rot.freqs for p in net.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)


def test_time_embedding_layers() -> None:
    t = torch.tensor([0, 3, 999])
    emb = SinusoidalPosEmb(8)(t)
    freqs = torch.exp(-math.log(10000) / 3 * torch.arange(4.0))
    torch.testing.assert_close(emb, torch.cat(((t[:, None] * freqs).sin(), (t[:, None] * freqs).cos()), dim=-1))
    mlp = MLP(8, 5)
    assert [k for k in mlp.state_dict()] == [
        "net.0.0.weight", "net.0.0.bias", "net.1.0.weight", "net.1.0.bias", "net.2.weight", "net.2.bias"
    ]
    assert mlp.net[0][0].out_features == 10 and mlp(emb.half()).dtype == torch.float32


# ----------------------------------------------------------------------------- network structure


def test_state_dict_keys_follow_reference_layout() -> None:
    keys = set(make_net(num_timesteps=None, num_text_embeds=2, num_image_embeds=3, norm_in=True).state_dict())
    assert {
        "learned_query", "null_text_encodings", "null_text_embeds", "null_image_embed",
        "to_time_embeds.0.1.net.0.0.weight", "to_time_embeds.0.1.net.1.0.bias", "to_time_embeds.0.1.net.2.weight",
        "to_text_embeds.0.weight", "to_image_embeds.0.bias", "causal_transformer.init_norm.g",
        "causal_transformer.layers.1.1.3.g", "causal_transformer.norm.g", "causal_transformer.project_out.weight",
    } <= keys
    net = make_net()
    assert net.null_text_embeds.shape == (1, 1, DIM) and net.null_image_embed.shape == (1, DIM)
    assert "to_time_embeds.0.weight" in net.state_dict()
    old = make_net(layout="1.1.0")
    assert old.null_text_embed.shape == (1, 6, DIM) and not hasattr(old, "null_text_encodings")
    assert old.layout == "1.1.0" and not old.has_unconditional_branch and net.has_unconditional_branch


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(TypeError, match="bogus"):
        DiffusionPriorNetwork(DIM, depth=1, bogus=3)
    with pytest.raises(TypeError):
        DiffusionPriorNetwork(DIM)  # depth is required
    with pytest.raises(ValueError, match="layout"):
        DiffusionPriorNetwork(DIM, depth=1, layout="0.15")
    with pytest.raises(ValueError, match="self_cond"):
        DiffusionPriorNetwork(DIM, depth=1, self_cond=True, layout="1.1.0")
    with pytest.raises(ValueError, match="num_timesteps"):
        DiffusionPriorNetwork(DIM, num_timesteps=0, depth=1)
    net = make_net()
    inputs = make_inputs()
    with pytest.raises(ValueError, match=r"image_embed must have shape \(batch, 32\)"):
        call(net, dict(inputs, image_embed=torch.randn(3, 16)))
    with pytest.raises(ValueError, match="text_embed"):
        call(net, dict(inputs, text_embed=torch.randn(3, 16)))
    with pytest.raises(ValueError, match="text_encodings"):
        call(net, dict(inputs, text_encodings=torch.randn(3, 4, 16)))
    with pytest.raises(ValueError, match="diffusion_timesteps"):
        call(net, dict(inputs, diffusion_timesteps=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(TypeError, match="integer"):
        call(net, dict(inputs, diffusion_timesteps=torch.zeros(3)))
    with pytest.raises(ValueError, match="self_cond=False"):
        call(net, inputs, self_cond=torch.zeros(3, DIM))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        call(net, inputs, text_cond_drop_prob=1.5)
    with pytest.raises(ValueError, match="not both"):
        call(net, inputs, cond_drop_prob=0.5, text_cond_drop_prob=0.5)
    with pytest.raises(TypeError, match="unexpected keyword"):
        call(net, inputs, mask=None)


# ----------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize(
    "config",
    [
        dict(num_timesteps=None),
        dict(num_time_embeds=2, num_image_embeds=3, num_text_embeds=2),
        dict(self_cond=True),
        dict(norm_in=True, norm_out=False, final_proj=False),
        dict(rotary_emb=False, normformer=False),
        dict(dim_head=64, heads=1),
        dict(layout="1.1.0", num_timesteps=None),
    ],
    ids=["continuous", "multi-embeds", "self-cond", "norm-in", "no-rotary", "dh64", "1.1.0-cont"],
)
def test_small_configs_run_and_use_their_inputs(config: dict) -> None:
    net = make_net(**config)
    inputs = make_inputs(float_time=config.get("num_timesteps", 1) is None)
    out = call(net, inputs)
    assert out.shape == (3, DIM) and torch.isfinite(out).all()
    # every input reaches the output
    for name in ("image_embed", "text_embed", "text_encodings"):
        changed = dict(inputs, **{name: inputs[name] + 0.5 * torch.sign(inputs[name])})
        assert not torch.allclose(call(net, changed), out, atol=1e-4), name
    later = dict(inputs, diffusion_timesteps=inputs["diffusion_timesteps"] + 7)
    assert not torch.allclose(call(net, later), out, atol=1e-4)
    if config.get("self_cond"):
        sc = call(net, inputs, self_cond=torch.randn(3, DIM))
        assert not torch.allclose(sc, out, atol=1e-4)
        torch.testing.assert_close(call(net, inputs, self_cond=torch.zeros(3, DIM)), out)  # None = zeros
        assert net.num_tokens == 6 + 1 + 1 + 1 + 1 + 1


def test_no_text_encodings_means_all_null_positions() -> None:
    for layout in ("1.15.6", "1.1.0"):
        net = make_net(layout=layout)
        inputs = make_inputs()
        none = call(net, dict(inputs, text_encodings=None))
        zeros = call(net, dict(inputs, text_encodings=torch.zeros(3, 2, DIM)))
        torch.testing.assert_close(none, zeros)
        assert not torch.allclose(none, call(net, inputs), atol=1e-4)


def test_text_encodings_truncated_and_padded_to_max_text_len() -> None:
    net = make_net()  # max_text_len 6
    inputs = make_inputs(seq=4)
    padded = torch.cat((inputs["text_encodings"], torch.zeros(3, 9, DIM)), dim=1)  # 13 long, zeros after 4
    torch.testing.assert_close(call(net, dict(inputs, text_encodings=padded)), call(net, inputs))
    long = torch.randn(3, 10, DIM)
    tail_changed = long.clone()
    tail_changed[:, 6:] += 1.0
    torch.testing.assert_close(
        call(net, dict(inputs, text_encodings=long)), call(net, dict(inputs, text_encodings=tail_changed))
    )
    in_window = long.clone()
    in_window[:, 5] += 1.0
    assert not torch.allclose(call(net, dict(inputs, text_encodings=long)), call(net, dict(inputs, text_encodings=in_window)))


def test_causal_transformer_is_causal() -> None:
    torch.manual_seed(0)
    tr = CausalTransformer(dim=DIM, depth=2, dim_head=8, heads=2).eval()
    x = torch.randn(2, 7, DIM)
    y = x.clone()
    y[:, 4] += 1.0
    with torch.no_grad():
        a, b = tr(x), tr(y)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_null_branch_replaces_text_and_noisy_image() -> None:
    net = make_net()
    inputs = make_inputs()
    null = call(net, inputs, text_cond_drop_prob=1.0, image_cond_drop_prob=1.0)
    # the null branch ignores the conditioning and x_t entirely, but still sees time
    other = make_inputs(seed=5)
    other["diffusion_timesteps"] = inputs["diffusion_timesteps"]
    torch.testing.assert_close(call(net, other, text_cond_drop_prob=1.0, image_cond_drop_prob=1.0), null)
    assert not torch.allclose(null, call(net, inputs), atol=1e-4)
    # 1.1.0-style alias
    torch.testing.assert_close(call(net, inputs, cond_drop_prob=1.0), null)
    text_only = call(net, inputs, text_cond_drop_prob=1.0)
    assert not torch.allclose(text_only, null, atol=1e-4) and not torch.allclose(text_only, call(net, inputs))


def test_dropout_masks_are_per_sample_and_reproducible_with_generator() -> None:
    net = make_net()
    inputs = make_inputs(b=16)
    kept = call(net, inputs)
    dropped = call(net, inputs, text_cond_drop_prob=1.0, image_cond_drop_prob=1.0)

    def draw(seed):
        return call(net, inputs, text_cond_drop_prob=0.5, image_cond_drop_prob=0.5,
                    generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(3), draw(3), draw(4)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    g = torch.Generator().manual_seed(3)
    text_keep = torch.rand(16, generator=g) < 0.5
    image_keep = torch.rand(16, generator=g) < 0.5
    both = text_keep == image_keep
    rows_kept, rows_dropped = both & text_keep, both & ~text_keep
    assert rows_kept.any() and rows_dropped.any()
    torch.testing.assert_close(a[rows_kept], kept[rows_kept])
    torch.testing.assert_close(a[rows_dropped], dropped[rows_dropped])


@pytest.mark.parametrize("config", [dict(), dict(self_cond=True, num_timesteps=None, num_image_embeds=2)])
def test_batched_guidance_equals_two_passes(config: dict) -> None:
    net = make_net(**config)
    inputs = make_inputs(float_time="num_timesteps" in config)
    extra = dict(self_cond=torch.randn(3, DIM)) if config.get("self_cond") else {}
    cond = call(net, inputs, **extra)
    null = call(net, inputs, **extra, text_cond_drop_prob=1.0, image_cond_drop_prob=1.0)
    guided = call(net, inputs, "forward_with_cond_scale", cond_scale=3.5, **extra)
    torch.testing.assert_close(guided, null + (cond - null) * 3.5, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(call(net, inputs, "forward_with_cond_scale", cond_scale=1.0, **extra), cond)
    # dropout probabilities of the conditional pass use the same generator draws as forward()
    kw = dict(text_cond_drop_prob=0.5, image_cond_drop_prob=0.3)
    cond_r = call(net, inputs, **extra, **kw, generator=torch.Generator().manual_seed(9))
    guided_r = call(net, inputs, "forward_with_cond_scale", cond_scale=2.0, **extra, **kw,
                    generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(guided_r, null + (cond_r - null) * 2.0, rtol=1e-5, atol=1e-5)


def test_layout_1_1_0_has_no_unconditional_branch() -> None:
    net = make_net(layout="1.1.0")
    inputs = make_inputs()
    out = call(net, inputs)
    torch.testing.assert_close(call(net, inputs, cond_drop_prob=1.0), out, rtol=0, atol=0)
    torch.testing.assert_close(call(net, inputs, text_cond_drop_prob=0.7, image_cond_drop_prob=0.2), out, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="no effect for|has no effect"):
        guided = call(net, inputs, "forward_with_cond_scale", cond_scale=3.0)
    torch.testing.assert_close(guided, out, rtol=0, atol=0)


def test_training_mode_dropout_and_backward() -> None:
    net = make_net(attn_dropout=0.3, ff_dropout=0.3)
    inputs = make_inputs()
    net.train()
    torch.manual_seed(0)
    x = inputs["image_embed"].clone().requires_grad_()
    out1 = net(x, inputs["diffusion_timesteps"], text_embed=inputs["text_embed"], text_encodings=inputs["text_encodings"])
    out2 = net(x, inputs["diffusion_timesteps"], text_embed=inputs["text_embed"], text_encodings=inputs["text_encodings"])
    assert not torch.allclose(out1, out2)
    out1.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert net.causal_transformer.layers[0][0].null_kv.grad is not None
    assert net.causal_transformer.layers[0][0].rotary_emb.freqs.grad is None
    net.eval()
    torch.testing.assert_close(call(net, inputs), call(net, inputs), rtol=0, atol=0)


def test_low_precision_follows_input_dtype() -> None:
    net = make_net()
    inputs = make_inputs()
    ref = call(net, inputs)
    net_bf16 = make_net().to(torch.bfloat16)
    low = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in inputs.items()}
    out = call(net_bf16, low)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_linear_text_skip_adds_a_map_of_the_text_embedding_to_conditioned_rows_only() -> None:
    torch.manual_seed(0)
    kwargs = dict(dim=16, num_timesteps=10, max_text_len=3, depth=1, dim_head=8, heads=2)
    plain = DiffusionPriorNetwork(**kwargs).eval()
    torch.manual_seed(0)
    skip = DiffusionPriorNetwork(**kwargs, linear_text_skip=True).eval()
    assert set(skip.state_dict()) - set(plain.state_dict()) == {"text_skip.weight"}
    x, t, text = torch.randn(4, 16), torch.randint(0, 10, (4,)), torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(skip(x, t, text_embed=text), plain(x, t, text_embed=text))  # zero at init
        skip.text_skip.weight.normal_()
        expected = plain(x, t, text_embed=text) + text @ skip.text_skip.weight.T
        torch.testing.assert_close(skip(x, t, text_embed=text), expected)
        # dropped text: the null branch is the plain network's (no text, so no skip)
        dropped = skip(x, t, text_embed=text, text_cond_drop_prob=1.0)
        torch.testing.assert_close(dropped, plain(x, t, text_embed=text, text_cond_drop_prob=1.0))
        guided = skip.forward_with_cond_scale(x, t, text_embed=text, cond_scale=3.0)
        null = plain(x, t, text_embed=text, cond_drop_prob=1.0)
        torch.testing.assert_close(guided, null + (expected - null) * 3.0, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="linear_text_skip=True needs layout '1.15.6'"):
        DiffusionPriorNetwork(**kwargs, linear_text_skip=True, layout="1.1.0")
