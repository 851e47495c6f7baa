import pytest
import torch
import torch.nn.functional as F

from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork
from tests.conftest import make_open_clip_adapter, make_x_clip_adapter

DIM = 32


def make_prior(clip=None, **kwargs):
    net = DiffusionPriorNetwork(dim=DIM, depth=1, dim_head=8, heads=2, max_text_len=kwargs.pop("max_text_len", 16),
                                num_timesteps=kwargs.pop("num_timesteps", None), self_cond=kwargs.pop("self_cond", False))
    defaults = dict(timesteps=50, sample_timesteps=5, cond_drop_prob=0.2)
    if clip is None:
        defaults["image_embed_dim"] = DIM
    return DiffusionPrior(net, clip=clip, **{**defaults, **kwargs})


@pytest.mark.parametrize("make_clip", [make_x_clip_adapter, make_open_clip_adapter], ids=["x-clip", "open_clip"])
def test_sample_end_to_end_with_clip_adapters(make_clip):
    clip = make_clip()
    prior = make_prior(clip=clip, max_text_len=clip.max_text_len)
    texts = ["a red circle", "a blue square", "a green triangle"]
    images = torch.rand(3, 3, 32, 32)
    loss = prior(text=texts, image=images)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in prior.clip.parameters()), "CLIP must stay frozen"
    for cond_scale in (1.0, 3.0):
        a = prior.sample(texts, num_samples_per_batch=2, cond_scale=cond_scale, generator=torch.Generator().manual_seed(7))
        b = prior.sample(texts, num_samples_per_batch=2, cond_scale=cond_scale, generator=torch.Generator().manual_seed(7))
        assert a.shape == (3, DIM) and torch.isfinite(a).all()
        assert torch.equal(a, b)
    c = prior.sample(texts, cond_scale=3.0, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)
    # token ids work as well as strings
    tokens = clip.tokenize(texts)
    d = prior.sample(tokens, cond_scale=3.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, d)


def test_forward_does_not_modify_the_callers_embedding():
    prior = make_prior()
    image_embed = F.normalize(torch.randn(4, DIM), dim=-1)
    before = image_embed.clone()
    prior(text_embed=torch.randn(4, DIM), image_embed=image_embed, text_encodings=torch.randn(4, 5, DIM))
    assert torch.equal(image_embed, before)  # the reference scaled it in place


# eps targets keep a large irreducible error at high noise levels, so they improve less
@pytest.mark.parametrize("objective,factor", [(dict(), 0.7), (dict(predict_x_start=False), 0.9), (dict(predict_v=True), 0.85)])
def test_training_reduces_the_loss(objective, factor):
    torch.manual_seed(0)
    prior = make_prior(**objective, self_cond=True, cond_drop_prob=0.0)
    g = torch.Generator().manual_seed(0)
    text_embed = F.normalize(torch.randn(16, DIM, generator=g), dim=-1)
    image_embed = F.normalize(text_embed @ torch.randn(DIM, DIM, generator=g), dim=-1)
    encodings = text_embed[:, None].repeat(1, 3, 1)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)

    def loss_at(seed):
        return prior(text_embed=text_embed, image_embed=image_embed, text_encodings=encodings,
                     generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        start = sum(loss_at(s).item() for s in range(8))
    for step in range(120):
        opt.zero_grad()
        loss_at(100 + step).backward()
        opt.step()
    with torch.no_grad():
        end = sum(loss_at(s).item() for s in range(8))
    assert end < factor * start, (start, end)


def test_ddim_step_count_and_ddpm_when_timesteps_equal_T():
    prior = make_prior()
    calls = []
    original = prior.net.forward
    prior.net.forward = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    kwargs = dict(text_embed=torch.randn(2, DIM), text_encodings=torch.randn(2, 4, DIM), num_samples_per_batch=1)
    prior.sample(**kwargs, timesteps=7)
    assert len(calls) == 7
    calls.clear()
    prior.sample(**kwargs)
    assert len(calls) == 5  # sample_timesteps
    calls.clear()
    prior.sample(**kwargs, timesteps=50)
    assert len(calls) == 50


def test_reranking_keeps_the_most_similar_candidate():
    prior = make_prior()
    text_embed = F.normalize(torch.randn(3, DIM), dim=-1)
    g = lambda: torch.Generator().manual_seed(3)
    kwargs = dict(text_embed=text_embed, text_encodings=torch.randn(3, 4, DIM))
    best = prior.sample(**kwargs, num_samples_per_batch=4, generator=g())
    cond = {"text_embed": text_embed.repeat_interleave(4, 0), "text_encodings": kwargs["text_encodings"].repeat_interleave(4, 0)}
    all_candidates = prior.p_sample_loop((12, DIM), cond, generator=g()).reshape(3, 4, DIM)
    sims = F.cosine_similarity(all_candidates, text_embed[:, None], dim=-1)
    torch.testing.assert_close(best, all_candidates[torch.arange(3), sims.argmax(1)])


def test_l2norm_options_project_onto_the_sphere():
    prior = make_prior(sampling_final_clamp_l2norm=True, sampling_clamp_l2norm=True, init_image_embed_l2norm=True)
    out = prior.sample(text_embed=torch.randn(2, DIM), text_encodings=torch.randn(2, 4, DIM), num_samples_per_batch=1)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)


def test_sample_batch_size_works():
    prior = make_prior()
    out = prior.sample_batch_size(3, {"text_embed": torch.randn(3, DIM), "text_encodings": torch.randn(3, 4, DIM)})
    assert out.shape == (3, DIM)


def test_bad_inputs_have_clear_errors():
    prior = make_prior()
    with pytest.raises(ValueError, match=r"image_embed must have shape \(batch, 32\)"):
        prior(text_embed=torch.randn(2, DIM), image_embed=torch.randn(2, 16), text_encodings=torch.randn(2, 3, DIM))
    with pytest.raises(ValueError, match=r"text_embed must have shape \(batch, 32\)"):
        prior(text_embed=torch.randn(2, 8), image_embed=torch.randn(2, DIM), text_encodings=torch.randn(2, 3, DIM))
    with pytest.raises(ValueError, match="condition_on_text_encodings"):
        prior(text_embed=torch.randn(2, DIM), image_embed=torch.randn(2, DIM))
    with pytest.raises(ValueError, match="exactly one of `text` or `text_embed`"):
        prior(image_embed=torch.randn(2, DIM))
    with pytest.raises(ValueError, match="needs a CLIP adapter"):
        prior(text=["a cat"], image_embed=torch.randn(1, DIM))
    with pytest.raises(ValueError, match="net.dim"):
        DiffusionPrior(DiffusionPriorNetwork(dim=16, depth=1), image_embed_dim=DIM)
    with pytest.raises(ValueError, match="image_embed_dim must be given"):
        DiffusionPrior(DiffusionPriorNetwork(dim=16, depth=1))
    no_dropout = make_prior(cond_drop_prob=0.0)
    with pytest.raises(ValueError, match="conditioning dropout"):
        no_dropout.sample(text_embed=torch.randn(1, DIM), text_encodings=torch.randn(1, 3, DIM), cond_scale=2.0)
