"""Negative prompts: the guidance formula with the null branch replaced by a negative conditioning."""

from __future__ import annotations

import warnings

import pytest
import torch

from dalle2_pytorch.diffusion import GuidedModel, guided_forward
from dalle2_pytorch.prior.diffusion_prior import DiffusionPrior
from dalle2_pytorch.prior.network import DiffusionPriorNetwork
from tests.conftest import make_open_clip_adapter

DIM = 32


class _Affine(torch.nn.Module):
    """out = x * 2 + c: a network whose conditional output is known in closed form."""

    def forward(self, x, t, *, c):
        return x * 2 + c

    def forward_cond_and_null(self, x, t, *, c):
        return self(x, t, c=c), x * 2


def test_guided_forward_with_negative_conditioning_is_the_one_formula():
    net, x, t = _Affine(), torch.ones(3, 4), torch.zeros(3)
    c, n = torch.full((3, 4), 5.0), torch.full((3, 4), -1.0)
    cond, neg = x * 2 + c, x * 2 + n
    out = guided_forward(net, x, t, cond_scale=3.0, c=c, negative={"c": n})
    torch.testing.assert_close(out, neg + (cond - neg) * 3.0)
    # no negative: the null branch; scale 1: the conditional output, negative or not
    torch.testing.assert_close(guided_forward(net, x, t, cond_scale=3.0, c=c), x * 2 + 3.0 * c)
    torch.testing.assert_close(guided_forward(net, x, t, cond_scale=1.0, c=c, negative={"c": n}), cond)
    model = GuidedModel(net, 3.0, {"c": c}, {"c": n})
    torch.testing.assert_close(model(x, t), out)


def _net(**overrides) -> DiffusionPriorNetwork:
    torch.manual_seed(0)
    kwargs = dict(dim=DIM, num_timesteps=100, max_text_len=6, depth=2, dim_head=8, heads=2)
    return DiffusionPriorNetwork(**{**kwargs, **overrides}).eval()


@pytest.mark.parametrize("overrides", [dict(), dict(layout="1.1.0"), dict(self_cond=True, linear_text_skip=True)])
def test_network_batched_negative_branch_matches_two_forward_calls(overrides):
    net = _net(**overrides)
    if net.text_skip is not None:
        torch.nn.init.normal_(net.text_skip.weight, std=DIM**-0.5)
    g = torch.Generator().manual_seed(1)
    b = 3
    x, t = torch.randn(b, DIM, generator=g), torch.randint(0, 100, (b,), generator=g)
    te, enc = torch.randn(b, DIM, generator=g), torch.randn(b, 5, DIM, generator=g)
    nte, nenc = torch.randn(b, DIM, generator=g), torch.randn(b, 5, DIM, generator=g)
    extra = {"self_cond": torch.randn(b, DIM, generator=g)} if net.self_cond else {}
    cache, neg_cache = net.build_prefix_cache(te, enc), net.build_prefix_cache(nte, nenc)
    cond, neg = net.forward_cond_and_negative(x, t, prefix_cache=cache, negative={"prefix_cache": neg_cache}, **extra)
    torch.testing.assert_close(cond, net(x, t, text_embed=te, text_encodings=enc, **extra), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(neg, net(x, t, text_embed=nte, text_encodings=nenc, **extra), atol=1e-5, rtol=1e-5)
    # the uncached arguments go through two forward calls with the same result
    cond2, neg2 = net.forward_cond_and_negative(
        x, t, text_embed=te, text_encodings=enc, negative={"text_embed": nte, "text_encodings": nenc}, **extra
    )
    torch.testing.assert_close(cond2, cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(neg2, neg, atol=1e-5, rtol=1e-5)


def _prior(layout: str = "1.15.6") -> DiffusionPrior:
    clip = make_open_clip_adapter()
    torch.manual_seed(0)
    net = DiffusionPriorNetwork(dim=DIM, depth=1, dim_head=8, heads=2, max_text_len=clip.max_text_len, layout=layout)
    with torch.no_grad():  # 1.1.0 multiplies the rel-pos bias by 128: keep it from hiding the text tokens
        std = 0.5 / 128 if layout == "1.1.0" else 0.5
        net.causal_transformer.rel_pos_bias.relative_attention_bias.weight.normal_(0, std)
    return DiffusionPrior(net, clip=clip, timesteps=50, sample_timesteps=5, cond_drop_prob=0.2).eval()


def _sample(prior, texts, seed=3, **kwargs):
    return prior.sample(texts, num_samples_per_batch=2, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_prior_sample_with_negative_prompt():
    prior = _prior()
    texts = ["a red circle", "a blue square"]
    plain = _sample(prior, texts, cond_scale=4.0)
    a = _sample(prior, texts, cond_scale=4.0, negative_prompt="a green star")
    b = _sample(prior, texts, cond_scale=4.0, negative_prompt=["a green star", "a green star"])
    assert a.shape == (2, DIM) and torch.isfinite(a).all()
    assert torch.equal(a, b)  # one string applies to every caption
    assert not torch.allclose(a, plain)  # the negative branch replaced the null branch
    # embeddings instead of text give the same samples
    te, enc = prior.embed_text(["a green star"])
    c = _sample(prior, texts, cond_scale=4.0, negative_text_embed=te, negative_text_encodings=enc)
    torch.testing.assert_close(c, a)
    # the formula: a negative prompt equal to the prompt cancels guidance (neg = cond)
    same = _sample(prior, texts, cond_scale=4.0, negative_prompt=texts)
    torch.testing.assert_close(same, _sample(prior, texts, cond_scale=1.0), atol=1e-5, rtol=1e-5)


def test_negative_prompt_errors():
    prior = _prior()
    with pytest.raises(ValueError, match="no effect at cond_scale=1"):
        _sample(prior, ["a red circle"], negative_prompt="a green star")
    with pytest.raises(ValueError, match="2 negative prompts given for 3 captions"):
        _sample(prior, ["a", "b", "c"], cond_scale=2.0, negative_prompt=["x", "y"])
    with pytest.raises(ValueError, match="non-empty"):
        _sample(prior, ["a"], cond_scale=2.0, negative_prompt="  ")
    with pytest.raises(ValueError, match="not both"):
        _sample(prior, ["a"], cond_scale=2.0, negative_prompt="x", negative_text_embed=torch.zeros(1, DIM))


def test_negative_prompt_works_for_a_prior_without_unconditional_branch():
    """LAION's 1.1.0-era prior ignores cond_scale (no null branch) but a negative prompt is a
    conditional branch, so it steers the samples, without the no-effect warning."""
    prior = _prior(layout="1.1.0")
    texts = ["a red circle"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = _sample(prior, texts, cond_scale=4.0, negative_prompt="a green star")
    with pytest.warns(UserWarning, match="no effect"):
        plain = _sample(prior, texts, cond_scale=4.0)
    assert not torch.allclose(a, plain)
