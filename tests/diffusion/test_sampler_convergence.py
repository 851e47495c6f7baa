"""Every sampler against the closed form: Gaussian data N(0.3, 0.5^2), its exact denoiser, T = 1000.

Deterministic samplers are compared with the exact probability-flow ODE solution from the same
x_T (no Monte-Carlo noise); stochastic ones by the mean and std of a large batch against the exact
target distribution. See `dalle2_pytorch/diffusion/samplers/closed_form.py`.
"""

import math

import pytest
import torch

from dalle2_pytorch.diffusion import NoiseScheduler, get_sampler
from dalle2_pytorch.diffusion.samplers.closed_form import GaussianData, sampler_error
from dalle2_pytorch.diffusion.samplers.unipc import unic_weights

STEPS = (10, 20, 40, 80)
DETERMINISTIC = [("ddim", {}), ("dpmpp_2m", {}), ("unipc", {}), ("euler", {}), ("heun", {}),
                 ("euler_ancestral", {"eta": 0.0}), ("dpmpp_2m_sde", {"eta": 0.0})]
SECOND_ORDER = ("dpmpp_2m", "unipc", "heun")
DATA = GaussianData(mean=0.3, std=0.5)


@pytest.fixture(scope="module")
def schedulers():
    return {name: NoiseScheduler(beta_schedule=name, timesteps=1000) for name in ("cosine", "linear")}


def _errors(name, scheduler, **kw):
    return [sampler_error(name, scheduler, n, data=DATA, batch=256, **kw) for n in STEPS]


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("name,kw", DETERMINISTIC, ids=[n + ("_eta0" if k else "") for n, k in DETERMINISTIC])
def test_deterministic_error_falls_as_steps_grow(schedulers, schedule, name, kw):
    errs = _errors(name, schedulers[schedule], **kw)
    path = [e.path_error for e in errs]
    std = [e.std_error for e in errs]
    assert all(a > b for a, b in zip(path, path[1:])), path
    assert all(a > b for a, b in zip(std, std[1:])), std
    assert path[-1] < path[0] / 6  # at least first order from 10 to 80 steps
    assert all(e.mean_error < 1e-3 for e in errs)  # the data mean is kept at every step count
    assert [e.calls for e in errs] == [2 * n - 1 if name == "heun" else n for n in STEPS]


def test_second_order_solvers_show_their_order(schedulers):
    """The issue's configuration (cosine schedule, linspace spacing): error ratio 20 -> 40 steps."""
    ratios = {}
    for name in ("ddim", *SECOND_ORDER):
        path = [e.path_error for e in _errors(name, schedulers["cosine"])]
        ratios[name] = path[1] / path[2]
    assert 1.8 < ratios["ddim"] < 2.3, ratios  # first order
    assert all(ratios[name] >= 3 for name in SECOND_ORDER), ratios


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_second_order_holds_asymptotically_on_both_schedules(schedulers, schedule):
    for name in SECOND_ORDER:
        path = [e.path_error for e in _errors(name, schedulers[schedule])]
        assert path[2] / path[3] >= 3.5, (name, path)


def test_karras_spacing_converges_at_second_order(schedulers):
    s = schedulers["linear"]  # (on the cosine schedule Karras sigmas crowd into the last timesteps)
    ddim = [e.path_error for e in _errors("ddim", s, karras=True)]
    assert all(a > b for a, b in zip(ddim, ddim[1:]))
    for name in SECOND_ORDER:
        path = [e.path_error for e in _errors(name, s, karras=True)]
        assert all(a > b for a, b in zip(path, path[1:])), (name, path)
        assert path[1] / path[2] >= 3, (name, path)
        assert path[-1] < ddim[-1] / 5


def test_the_unipc_corrector_raises_the_order(schedulers):
    """UniC makes UniPC-2 third order where the last step does not dominate (Karras sigmas, dense
    near t = 0), and more accurate than its predictor alone (DPM-Solver++(2M)) from 40 steps."""
    unipc = [e.path_error for e in _errors("unipc", schedulers["linear"], karras=True)]
    assert unipc[1] / unipc[2] >= 6 and unipc[2] / unipc[3] >= 6, unipc
    for schedule in ("cosine", "linear"):
        unipc = [e.path_error for e in _errors("unipc", schedulers[schedule])]
        dpm = [e.path_error for e in _errors("dpmpp_2m", schedulers[schedule])]
        assert unipc[2] < 0.95 * dpm[2] and unipc[3] < 0.9 * dpm[3], (schedule, unipc, dpm)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_other_spacings_converge(schedulers, spacing):
    # the grid's last timestep moves with the step count for these spacings (trailing ends at
    # T / n - 1), so the reference moves too and the error need not fall at every doubling
    for name, kw in DETERMINISTIC:
        path = [e.path_error for e in _errors(name, schedulers["linear"], spacing=spacing, **kw)]
        assert path[-1] < path[0] and path[-1] < (0.035 if name in SECOND_ORDER else 0.06), (name, path)


@pytest.mark.parametrize("name,eta", [("ddim", 1.0), ("ddim", 0.5), ("euler_ancestral", None), ("dpmpp_2m_sde", None)])
def test_stochastic_samplers_approach_the_data_distribution(schedulers, name, eta):
    batch = 100_000
    errs = [sampler_error(name, schedulers["cosine"], n, data=DATA, batch=batch, seed=n, eta=eta) for n in STEPS]
    std = [e.std_error for e in errs]
    assert all(a > b for a, b in zip(std, std[1:])), std
    assert std[-1] < 0.03
    noise = DATA.std / math.sqrt(batch)
    assert all(e.mean_error < 5 * noise for e in errs)  # unbiased mean at every step count


def test_ddpm_recovers_the_data_distribution(schedulers):
    err = sampler_error("ddpm", schedulers["cosine"], None, data=DATA, batch=20_000)
    assert err.calls == 1000 and err.mean_error < 0.01 and err.std_error < 0.01


# ------------------------------------------------------------------- identities between samplers
def _run(name, scheduler, steps, seed=0, **kw):
    return get_sampler(name)(DATA.denoiser(scheduler), (512, 1), scheduler, steps=steps,
                             generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("spacing", [None, "trailing"])
def test_euler_is_ddim_and_euler_ancestral_is_ddim_eta_1(schedulers, spacing):
    s = schedulers["linear"]
    torch.testing.assert_close(_run("euler", s, 15, spacing=spacing), _run("ddim", s, 15, spacing=spacing),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(_run("euler_ancestral", s, 15, eta=0.0, spacing=spacing),
                               _run("euler", s, 15, spacing=spacing), atol=1e-5, rtol=0)
    # same mean and variance per step, and the same noise draws in the same order
    torch.testing.assert_close(_run("euler_ancestral", s, 15, spacing=spacing),
                               _run("ddim", s, 15, eta=1.0, spacing=spacing), atol=1e-4, rtol=0)


def test_dpmpp_2m_sde_reduces_to_its_ode_and_its_first_step_is_ddim_eta_1(schedulers):
    s = schedulers["cosine"]
    assert torch.equal(_run("dpmpp_2m_sde", s, 12, eta=0.0), _run("dpmpp_2m", s, 12))
    # with 2 steps only the first (first-order) step and the final denoise run
    torch.testing.assert_close(_run("dpmpp_2m_sde", s, 2), _run("ddim", s, 2, eta=1.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(_run("dpmpp_2m", s, 2), _run("ddim", s, 2), atol=1e-5, rtol=0)


def test_unic_weights_solve_the_order_conditions():
    # small h: the corrector tends to the 3rd-order Adams-Moulton weights (5/12, 8/12, -1/12)
    rho_1, rho_t = unic_weights(1e-4, -1.0)
    assert rho_1 == pytest.approx(1 / 12, abs=1e-4) and rho_t == pytest.approx(5 / 12, abs=1e-4)
    # any h, r1: the 2x2 system R rho = b of Zhao et al. 2023 (B(h) = e^{-h} - 1)
    for h, r1 in [(0.3, -0.7), (1.5, -0.2), (0.05, -2.0)]:
        rho_1, rho_t = unic_weights(h, r1)
        hh, bh = -h, math.expm1(-h)
        g1 = bh / hh - 1
        b = (g1 / bh, 2 * (g1 / hh - 0.5) / bh)
        assert rho_1 + rho_t == pytest.approx(b[0], rel=1e-12)
        assert r1 * rho_1 + rho_t == pytest.approx(b[1], rel=1e-12)
