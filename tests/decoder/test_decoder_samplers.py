"""`sampler=` / `steps=` through DiffusionPrior, Decoder (per stage), DALLE2 and the configs."""

import pytest
import torch
import torch.nn.functional as F

from dalle2_pytorch import DALLE2, Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet
from dalle2_pytorch.config import DecoderConfig, DiffusionPriorConfig
from dalle2_pytorch.diffusion import parse_sampler, sampler_names
from tests.conftest import make_x_clip_adapter
from tests.decoder.test_decoder import EMB, cond, two_stage

ALL = sampler_names()


def _count_calls(decoder: Decoder) -> list[int]:
    """Network evaluations per Unet (a guided evaluation runs its two branches as one batch)."""
    calls = [0] * decoder.num_unets
    for i, unet in enumerate(decoder.unets):
        def run(*args, _run=unet._run, i=i):
            calls[i] += 1
            return _run(*args)
        unet._run = run
    return calls


@pytest.mark.parametrize("name", [n for n in ALL if n != "ddpm"])
def test_every_registry_sampler_runs_the_decoder_cascade(name):
    decoder = two_stage()
    calls = _count_calls(decoder)
    images = decoder.sample(**cond(), sampler=name, steps=4, cond_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    expected = 2 * 4 - 1 if name == "heun" else 4
    assert calls == [expected, expected]
    again = decoder.sample(**cond(), sampler=name, steps=4, cond_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)


def test_one_sampler_and_step_count_per_stage():
    decoder = two_stage(sample_timesteps=(5, 3))
    calls = _count_calls(decoder)
    decoder.sample(**cond(), sampler=("dpmpp_2m:trailing", "ddim"), generator=torch.Generator().manual_seed(0))
    assert calls == [5, 3]
    calls[:] = [0, 0]
    decoder.sample(**cond(), sampler="unipc", steps=(2, 6), generator=torch.Generator().manual_seed(0))
    assert calls == [2, 6]


def test_default_sampler_is_the_reference_rule_unless_configured():
    ddpm = two_stage()  # sample_timesteps None: all T=20 steps, DDPM
    calls = _count_calls(ddpm)
    ddpm.sample(**cond(), generator=torch.Generator().manual_seed(0))
    assert calls == [20, 20]
    chosen = two_stage(sampler="euler", sample_timesteps=3)
    calls = _count_calls(chosen)
    chosen.sample(**cond(), generator=torch.Generator().manual_seed(0))
    assert calls == [3, 3]


def test_decoder_sampler_errors_are_clear():
    decoder = two_stage()
    with pytest.raises(ValueError, match="unknown sampler 'nope'; choose one of: ddpm, ddim"):
        decoder.sample(**cond(), sampler="nope", steps=3)
    with pytest.raises(ValueError, match="must be a positive integer, got 0"):
        decoder.sample(**cond(), sampler="ddim", steps=0)
    with pytest.raises(ValueError, match="cannot sample with 21 steps from a 20-step diffusion"):
        decoder.sample(**cond(), sampler="ddim", steps=21)
    with pytest.raises(ValueError, match="unknown timestep spacing 'sideways'"):
        decoder.sample(**cond(), sampler="ddim:sideways", steps=3)
    with pytest.raises(ValueError, match="cond_scale must be a finite number >= 0"):
        decoder.sample(**cond(), cond_scale=-5.0, steps=3, sampler="ddim")
    with pytest.raises(ValueError, match="sampler has 3 values but the decoder has 2 unets"):
        decoder.sample(**cond(), sampler=("ddim", "ddim", "ddim"), steps=3)
    with pytest.raises(ValueError, match="inpaint"):
        image = torch.rand(2, 3, 16, 16)
        decoder.sample(**cond(), sampler="dpmpp_2m", steps=3, inpaint_image=image,
                       inpaint_mask=torch.ones(2, 16, 16, dtype=torch.bool))


def test_parse_sampler_specs():
    assert parse_sampler("ddim") == ("ddim", {})
    assert parse_sampler("dpmpp_2m:trailing") == ("dpmpp_2m", {"spacing": "trailing"})
    assert parse_sampler("euler:karras") == ("euler", {"karras": True})
    with pytest.raises(ValueError, match="unknown sampler"):
        parse_sampler("dpm:trailing")


def _prior(**kwargs) -> DiffusionPrior:
    net = DiffusionPriorNetwork(dim=EMB, depth=1, dim_head=8, heads=2, max_text_len=8, num_timesteps=20)
    return DiffusionPrior(net, image_embed_dim=EMB, timesteps=20, cond_drop_prob=0.2, **kwargs)


@pytest.mark.parametrize("name", [n for n in ALL if n != "ddpm"] + ["dpmpp_2m:trailing", "unipc:leading"])
def test_every_registry_sampler_runs_the_prior(name):
    prior = _prior()
    g = torch.Generator().manual_seed(3)
    text_embed = F.normalize(torch.randn(3, EMB, generator=g), dim=-1)
    text_encodings = torch.randn(3, 8, EMB, generator=g)
    a = prior.sample(text_embed=text_embed, text_encodings=text_encodings, sampler=name, steps=4, cond_scale=2.0,
                     generator=torch.Generator().manual_seed(0))
    b = prior.sample(text_embed=text_embed, text_encodings=text_encodings, sampler=name, timesteps=4, cond_scale=2.0,
                     generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, EMB) and torch.isfinite(a).all() and torch.equal(a, b)


def test_prior_step_names_and_errors():
    prior = _prior(sample_timesteps=5)
    te = F.normalize(torch.randn(2, EMB), dim=-1)
    enc = torch.randn(2, 8, EMB)
    with pytest.raises(ValueError, match="give either steps or its alias timesteps"):
        prior.sample(text_embed=te, text_encodings=enc, steps=3, timesteps=4)
    with pytest.raises(ValueError, match="must be a positive integer, got 0"):
        prior.sample(text_embed=te, text_encodings=enc, steps=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        prior.sample(text_embed=te, text_encodings=enc, sampler="bogus")


def test_dalle2_passes_samplers_and_steps_to_both_models():
    clip = make_x_clip_adapter()
    emb = clip.dim_latent
    net = DiffusionPriorNetwork(dim=emb, depth=1, dim_head=8, heads=2, max_text_len=clip.max_text_len, num_timesteps=20)
    prior = DiffusionPrior(net, clip=clip, timesteps=20, cond_drop_prob=0.2)
    unet = Unet(dim=8, image_embed_dim=emb, cond_dim=16, dim_mults=(1, 2), text_embed_dim=clip.text_encodings_dim,
                cond_on_text_encodings=True, attn_dim_head=8, attn_heads=2)
    decoder = Decoder(unet, clip=clip, image_size=8, timesteps=20)
    prior_calls, decoder_calls = [0], _count_calls(decoder)
    prior.net.register_forward_hook(lambda *_: prior_calls.__setitem__(0, prior_calls[0] + 1))
    chain = DALLE2(prior=prior, decoder=decoder, prior_num_samples=1, decoder_sampler="dpmpp_2m")
    images = chain(["a red circle", "a blue square"], prior_steps=3, decoder_steps=4, prior_sampler="ddim",
                   generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8)
    assert decoder_calls == [4]
    assert prior_calls[0] == 3  # prior guidance 1: one conditional forward per step
    with pytest.raises(ValueError, match="prompts must be non-empty strings"):
        chain(["   "])


def test_configs_validate_sampler_names():
    unet = dict(dim=8, dim_mults=[1, 2], image_embed_dim=EMB)
    cfg = DecoderConfig(unets=[unet], image_sizes=[8], sampler="dpmpp_2m:trailing")
    assert cfg.create().stages[0].sampler == "dpmpp_2m:trailing"
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        DecoderConfig(unets=[unet], image_sizes=[8], sampler="dpm")
    net = dict(dim=EMB, depth=1, max_text_len=8)
    assert DiffusionPriorConfig(net=net, image_embed_dim=EMB, sampler="unipc").create(build_clip=False).sampler == "unipc"
    with pytest.raises(ValueError, match="unknown sampler"):
        DiffusionPriorConfig(net=net, image_embed_dim=EMB, sampler="ddpm2")
