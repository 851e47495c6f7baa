"""DALLE2's latent edits end to end on the tiny *trained* demo model: determinism with a seed,
interpolation end frames equal to the endpoints' own generations with the same noise, text diff at
amount 0 equal to the plain variation, inpainting keeping the known pixels, negative prompts."""

from __future__ import annotations

import pytest
import torch

from dalle2_pytorch.cli import load_models
from dalle2_pytorch.dalle2 import DALLE2
from dalle2_pytorch.decoder.lowres import resize_image_to

pytestmark = pytest.mark.slow  # needs the tiny demo run


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def chain(tiny_demo) -> DALLE2:
    prior, decoder, _ = load_models(model_dir=tiny_demo[0])
    return DALLE2(prior=prior, decoder=decoder, prior_num_samples=2).eval()


@pytest.fixture(scope="module")
def photo(chain) -> torch.Tensor:
    """A generated image of the model, at the CLIP's input size."""
    image = chain("a red circle", generator=_g(11))
    return resize_image_to(image[None], chain.clip.image_size).clamp(0, 1)


def test_variations_fixed_noise_deterministic(chain, photo):
    a = chain.variations(photo, 3, decoder_noise_seed=5)
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, chain.variations(photo, 3, decoder_noise_seed=5))
    assert not torch.equal(a[0], a[1])
    assert torch.equal(chain.variations(photo, 1, decoder_noise_seed=6)[0], a[1])  # variation k = seed + k


def test_interpolation_frames_at_0_and_1_are_the_endpoints_own_generations(chain, photo):
    kw = dict(generator=_g(3), decoder_noise_seed=7)
    frames = chain.interpolate("a blue square", photo, 5, **kw)
    assert frames.shape == (5, 3, 32, 32)
    assert torch.equal(frames, chain.interpolate("a blue square", photo, 5, generator=_g(3), decoder_noise_seed=7))
    assert torch.equal(frames[0], chain("a blue square", generator=_g(3), decoder_noise_seed=7))
    assert torch.equal(frames[-1], chain.variations(photo, 1, decoder_noise_seed=7)[0])
    # prompt to prompt: the second endpoint is the prior's second draw, decoded with the same noise
    both = chain.interpolate("a blue square", "a green triangle", 3, **{**kw, "generator": _g(3)})
    embeds = chain.embed(["a blue square", "a green triangle"], generator=_g(3))
    assert torch.equal(both[-1], chain.decode(embeds[1:], noise_seed=7)[0])
    assert torch.equal(both[0], frames[0])
    # frames change smoothly: neighbours are closer than the two ends
    steps = (frames[1:] - frames[:-1]).abs().mean(dim=(1, 2, 3))
    assert float(steps.max()) <= float((frames[-1] - frames[0]).abs().mean()) + 1e-6


def test_weighted_mix_is_deterministic(chain, photo):
    kw = dict(generator=_g(1), decoder_noise_seed=2)
    m = chain.interpolate(["a blue square", photo, "a green triangle"], [0.5, 0.25, 0.25], **kw)
    assert m.shape == (1, 3, 32, 32)
    assert torch.equal(m, chain.mix(["a blue square", photo, "a green triangle"], [2, 1, 1], generator=_g(1),
                                    decoder_noise_seed=2))


def test_text_diff_at_amount_zero_is_the_plain_variation(chain, photo):
    out = chain.text_diff(photo, "a red circle", "a blue square", [0.0, 0.25, 0.5], decoder_noise_seed=4)
    assert out.shape == (3, 3, 32, 32)
    assert torch.equal(out[0], chain.variations(photo, 1, decoder_noise_seed=4)[0])
    assert torch.equal(out, chain.text_diff(photo, "a red circle", "a blue square", [0.0, 0.25, 0.5], decoder_noise_seed=4))
    assert not torch.equal(out[2], out[0])


def test_inpaint_keeps_the_known_half(chain, photo):
    image = resize_image_to(photo, chain.decoder.image_size)
    keep = torch.zeros(32, 32, dtype=torch.bool)
    keep[:, :16] = True
    out = chain.inpaint(image[0], keep, "a green triangle", 2, generator=_g(0), resample_times=2)
    assert out.shape == (2, 3, 32, 32)
    assert torch.equal(out, chain.inpaint(image[0], keep, "a green triangle", 2, generator=_g(0), resample_times=2))
    torch.testing.assert_close(out[..., :14], image.expand(2, -1, -1, -1)[..., :14], atol=2e-2, rtol=0)


def test_negative_prompt_changes_the_prior_sample(chain):
    plain = chain.embed("a red circle", generator=_g(2), prior_cond_scale=3.0)
    neg = chain.embed("a red circle", generator=_g(2), prior_cond_scale=3.0, negative_prompt="a blue square")
    assert not torch.allclose(plain, neg)
    assert torch.equal(neg, chain.embed("a red circle", generator=_g(2), prior_cond_scale=3.0, negative_prompt="a blue square"))
