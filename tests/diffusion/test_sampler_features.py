"""Every registered sampler with every objective, thresholding, self-conditioning, learned variance,
shapes and dtypes (the denoiser is the exact Gaussian one, so results can be checked)."""

import pytest
import torch

from dalle2_pytorch.diffusion import (
    Inpaint,
    ModelPrediction,
    NoiseScheduler,
    Objective,
    dynamic_threshold,
    get_sampler,
    sampler_names,
    static_threshold,
)
from dalle2_pytorch.diffusion.samplers.closed_form import GaussianData

ALL = sampler_names()
IMAGE = (2, 3, 4, 4)


def _steps(name):
    return None if name == "ddpm" else 8


def _run(name, denoise, scheduler, shape=IMAGE, seed=0, **kw):
    return get_sampler(name)(denoise, shape, scheduler, steps=_steps(name),
                             generator=torch.Generator().manual_seed(seed), **kw)


@pytest.fixture(scope="module")
def scheduler():
    return NoiseScheduler(beta_schedule="linear", timesteps=50)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("objective", [Objective.NOISE, Objective.V])
def test_every_objective_gives_the_same_samples(scheduler, name, objective):
    """An exact eps- or v-network, converted through Objective.to_x_start, samples what the exact
    x_0 network samples (up to float32 rounding of the conversions)."""
    data = GaussianData()
    reference = _run(name, data.denoiser(scheduler), scheduler)
    out = _run(name, data.denoiser(scheduler, objective=objective), scheduler)
    torch.testing.assert_close(out, reference, atol=2e-4, rtol=0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("post", [static_threshold, dynamic_threshold], ids=["static", "dynamic"])
def test_thresholding_in_the_denoiser_bounds_every_sample(scheduler, name, post):
    data = GaussianData(mean=0.5, std=2.0)  # most of the data lies outside [-1, 1]
    free = _run(name, data.denoiser(scheduler), scheduler)
    out = _run(name, data.denoiser(scheduler, post=post, objective=Objective.NOISE), scheduler)
    assert free.abs().max() > 1.5  # without thresholding the samples leave the image range
    assert out.isfinite().all() and out.abs().max() <= 1 + 1e-5  # the last x_0 estimate is the sample


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 4, 4)], ids=["vectors", "images"])
def test_self_conditioning_feeds_the_previous_estimate(scheduler, name, shape):
    seen, returned = [], []
    data = GaussianData()

    def denoise(x_t, t, x_self_cond):
        seen.append(x_self_cond)
        x0 = data.x_start(scheduler, x_t, t)
        if x_self_cond is not None:
            x0 = x0 + 0.01 * torch.tanh(x_self_cond)  # the input matters
        returned.append(x0.clone())
        return ModelPrediction(x_start=x0)

    out = _run(name, denoise, scheduler, shape=shape, self_condition=True)
    assert seen[0] is None and len(seen) > 2
    for previous, given in zip(returned, seen[1:]):
        assert torch.equal(given, previous)
    torch.testing.assert_close(out, returned[-1]) if name != "ddpm" else None
    assert out.shape == shape

    seen.clear()
    _run(name, denoise, scheduler, shape=shape, self_condition=False)
    assert all(s is None for s in seen)


@pytest.mark.parametrize("name", [n for n in ALL if n != "ddpm"])
def test_learned_variance_is_ignored_by_every_sampler_but_ddpm(scheduler, name):
    data = GaussianData()
    plain = _run(name, data.denoiser(scheduler), scheduler)
    with_var = _run(name, data.denoiser(scheduler, log_variance=3.0), scheduler)
    assert torch.equal(plain, with_var)


def test_learned_variance_is_used_by_ddpm(scheduler):
    data = GaussianData()
    plain = _run("ddpm", data.denoiser(scheduler), scheduler)
    with_var = _run("ddpm", data.denoiser(scheduler, log_variance=-1.0), scheduler)
    assert not torch.allclose(plain, with_var, atol=1e-3)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_comes_from_the_caller(scheduler, name, dtype):
    out = _run(name, GaussianData().denoiser(scheduler), scheduler, dtype=dtype)
    assert out.dtype == dtype and out.isfinite().all()
    x_T = torch.randn(IMAGE, dtype=dtype)
    assert _run(name, GaussianData().denoiser(scheduler), scheduler, dtype=dtype, x_T=x_T).dtype == dtype


@pytest.mark.parametrize("name", ALL)
def test_x_T_is_used_and_checked(scheduler, name):
    den = GaussianData().denoiser(scheduler)
    x_T = torch.randn(IMAGE, generator=torch.Generator().manual_seed(1))
    if name in ("ddpm", "dpmpp_2m_sde", "euler_ancestral"):
        a = _run(name, den, scheduler, x_T=x_T, seed=0)
        b = _run(name, den, scheduler, x_T=x_T * 0.5, seed=0)
        assert not torch.equal(a, b)
    else:  # deterministic: the output depends on x_T only
        assert torch.equal(_run(name, den, scheduler, x_T=x_T, seed=0), _run(name, den, scheduler, x_T=x_T, seed=9))
    with pytest.raises(ValueError, match=r"x_T has shape \(2, 3\), expected \(2, 3, 4, 4\)"):
        _run(name, den, scheduler, x_T=torch.zeros(2, 3))


@pytest.mark.parametrize("kw", [dict(spacing="trailing"), dict(spacing="leading"), dict(karras=True)])
def test_ddim_inpainting_works_with_every_spacing(scheduler, kw):
    known = torch.rand(IMAGE, generator=torch.Generator().manual_seed(2)) * 2 - 1
    mask = torch.zeros(2, 1, 4, 4)
    mask[..., :2] = 1
    calls = []
    out = _run("ddim", GaussianData().denoiser(scheduler, calls=calls), scheduler,
               inpaint=Inpaint(image=known, mask=mask, resample_times=2), **kw)
    torch.testing.assert_close(out[..., :2], known[..., :2])
    assert len(calls) == (8 - 1) * 2 + 1
