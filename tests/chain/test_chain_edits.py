"""DALLE2's latent edits on a tiny random-weight chain (fast): fixed decoder noise, interpolation
endpoints, text diffs, weighted mixes, inpainting and negative prompts. The same properties on a
trained model: tests/demo/test_dalle2_edits.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle2_pytorch import DALLE2, Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet
from dalle2_pytorch.decoder.lowres import resize_image_to
from tests.conftest import make_x_clip_adapter


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def chain() -> DALLE2:
    """Text-conditioned base decoder (8 px, learned variance, DDPM: noise at every step) + upsampler (16 px)."""
    clip = make_x_clip_adapter()
    emb = clip.dim_latent
    torch.manual_seed(0)
    prior = DiffusionPrior(DiffusionPriorNetwork(dim=emb, depth=1, dim_head=8, heads=2, max_text_len=clip.max_text_len),
                           clip=clip, timesteps=6, cond_drop_prob=0.2)
    base = Unet(dim=8, image_embed_dim=emb, cond_dim=16, dim_mults=(1, 2), text_embed_dim=clip.text_encodings_dim,
                cond_on_text_encodings=True, attn_dim_head=8, attn_heads=2)
    up = Unet(dim=8, image_embed_dim=emb, cond_dim=16, dim_mults=(1, 2), lowres_cond=True, attn_dim_head=8, attn_heads=2)
    decoder = Decoder((base, up), clip=clip, image_sizes=(8, 16), timesteps=6)
    with torch.no_grad():  # zero-initialised output layers would make the images ignore the embeddings
        for p in decoder.unets.parameters():
            p.add_(torch.randn(p.shape, generator=_g(p.numel())) * 0.2)
    return DALLE2(prior=prior, decoder=decoder, prior_num_samples=2).eval()


def _image(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, 32, 32, generator=_g(seed))  # the tiny CLIP's input size


def test_decode_noise_seed_is_per_row_and_batch_independent(chain):
    embeds = chain.embed([_image(0), _image(1)])
    both = chain.decode(embeds, tokens=chain.clip.tokenize(["", ""]), noise_seed=5)
    one = chain.decode(embeds[1:], tokens=chain.clip.tokenize([""]), noise_seed=5)
    assert both.shape == (2, 3, 16, 16)
    assert torch.equal(both[1], one[0])  # a row's image does not depend on the rest of the batch
    same = chain.decode(embeds[:1].expand(2, -1), tokens=chain.clip.tokenize(["", ""]), noise_seed=5)
    assert torch.equal(same[0], same[1])  # same embedding + same seed = same image, stochastic sampler or not
    other = chain.decode(embeds[:1], tokens=chain.clip.tokenize([""]), noise_seed=6)
    assert not torch.equal(other[0], same[0])
    with pytest.raises(ValueError, match="noise seeds"):
        chain.decode(embeds, tokens=chain.clip.tokenize(["", ""]), noise_seed=[1])


def test_variations_with_fixed_noise(chain):
    images = torch.cat([_image(0), _image(1)])
    a = chain.variations(images, 2, decoder_noise_seed=3)
    b = chain.variations(images, 2, decoder_noise_seed=3)
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # variation k uses seed 3 + k
    # variation k of image 1 alone is the same image
    assert torch.equal(chain.variations(images[1:], 2, decoder_noise_seed=3)[1], a[3])
    # PIL images and file paths are images too
    pil = Image.fromarray((images[1].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    c = chain.variations([pil], 1, decoder_noise_seed=3)
    assert c.shape == (1, 3, 16, 16)


def test_interpolation_endpoints_are_the_inputs_own_generations(chain, tmp_path):
    a, b = "a red circle", _image(2)
    frames = chain.interpolate(a, b, 4, generator=_g(0), decoder_noise_seed=9, prior_steps=3)
    assert frames.shape == (4, 3, 16, 16)
    assert torch.equal(frames, chain.interpolate(a, b, 4, generator=_g(0), decoder_noise_seed=9, prior_steps=3))
    # frame 0: the prompt's text-to-image with the same seeds, when the decoder reads the same caption
    first = chain.interpolate(a, b, 3, generator=_g(0), decoder_noise_seed=9, prior_steps=3, caption=a)
    own = chain(a, generator=_g(0), decoder_noise_seed=9, prior_steps=3)
    assert torch.equal(first[0], own)
    # last frame: the image's variation with the same noise
    assert torch.equal(frames[-1], chain.variations(b, 1, decoder_noise_seed=9)[0])
    # the frames in between differ from both ends; explicit positions give the same frames
    assert not torch.equal(frames[1], frames[0]) and not torch.equal(frames[1], frames[-1])
    again = chain.interpolate(a, b, [1 / 3], generator=_g(0), decoder_noise_seed=9, prior_steps=3)
    assert torch.equal(again[0], frames[1])
    # image files as endpoints
    path = tmp_path / "b.png"
    Image.fromarray((b[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
    assert chain.interpolate(Path(path), a, 2, generator=_g(0), decoder_noise_seed=9, prior_steps=3).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="at least 2 frames"):
        chain.interpolate(a, b, 1)


def test_weighted_mix(chain):
    inputs = ["a red circle", _image(3), "a blue square"]
    m = chain.interpolate(inputs, [0.2, 0.5, 0.3], generator=_g(0), decoder_noise_seed=4, prior_steps=3)
    assert m.shape == (1, 3, 16, 16)
    assert torch.equal(m, chain.mix(inputs, [0.2, 0.5, 0.3], generator=_g(0), decoder_noise_seed=4, prior_steps=3))
    two = chain.mix(inputs, [0.2, 0.5, 0.3], 2, generator=_g(0), decoder_noise_seed=4, prior_steps=3)
    assert torch.equal(two[0], m[0]) and not torch.equal(two[0], two[1])
    with pytest.raises(ValueError, match="2 weights given for 3 inputs"):
        chain.mix(inputs, [1, 1])


def test_text_diff_at_amount_zero_is_the_plain_variation(chain):
    image = _image(4)
    out = chain.text_diff(image, "a red circle", "a blue square", [0.0, 0.3, 0.6], decoder_noise_seed=2)
    assert out.shape == (3, 3, 16, 16)
    assert torch.equal(out[0], chain.variations(image, 1, decoder_noise_seed=2)[0])
    assert not torch.equal(out[1], out[0])
    for bad in ([1.5], []):
        with pytest.raises(ValueError, match="amounts"):
            chain.text_diff(image, "a", "b", bad)
    with pytest.raises(ValueError, match="different captions"):
        chain.text_diff(image, "a red circle", "a red circle", [0.5])


def test_inpaint_keeps_the_known_pixels(chain):
    image = _image(5)
    keep = torch.zeros(32, 32, dtype=torch.bool)
    keep[:, :16] = True  # keep the left half, paint the right half
    out = chain.inpaint(image, keep, "a red circle", 2, generator=_g(0), decoder_sampler="ddpm", resample_times=2,
                        prior_steps=3)
    assert out.shape == (2, 3, 16, 16)
    assert torch.equal(out, chain.inpaint(image, keep, "a red circle", 2, generator=_g(0), decoder_sampler="ddpm",
                                          resample_times=2, prior_steps=3))
    # RePaint pastes the known region back at every step: the kept pixels are the image's at the output size
    known = resize_image_to(image, 16).clamp(0, 1).expand(2, -1, -1, -1)
    torch.testing.assert_close(out[:, :, :, :7], known[:, :, :, :7], atol=1e-2, rtol=0)
    assert (out[:, :, :, 9:] - known[:, :, :, 9:]).abs().mean() > 0.05  # the painted half is new
    own = chain.inpaint(image, keep, None, 1, decoder_noise_seed=1, resample_times=1)
    assert own.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="not supported by the dpmpp_2m sampler"):
        chain.inpaint(image, keep, "a red circle", decoder_sampler="dpmpp_2m")
    with pytest.raises(ValueError, match="mask must be"):
        chain.inpaint(image, keep[:16], "a red circle")


def test_negative_prompt_through_the_chain(chain):
    kw = dict(prior_cond_scale=3.0, decoder_noise_seed=0, prior_steps=3)
    plain = chain.embed("a red circle", generator=_g(1), prior_cond_scale=3.0, prior_steps=3)
    neg = chain.embed("a red circle", generator=_g(1), prior_cond_scale=3.0, prior_steps=3, negative_prompt="a blue square")
    assert not torch.allclose(plain, neg)
    a = chain("a red circle", generator=_g(1), negative_prompt="a blue square", **kw)
    assert torch.equal(a, chain.decode(neg, tokens=chain.clip.tokenize(["a red circle"]), noise_seed=0)[0])
    with pytest.raises(ValueError, match="no effect at cond_scale=1"):
        chain("a red circle", negative_prompt="a blue square")
