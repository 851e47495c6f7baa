import pytest
import torch
import torch.nn.functional as F

from dalle2_pytorch import DALLE2, Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet
from tests.conftest import make_x_clip_adapter

EMB = 32


def base_unet(**kwargs):
    return Unet(dim=8, image_embed_dim=EMB, cond_dim=16, dim_mults=(1, 2), text_embed_dim=EMB,
                cond_on_text_encodings=True, cond_on_image_embeds=True, channels_out=6, attn_dim_head=8,
                attn_heads=2, **kwargs)


def upsampler_unet():
    return Unet(dim=8, dim_mults=(1, 2), lowres_cond=True, attn_dim_head=8, attn_heads=2)


def two_stage(**kwargs):
    return Decoder((base_unet(), upsampler_unet()), image_sizes=(8, 16), timesteps=20, **kwargs)


def cond(b=2):
    g = torch.Generator().manual_seed(1)
    return dict(image_embed=F.normalize(torch.randn(b, EMB, generator=g), dim=-1), text_encodings=torch.randn(b, 5, EMB, generator=g))


def test_cascade_returns_last_stage_size_and_is_reproducible():
    decoder = two_stage()
    a = decoder.sample(**cond(), cond_scale=2.0, generator=torch.Generator().manual_seed(0))
    b = decoder.sample(**cond(), cond_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 16, 16)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    first = decoder.sample(**cond(), stop_at_unet_number=1, generator=torch.Generator().manual_seed(0))
    assert first.shape == (2, 3, 8, 8)
    second = decoder.sample(image=first, start_at_unet_number=2, generator=torch.Generator().manual_seed(5))
    assert second.shape == (2, 3, 16, 16)


def test_training_losses_for_each_stage_and_objective():
    for kwargs in (dict(), dict(predict_x_start=True), dict(predict_v=(False, True)), dict(p2_loss_weight_gamma=1.0)):
        decoder = two_stage(**kwargs)
        image = torch.rand(2, 3, 20, 20)
        for n in (1, 2):
            loss = decoder(image, **cond(), unet_number=n, generator=torch.Generator().manual_seed(n))
            assert loss.ndim == 0 and torch.isfinite(loss)
            loss.backward()
    assert decoder.stages[0].learned_variance and not decoder.stages[1].learned_variance
    assert [s.beta_schedule for s in decoder.stages] == ["cosine", "linear"]


def test_loss_is_reproducible_with_a_generator_and_returns_lowres_image():
    decoder = two_stage(random_crop_sizes=(None, 12), use_noise_for_lowres_cond=True)
    image = torch.rand(2, 3, 16, 16)
    a, low_a = decoder(image, unet_number=2, return_lowres_cond_image=True, generator=torch.Generator().manual_seed(3))
    b, low_b = decoder(image, unet_number=2, return_lowres_cond_image=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(low_a, low_b)
    assert low_a.shape == (2, 3, 12, 12)


def test_few_sampling_steps_from_many_timesteps_uses_ddim_with_that_many_calls():
    unet = base_unet()
    decoder = Decoder(unet, image_size=8, timesteps=1000, sample_timesteps=25)
    calls = []
    original = unet.forward
    unet.forward = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    out = decoder.sample(**cond(), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    assert len(calls) == 25
    calls.clear()
    decoder.sample(**cond(), timesteps=5)
    assert len(calls) == 5


def test_inpainting_keeps_the_unmasked_pixels():
    decoder = two_stage()
    image = torch.rand(2, 3, 16, 16)
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, :, :8] = True  # keep the left half
    out = decoder.sample(**cond(), inpaint_image=image, inpaint_mask=mask, inpaint_resample_times=2,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[..., :8], image[..., :8], atol=1e-5, rtol=0)
    assert (out[..., 8:] - image[..., 8:]).abs().mean() > 0.05  # the rest is generated


def test_bad_inputs():
    decoder = two_stage()
    with pytest.raises(ValueError, match="has 1 channels, the decoder expects 3"):
        decoder(torch.rand(2, 1, 16, 16), **cond(), unet_number=1)
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        decoder(torch.rand(3, 16, 16), **cond(), unet_number=1)
    with pytest.raises(ValueError, match=r"image_embed must have shape \(2, 32\)"):
        decoder(torch.rand(2, 3, 16, 16), image_embed=torch.randn(2, 16), text_encodings=cond()["text_encodings"], unet_number=1)
    with pytest.raises(ValueError, match="unet_number must be in 1..2"):
        decoder(torch.rand(2, 3, 16, 16), **cond(), unet_number=3)
    with pytest.raises(ValueError, match="unet_number must be given"):
        decoder(torch.rand(2, 3, 16, 16), **cond())
    with pytest.raises(ValueError, match="inpaint_mask must have shape"):
        decoder.sample(**cond(), inpaint_image=torch.rand(2, 3, 16, 16), inpaint_mask=torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="is conditioned on text"):
        decoder(torch.rand(2, 3, 16, 16), image_embed=cond()["image_embed"], unet_number=1)
    with pytest.raises(ValueError, match="strictly increasing"):
        Decoder((base_unet(), upsampler_unet()), image_sizes=(16, 8))
    with pytest.raises(ValueError, match="image_sizes has 1 sizes"):
        Decoder((base_unet(), upsampler_unet()), image_sizes=(16,))
    with pytest.raises(ValueError, match="needs image_size"):
        Decoder(base_unet())
    with pytest.raises(ValueError, match="random_crop_sizes must be None for the first unet"):
        Decoder(base_unet(), image_size=8, random_crop_sizes=4)


def test_rebuilding_a_trained_unet_warns():
    unet = Unet(dim=8, dim_mults=(1, 2), lowres_cond=True, image_embed_dim=EMB)  # an upsampler placed first
    with torch.no_grad():
        unet.to_out.weight.fill_(0.1)  # "trained"
    with pytest.warns(UserWarning, match="re-initialised"):
        Decoder(unet, image_size=8, learned_variance=False)
    with pytest.raises(ValueError, match="give it image_embed_dim"):
        Decoder(upsampler_unet(), image_size=8)


def test_dalle2_end_to_end_with_a_fixed_generator():
    clip = make_x_clip_adapter()
    prior = DiffusionPrior(DiffusionPriorNetwork(dim=EMB, depth=1, dim_head=8, heads=2, max_text_len=clip.max_text_len),
                           clip=clip, timesteps=10, cond_drop_prob=0.2)
    decoder = Decoder((base_unet(), upsampler_unet()), clip=clip, image_sizes=(8, 16), timesteps=10)
    dalle2 = DALLE2(prior=prior, decoder=decoder)
    prompts = ["a red circle", "a small blue square"]
    a = dalle2(prompts, cond_scale=2.0, prior_cond_scale=2.0, generator=torch.Generator().manual_seed(0))
    b = dalle2(prompts, cond_scale=2.0, prior_cond_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    pil = dalle2("a red circle", return_pil_images=True, generator=torch.Generator().manual_seed(0))
    assert pil.size == (16, 16)
    with pytest.raises(TypeError, match="prior must be a DiffusionPrior"):
        DALLE2(prior=decoder, decoder=decoder)
