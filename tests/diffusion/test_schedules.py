import pytest
import torch

from dalle2_pytorch.diffusion import BETA_SCHEDULES, NoiseScheduler, SCHEDULE_BUFFER_NAMES, make_beta_schedule


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
@pytest.mark.parametrize("timesteps", [5, 100, 1000])
def test_every_schedule_is_finite_and_valid(name, timesteps):
    betas = make_beta_schedule(name, timesteps)
    assert betas.shape == (timesteps,)
    assert betas.dtype == torch.float64
    assert torch.all(betas >= 0) and torch.all(betas < 1)
    scheduler = NoiseScheduler(beta_schedule=name, timesteps=timesteps)
    for buffer_name in SCHEDULE_BUFFER_NAMES:
        value = getattr(scheduler, buffer_name)
        assert torch.isfinite(value).all(), (name, timesteps, buffer_name)
    ac = scheduler.alphas_cumprod
    assert torch.all(ac[1:] <= ac[:-1]), "alpha_bar must be non-increasing"
    assert ac[-1] > 0


@pytest.mark.parametrize("timesteps", [5, 10, 20])
def test_short_linear_schedules_give_finite_losses(timesteps):
    # the reference produced NaN here (beta >= 1 for T <= 20)
    scheduler = NoiseScheduler(beta_schedule="linear", timesteps=timesteps)
    x = torch.randn(4, 3, 8, 8)
    t = torch.arange(4) % timesteps
    x_t = scheduler.q_sample(x, t, torch.randn_like(x))
    assert torch.isfinite(x_t).all()
    assert torch.isfinite(scheduler.predict_start_from_noise(x_t, t, torch.randn_like(x))).all()


def test_cosine_golden_values():
    scheduler = NoiseScheduler(beta_schedule="cosine", timesteps=1000)
    # alpha_bar(t) = f(t+1)/f(0), f(x) = cos^2(((x/T)+s)/(1+s) * pi/2)
    import math

    def f(x):
        return math.cos(((x / 1000) + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in [0, 10, 500, 998]:
        expected = f(t + 1) / f(0)
        assert scheduler.alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-5)
    assert scheduler.betas[-1].item() == pytest.approx(0.999, rel=1e-6)


def test_linear_unchanged_where_reference_is_valid():
    betas = make_beta_schedule("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="unknown beta_schedule 'cosin'"):
        make_beta_schedule("cosin", 10)
    with pytest.raises(ValueError, match="timesteps must be a positive integer"):
        make_beta_schedule("cosine", 0)
    with pytest.raises(ValueError, match="unknown loss_type"):
        NoiseScheduler(loss_type="l3")


def test_schedule_buffers_are_not_persistent():
    scheduler = NoiseScheduler(timesteps=10)
    assert scheduler.state_dict() == {}
    assert set(scheduler.schedule_buffers()) == set(SCHEDULE_BUFFER_NAMES)
