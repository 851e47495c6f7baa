"""The cached text prefix (and last-layer pruning) of the prior gives the uncached results."""

from __future__ import annotations

import warnings

import pytest
import torch

from dalle2_pytorch.prior.diffusion_prior import DiffusionPrior
from dalle2_pytorch.prior.network import DiffusionPriorNetwork, PriorPrefixCache

DIM = 32


def make_net(**overrides) -> DiffusionPriorNetwork:
    torch.manual_seed(0)
    kwargs = dict(dim=DIM, num_timesteps=100, max_text_len=6, depth=3, dim_head=8, heads=2, normformer=True)
    kwargs.update(overrides)
    net = DiffusionPriorNetwork(**kwargs).eval()
    std = 0.5 / 128 if net.layout == "1.1.0" else 0.5  # 1.1.0 multiplies the bias by 128
    with torch.no_grad():  # a rel-pos bias that matters but does not swamp q·k
        net.causal_transformer.rel_pos_bias.relative_attention_bias.weight.normal_(0, std)
        if net.text_skip is not None:  # zero at init: make it matter
            net.text_skip.weight.normal_(0, DIM**-0.5)
    return net


def make_inputs(b: int = 4, seq: int = 5, float_time: bool = False, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(b, seq, DIM, generator=g)
    enc[0, 3:] = 0  # padding
    t = torch.rand(b, generator=g) * 99 if float_time else torch.randint(0, 100, (b,), generator=g)
    return dict(
        image_embed=torch.randn(b, DIM, generator=g),
        diffusion_timesteps=t,
        text_embed=torch.randn(b, DIM, generator=g),
        text_encodings=enc,
    )


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


CONFIGS = [
    dict(),
    dict(layout="1.1.0"),
    dict(self_cond=True, num_timesteps=None),
    dict(num_text_embeds=3, num_image_embeds=2, num_time_embeds=2),
    dict(norm_in=True, rotary_emb=False, final_proj=False),
    dict(linear_text_skip=True),
]


def _extra(net: DiffusionPriorNetwork, b: int = 4) -> dict:
    return dict(self_cond=torch.randn(b, DIM, generator=torch.Generator().manual_seed(5))) if net.self_cond else {}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("cond_scale", [1.0, 3.0])
def test_cached_forward_matches_full_sequence(config: dict, cond_scale: float) -> None:
    net = make_net(**config)
    x = make_inputs(float_time=net.continuous_embedded_time)
    extra = _extra(net)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 1.1.0: guidance has no effect
        full = net.forward_with_cond_scale(**x, **extra, cond_scale=cond_scale, prefix_cache=False)
        auto = net.forward_with_cond_scale(**x, **extra, cond_scale=cond_scale)
        cache = net.build_prefix_cache(x["text_embed"], x["text_encodings"])
        cached = net.forward_with_cond_scale(
            x["image_embed"], x["diffusion_timesteps"], **extra, cond_scale=cond_scale, prefix_cache=cache
        )
        # same timestep on every row: the null pass runs on one row
        t0 = x["diffusion_timesteps"][:1].expand(4).clone()
        full0 = net.forward_with_cond_scale(
            **{**x, "diffusion_timesteps": t0}, **extra, cond_scale=cond_scale, prefix_cache=False
        )
        cached0 = net.forward_with_cond_scale(x["image_embed"], t0, **extra, cond_scale=cond_scale, prefix_cache=cache)
    assert isinstance(cache, PriorPrefixCache)
    assert (cache.null is None) == (net.layout == "1.1.0")
    close(cached, full)
    close(auto, full)
    close(cached0, full0)
    assert not torch.allclose(full, full0)  # the timesteps matter


@pytest.mark.parametrize("config", CONFIGS[:3] + [dict(linear_text_skip=True)])
def test_cached_forward_with_dropout_masks(config: dict) -> None:
    net = make_net(**config)
    x = make_inputs(b=8, float_time=net.continuous_embedded_time)
    extra = _extra(net, 8)
    kw = dict(text_cond_drop_prob=0.5, image_cond_drop_prob=0.4)
    with torch.no_grad():
        cache = net.build_prefix_cache(x["text_embed"], x["text_encodings"])
        full = net(**x, **extra, **kw, generator=torch.Generator().manual_seed(2))
        cached = net(x["image_embed"], x["diffusion_timesteps"], **extra, **kw, prefix_cache=cache,
                     generator=torch.Generator().manual_seed(2))
    close(cached, full)


def test_last_layer_pruning_matches_all_tokens() -> None:
    net = make_net()
    x = make_inputs()
    tr = net.causal_transformer
    tokens = torch.randn(2, net.num_tokens, DIM)
    with torch.no_grad():
        close(tr(tokens, last_only=True), tr(tokens)[:, -1])


def test_cache_rejects_wrong_batch_and_missing_text() -> None:
    net = make_net()
    x = make_inputs()
    cache = net.build_prefix_cache(x["text_embed"][:2], x["text_encodings"][:2])
    with pytest.raises(ValueError, match="prefix_cache"):
        net(x["image_embed"], x["diffusion_timesteps"], prefix_cache=cache)
    with pytest.raises(ValueError, match="text_embed"):
        net(x["image_embed"], x["diffusion_timesteps"])
    with pytest.raises(TypeError, match="prefix_cache"):
        net(x["image_embed"], x["diffusion_timesteps"], prefix_cache="yes")


def test_cache_keeps_gradients_in_training() -> None:
    net = make_net()
    x = make_inputs()
    cache = net.build_prefix_cache(x["text_embed"], x["text_encodings"])
    net(x["image_embed"], x["diffusion_timesteps"], prefix_cache=cache).sum().backward()
    null_grad = net.null_text_embeds.grad  # no text was dropped: the null prefix does not contribute
    assert null_grad is None or not null_grad.any()
    assert net.null_text_encodings.grad.abs().sum() > 0  # padding positions of the cached prefix
    assert net.causal_transformer.layers[0][0].to_kv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "net_config, prior_config, cond_scale",
    [
        (dict(), dict(cond_drop_prob=0.2), 3.0),
        (dict(self_cond=True, num_text_embeds=2), dict(cond_drop_prob=0.2, predict_x_start=False), 2.0),
        (dict(layout="1.1.0"), dict(), 1.0),
        (dict(linear_text_skip=True), dict(cond_drop_prob=0.2), 2.0),
    ],
)
def test_prior_sample_cached_equals_uncached(net_config: dict, prior_config: dict, cond_scale: float) -> None:
    net = make_net(num_timesteps=None, **net_config)
    prior = DiffusionPrior(net, image_embed_dim=DIM, timesteps=20, sample_timesteps=6, **prior_config)
    x = make_inputs(b=3)

    def draw() -> torch.Tensor:
        return prior.sample(
            text_embed=x["text_embed"], text_encodings=x["text_encodings"], num_samples_per_batch=2,
            cond_scale=cond_scale, generator=torch.Generator().manual_seed(11),
        )

    calls = []
    original = prior.net.build_prefix_cache

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    prior.net.build_prefix_cache = spy
    cached = draw()
    assert len(calls) == 1  # built once per sampling loop
    prior._denoiser = lambda cond, cond_scale=1.0, use_prefix_cache=True, negative_cond=None: DiffusionPrior._denoiser(
        prior, cond, cond_scale, False, negative_cond
    )
    uncached = draw()
    assert len(calls) == 1
    close(cached, uncached)
    assert cached.shape == (3, DIM)
