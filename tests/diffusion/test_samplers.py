"""DDPM and DDIM against closed-form cases: for Gaussian data the optimal denoiser is known exactly.

(The registry's other samplers: test_sampler_registry.py, test_sampler_convergence.py,
test_sampler_features.py.)"""

import pytest
import torch

from dalle2_pytorch.diffusion import (
    Inpaint,
    ModelPrediction,
    NoiseScheduler,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    extract,
    sample,
)

MU, S = 0.7, 0.3


def gaussian_denoiser(scheduler, calls=None):
    """E[x_0 | x_t] for x_0 ~ N(MU, S^2): the exact (Bayes-optimal) x_0 prediction."""

    def denoise(x_t, t, x_self_cond):
        if calls is not None:
            calls.append(int(t[0]))
        ab = extract(scheduler.alphas_cumprod, t, x_t.shape)
        gain = ab.sqrt() * S**2 / (ab * S**2 + 1 - ab)
        return ModelPrediction(x_start=MU + gain * (x_t - ab.sqrt() * MU))

    return denoise


# With the exact x_0 denoiser the samplers' outputs converge to the data distribution as the number
# of steps grows (few steps under-disperse: one DDIM step returns E[x_0 | x_T], a point mass).


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_ddpm_recovers_gaussian_data(schedule):
    scheduler = NoiseScheduler(beta_schedule=schedule, timesteps=1000)
    g = torch.Generator().manual_seed(0)
    x = ddpm_sample(gaussian_denoiser(scheduler), (20000, 1), scheduler, generator=g)
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(S, rel=0.03)


@pytest.mark.parametrize("steps,eta,rel", [(1000, 0.0, 0.015), (100, 0.0, 0.03), (250, 1.0, 0.03)])
def test_ddim_recovers_gaussian_data(steps, eta, rel):
    scheduler = NoiseScheduler(beta_schedule="cosine", timesteps=1000)
    g = torch.Generator().manual_seed(1)
    x = ddim_sample(gaussian_denoiser(scheduler), (20000, 1), scheduler, steps=steps, eta=eta, generator=g)
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(S, rel=rel)


def test_ddim_variance_grows_towards_the_data_variance_with_steps():
    scheduler = NoiseScheduler(beta_schedule="cosine", timesteps=1000)
    x_T = torch.randn(20000, 1, generator=torch.Generator().manual_seed(2))
    stds = [ddim_sample(gaussian_denoiser(scheduler), (20000, 1), scheduler, steps=n, x_T=x_T).std().item()
            for n in (1, 5, 25, 250)]
    assert stds[0] < 1e-3  # one step = the posterior mean E[x_0 | x_T] ~ MU
    assert stds == sorted(stds) and abs(stds[-1] - S) < 0.01


@pytest.mark.parametrize("steps", [1, 2, 7, 64, 1000])
def test_ddim_makes_exactly_the_requested_number_of_calls(steps):
    scheduler = NoiseScheduler(timesteps=1000)
    calls = []
    ddim_sample(gaussian_denoiser(scheduler, calls), (2, 3), scheduler, steps=steps)
    assert len(calls) == steps
    assert calls[0] == 999 and calls[-1] == (0 if steps > 1 else 999)
    assert calls == sorted(calls, reverse=True) and len(set(calls)) == steps
    assert ddim_timesteps(1000, steps) == calls


def test_ddpm_visits_every_timestep_once():
    scheduler = NoiseScheduler(timesteps=30)
    calls = []
    ddpm_sample(gaussian_denoiser(scheduler, calls), (2, 3), scheduler)
    assert calls == list(range(29, -1, -1))


def test_ddim_eta_zero_is_deterministic_given_x_T():
    scheduler = NoiseScheduler(timesteps=100)
    x_T = torch.randn(4, 3)
    a = ddim_sample(gaussian_denoiser(scheduler), (4, 3), scheduler, steps=10, x_T=x_T, generator=torch.Generator().manual_seed(0))
    b = ddim_sample(gaussian_denoiser(scheduler), (4, 3), scheduler, steps=10, x_T=x_T, generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)


def test_same_generator_seed_gives_identical_samples():
    scheduler = NoiseScheduler(timesteps=50)
    a = ddpm_sample(gaussian_denoiser(scheduler), (4, 3), scheduler, generator=torch.Generator().manual_seed(5))
    b = ddpm_sample(gaussian_denoiser(scheduler), (4, 3), scheduler, generator=torch.Generator().manual_seed(5))
    c = ddpm_sample(gaussian_denoiser(scheduler), (4, 3), scheduler, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_dispatch_and_bad_steps():
    scheduler = NoiseScheduler(timesteps=100)
    calls = []
    sample(gaussian_denoiser(scheduler, calls), (1, 2), scheduler, steps=7)
    assert len(calls) == 7
    calls.clear()
    sample(gaussian_denoiser(scheduler, calls), (1, 2), scheduler)
    assert len(calls) == 100
    with pytest.raises(ValueError, match="cannot sample with 101 steps"):
        ddim_sample(gaussian_denoiser(scheduler), (1, 2), scheduler, steps=101)
    with pytest.raises(ValueError, match="positive integer"):
        ddim_sample(gaussian_denoiser(scheduler), (1, 2), scheduler, steps=0)
    with pytest.raises(ValueError, match="ddpm runs all 100 trained steps"):
        ddpm_sample(gaussian_denoiser(scheduler), (1, 2), scheduler, steps=10)


def test_self_condition_receives_previous_estimate():
    scheduler = NoiseScheduler(timesteps=20)
    seen = []

    def denoise(x_t, t, x_self_cond):
        seen.append(None if x_self_cond is None else x_self_cond.clone())
        return ModelPrediction(x_start=torch.full_like(x_t, float(t[0])))

    ddim_sample(denoise, (2, 2), scheduler, steps=5, self_condition=True)
    assert seen[0] is None
    assert all(s is not None for s in seen[1:])
    assert torch.equal(seen[1], torch.full((2, 2), 19.0))


def test_learned_variance_is_used_by_ddpm():
    scheduler = NoiseScheduler(timesteps=10)

    def denoise_with(log_var):
        def denoise(x_t, t, x_self_cond):
            return ModelPrediction(x_start=torch.zeros_like(x_t), log_variance=torch.full_like(x_t, log_var))
        return denoise

    def std_after_first_step(log_var):
        seen = []
        ddpm_sample(denoise_with(log_var), (5000, 1), scheduler, generator=torch.Generator().manual_seed(0),
                    x_T=torch.zeros(5000, 1), callback=lambda i, n, t, x, x0: seen.append(x.std().item()))
        return seen[0]

    # x_T = 0 and x_0 = 0 make the posterior mean 0, so the spread after one step is the noise alone
    assert std_after_first_step(-20.0) < 1e-3
    assert std_after_first_step(0.0) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("use_ddim", [False, True])
def test_inpainting_keeps_known_pixels_and_resamples(use_ddim):
    scheduler = NoiseScheduler(timesteps=20)
    known = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    calls = []
    out = sample(
        gaussian_denoiser(scheduler, calls), (2, 3, 8, 8), scheduler, steps=10 if use_ddim else None,
        inpaint=Inpaint(image=known, mask=mask, resample_times=3), generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(out[..., :4], known[..., :4])
    steps = 10 if use_ddim else 20
    assert len(calls) == (steps - 1) * 3 + 1  # every step resampled 3 times except the last
    assert calls[-1] == 0 and calls[-2] != 0
    with pytest.raises(ValueError, match="inpaint mask has shape"):
        sample(gaussian_denoiser(scheduler), (2, 3, 8, 8), scheduler,
               inpaint=Inpaint(image=known, mask=torch.ones(2, 1, 4, 4)))


def test_callback_progress():
    scheduler = NoiseScheduler(timesteps=100)
    seen = []
    ddim_sample(gaussian_denoiser(scheduler), (1, 2), scheduler, steps=4,
                callback=lambda i, n, t, x, x0: seen.append((i, n, t)))
    assert [s[0] for s in seen] == [0, 1, 2, 3] and all(s[1] == 4 for s in seen)
