import math

import pytest
import torch

from dalle2_pytorch.diffusion import NoiseScheduler, Objective, variational_bound_bits


@pytest.fixture
def scheduler():
    return NoiseScheduler(beta_schedule="cosine", timesteps=100)


def test_conversions_are_inverse(scheduler):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g)
    noise = torch.randn(6, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 50, 98, 99])
    x_t = scheduler.q_sample(x0, t, noise)
    torch.testing.assert_close(scheduler.predict_start_from_noise(x_t, t, noise), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(scheduler.predict_noise_from_start(x_t[:5], t[:5], x0[:5]), noise[:5], atol=2e-3, rtol=1e-3)
    v = scheduler.calculate_v(x0, t, noise)
    torch.testing.assert_close(scheduler.predict_start_from_v(x_t, t, v), x0, atol=1e-5, rtol=1e-5)
    for objective in Objective:
        target = objective.target(scheduler, x0, t, noise)
        recovered = objective.to_x_start(scheduler, x_t, t, target)
        torch.testing.assert_close(recovered[:5], x0[:5], atol=2e-3, rtol=1e-3)


def test_posterior_matches_closed_form(scheduler):
    x0 = torch.randn(3, 5)
    x_t = torch.randn(3, 5)
    t = torch.tensor([1, 20, 99])
    mean, var, log_var = scheduler.q_posterior(x0, x_t, t)
    ab = scheduler.alphas_cumprod.double()
    for i, ti in enumerate(t.tolist()):
        beta = 1 - ab[ti] / ab[ti - 1]
        c1 = beta * ab[ti - 1].sqrt() / (1 - ab[ti])
        c2 = (1 - ab[ti - 1]) * (1 - beta).sqrt() / (1 - ab[ti])
        torch.testing.assert_close(mean[i].double(), c1 * x0[i].double() + c2 * x_t[i].double(), atol=1e-5, rtol=1e-5)
        expected_var = beta * (1 - ab[ti - 1]) / (1 - ab[ti])
        assert var[i].item() == pytest.approx(expected_var.item(), rel=1e-4)
        assert log_var[i].item() == pytest.approx(math.log(expected_var.item()), rel=1e-4)


def test_q_sample_statistics(scheduler):
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20000,), 2.0)
    t = torch.full((20000,), 50)
    x_t = scheduler.q_sample(x0.unsqueeze(-1), t, generator=g).squeeze(-1)
    ab = scheduler.alphas_cumprod[50].item()
    assert x_t.mean().item() == pytest.approx(2.0 * math.sqrt(ab), abs=0.03)
    assert x_t.std().item() == pytest.approx(math.sqrt(1 - ab), rel=0.03)


def test_q_sample_from_to_matches_marginal(scheduler):
    # x_{t1} ~ q(x_t1 | x0) then from t1 to t2 must have the marginal q(x_t2 | x0)
    g = torch.Generator().manual_seed(2)
    x0 = torch.full((40000, 1), 1.5)
    t1 = torch.full((40000,), 10)
    t2 = torch.full((40000,), 60)
    x_t1 = scheduler.q_sample(x0, t1, generator=g)
    x_t2 = scheduler.q_sample_from_to(x_t1, t1, t2, generator=g)
    ab = scheduler.alphas_cumprod[60].item()
    assert x_t2.mean().item() == pytest.approx(1.5 * math.sqrt(ab), abs=0.02)
    assert x_t2.std().item() == pytest.approx(math.sqrt(1 - ab), rel=0.03)
    # from -1 means from clean data
    x_direct = scheduler.q_sample_from_to(x0, torch.full((40000,), -1), t2, generator=g)
    assert x_direct.std().item() == pytest.approx(math.sqrt(1 - ab), rel=0.03)


def test_p2_weighting():
    plain = NoiseScheduler(timesteps=100)
    loss = torch.ones(3)
    t = torch.tensor([0, 50, 99])
    assert torch.equal(plain.p2_reweigh_loss(loss, t), loss)
    weighted = NoiseScheduler(timesteps=100, p2_loss_weight_gamma=1.0, p2_loss_weight_k=1.0)
    out = weighted.p2_reweigh_loss(loss, t)
    snr = weighted.alphas_cumprod[t] / (1 - weighted.alphas_cumprod[t])
    torch.testing.assert_close(out, 1 / (1 + snr))
    assert out[0] < out[1] < out[2]


def test_sample_random_times_is_seeded(scheduler):
    a = scheduler.sample_random_times(16, generator=torch.Generator().manual_seed(3))
    b = scheduler.sample_random_times(16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 100


def test_variational_bound_is_zero_for_the_true_posterior(scheduler):
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    x_t = torch.randn(2, 3, 4, 4)
    t = torch.tensor([5, 40])
    mean, _, log_var = scheduler.q_posterior(x0, x_t, t)
    vb = variational_bound_bits(scheduler, x_start=x0, x_t=x_t, t=t, model_mean=mean, model_log_variance=log_var)
    torch.testing.assert_close(vb, torch.zeros(2), atol=1e-5, rtol=0)
    worse = variational_bound_bits(scheduler, x_start=x0, x_t=x_t, t=t, model_mean=mean + 0.5, model_log_variance=log_var)
    assert torch.all(worse > 0.01)
