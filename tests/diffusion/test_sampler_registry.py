"""The sampler registry: names, the shared signature, option checks, timestep grids, call counts."""

import inspect

import numpy as np
import pytest
import torch

from dalle2_pytorch.diffusion import (
    SAMPLERS,
    Inpaint,
    NoiseScheduler,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    get_sampler,
    sample,
    sampler_info,
    sampler_names,
)
from dalle2_pytorch.diffusion.samplers import karras_timesteps, sampling_timesteps
from dalle2_pytorch.diffusion.samplers.spacing import leading_timesteps, linspace_timesteps, trailing_timesteps
from dalle2_pytorch.diffusion.samplers.closed_form import GaussianData

ALL = sampler_names()
FEW_STEP = tuple(n for n in ALL if n != "ddpm")  # every sampler that takes a step count
MULTISTEP = tuple(n for n in ALL if n not in ("ddpm", "ddim"))
DATA = GaussianData()

SHARED_SIGNATURE = [
    ("denoise", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
    ("shape", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
    ("scheduler", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
    ("steps", inspect.Parameter.KEYWORD_ONLY, None),
    ("generator", inspect.Parameter.KEYWORD_ONLY, None),
    ("device", inspect.Parameter.KEYWORD_ONLY, None),
    ("dtype", inspect.Parameter.KEYWORD_ONLY, torch.float32),
    ("x_T", inspect.Parameter.KEYWORD_ONLY, None),
    ("self_condition", inspect.Parameter.KEYWORD_ONLY, False),
    ("inpaint", inspect.Parameter.KEYWORD_ONLY, None),
    ("callback", inspect.Parameter.KEYWORD_ONLY, None),
    ("eta", inspect.Parameter.KEYWORD_ONLY, None),
    ("spacing", inspect.Parameter.KEYWORD_ONLY, None),
    ("karras", inspect.Parameter.KEYWORD_ONLY, False),
]


@pytest.fixture(scope="module")
def scheduler():
    return NoiseScheduler(beta_schedule="cosine", timesteps=100)


def test_registry_holds_the_issue_samplers_in_order():
    assert ALL == ("ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "unipc", "euler", "euler_ancestral", "heun")
    assert tuple(SAMPLERS) == ALL
    assert get_sampler("ddpm") is ddpm_sample and get_sampler("ddim") is ddim_sample
    with pytest.raises(TypeError):
        SAMPLERS["mine"] = ddim_sample  # read-only: new samplers go through registry.py


@pytest.mark.parametrize("name", ALL)
def test_every_sampler_has_the_one_shared_signature(name):
    params = inspect.signature(get_sampler(name)).parameters
    assert [(p.name, p.kind, p.default) for p in params.values()] == SHARED_SIGNATURE


@pytest.mark.parametrize("bad", ["dpm++", "DDIM", "", None, 3])
def test_unknown_name_lists_the_valid_ones(bad):
    with pytest.raises(ValueError, match="unknown sampler .*choose one of: ddpm, ddim, dpmpp_2m, dpmpp_2m_sde, unipc"):
        get_sampler(bad)


@pytest.mark.parametrize("name", FEW_STEP)
@pytest.mark.parametrize("steps,message", [
    (0, "positive integer"), (-3, "positive integer"), (2.5, "positive integer"), (10.0, "positive integer"),
    (True, "positive integer"), ("10", "positive integer"), (101, "cannot sample with 101 steps from a 100-step"),
])
def test_bad_steps_are_one_clear_error(scheduler, name, steps, message):
    with pytest.raises(ValueError, match=message):
        get_sampler(name)(DATA.denoiser(scheduler), (2, 3), scheduler, steps=steps)


def test_ddpm_takes_only_all_steps_and_no_spacing(scheduler):
    den = DATA.denoiser(scheduler)
    with pytest.raises(ValueError, match="ddpm runs all 100 trained steps; got steps=10"):
        ddpm_sample(den, (2, 3), scheduler, steps=10)
    for kw in (dict(spacing="trailing"), dict(spacing="linspace"), dict(karras=True)):
        with pytest.raises(ValueError, match="ddpm visits every trained timestep"):
            ddpm_sample(den, (2, 3), scheduler, **kw)
    with pytest.raises(ValueError, match="ddpm sampler takes no eta=0.5"):
        ddpm_sample(den, (2, 3), scheduler, eta=0.5)
    assert ddpm_sample(den, (2, 3), scheduler, steps=100, eta=1.0).shape == (2, 3)


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc", "euler", "heun"])
def test_deterministic_solvers_refuse_eta(scheduler, name):
    den = DATA.denoiser(scheduler)
    with pytest.raises(ValueError, match=f"the {name} sampler takes no eta=0.3"):
        get_sampler(name)(den, (2, 3), scheduler, steps=5, eta=0.3)
    assert get_sampler(name)(den, (2, 3), scheduler, steps=5, eta=0).shape == (2, 3)


@pytest.mark.parametrize("name", FEW_STEP)
@pytest.mark.parametrize("eta", [-0.1, float("nan"), "1"])
def test_invalid_eta(scheduler, name, eta):
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        get_sampler(name)(DATA.denoiser(scheduler), (2, 3), scheduler, steps=5, eta=eta)


@pytest.mark.parametrize("name", FEW_STEP)
def test_spacing_options_are_checked(scheduler, name):
    den = DATA.denoiser(scheduler)
    fn = get_sampler(name)
    with pytest.raises(ValueError, match="unknown timestep spacing 'uniform'; choose one of: linspace, leading, trailing"):
        fn(den, (2, 3), scheduler, steps=5, spacing="uniform")
    with pytest.raises(ValueError, match="cannot be combined with spacing='trailing'"):
        fn(den, (2, 3), scheduler, steps=5, spacing="trailing", karras=True)
    with pytest.raises(ValueError, match="karras must be True or False"):
        fn(den, (2, 3), scheduler, steps=5, karras="yes")


@pytest.mark.parametrize("name", MULTISTEP)
def test_inpainting_is_refused_by_the_samplers_where_repaint_is_not_exact(scheduler, name):
    inpaint = Inpaint(image=torch.zeros(1, 3, 4, 4), mask=torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match=f"not supported by the {name} sampler.*use one of ddpm, ddim"):
        get_sampler(name)(DATA.denoiser(scheduler), (1, 3, 4, 4), scheduler, steps=5, inpaint=inpaint)
    assert not sampler_info(name).supports_inpaint
    assert sampler_info("ddpm").supports_inpaint and sampler_info("ddim").supports_inpaint


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("steps", [1, 2, 7, 100])
def test_network_calls_are_as_documented(scheduler, name, steps):
    if name == "ddpm" and steps != 100:
        return
    calls = []
    get_sampler(name)(DATA.denoiser(scheduler, calls=calls), (2, 3), scheduler, steps=steps,
                      generator=torch.Generator().manual_seed(0))
    assert len(calls) == sampler_info(name).network_calls(steps) == (2 * steps - 1 if name == "heun" else steps)
    grid = sampling_timesteps(scheduler, steps)
    visited = [t for t, _ in calls]
    assert sorted(set(visited), reverse=True) == grid  # every grid timestep, nothing else
    assert visited == sorted(visited, reverse=True)


@pytest.mark.parametrize("name", ALL)
def test_same_generator_seed_same_samples_different_seed_different(scheduler, name):
    def run(seed):
        return get_sampler(name)(DATA.denoiser(scheduler), (4, 3), scheduler, steps=None if name == "ddpm" else 6,
                                 generator=torch.Generator().manual_seed(seed))

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the initial noise comes from the generator too


@pytest.mark.parametrize("name", ALL)
def test_callback_reports_every_step(scheduler, name):
    seen = []
    steps = 100 if name == "ddpm" else 4
    get_sampler(name)(DATA.denoiser(scheduler), (1, 2), scheduler, steps=steps,
                      callback=lambda i, n, t, x, x0: seen.append((i, n, t, x.shape, x0.shape)))
    grid = list(range(99, -1, -1)) if name == "ddpm" else sampling_timesteps(scheduler, steps)
    assert [s[:3] for s in seen] == [(i, steps, t) for i, t in enumerate(grid)]
    assert all(s[3] == s[4] == (1, 2) for s in seen)


def test_sample_dispatch_keeps_the_reference_rule(scheduler):
    calls = []
    sample(DATA.denoiser(scheduler, calls=calls), (1, 2), scheduler, steps=7)
    assert len(calls) == 7  # ddim
    calls.clear()
    sample(DATA.denoiser(scheduler, calls=calls), (1, 2), scheduler, eta=0.7)
    assert len(calls) == 100  # ddpm; the configured DDIM eta is not passed to it
    calls.clear()
    sample(DATA.denoiser(scheduler, calls=calls), (1, 2), scheduler, steps=100, use_ddim=True)
    assert len(calls) == 100 and all(sc is None for _, sc in calls)


def test_sample_by_name(scheduler):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    den = DATA.denoiser(scheduler)
    for name in FEW_STEP:
        by_name = sample(den, (3, 2), scheduler, sampler=name, steps=6, generator=g())
        direct = get_sampler(name)(den, (3, 2), scheduler, steps=6, generator=g())
        assert torch.equal(by_name, direct)
    with pytest.raises(ValueError, match="unknown sampler 'fast'"):
        sample(den, (3, 2), scheduler, sampler="fast", steps=6)
    with pytest.raises(ValueError, match="use_ddim only applies when sampler is None"):
        sample(den, (3, 2), scheduler, sampler="unipc", steps=6, use_ddim=True)
    with pytest.raises(ValueError, match="takes no eta"):
        sample(den, (3, 2), scheduler, sampler="unipc", steps=6, eta=1.0)


# ---------------------------------------------------------------------------------- timestep grids
def _tie(value: float) -> bool:
    return abs(value - np.floor(value) - 0.5) < 1e-6


@pytest.mark.parametrize("T", [10, 50, 1000])
def test_spacings_follow_diffusers_definitions(T):
    counts = range(1, T + 1) if T <= 50 else [*range(1, 60), *range(60, T, 37), 103, 199, T]
    for n in counts:
        lin, lead, trail = linspace_timesteps(T, n), leading_timesteps(T, n), trailing_timesteps(T, n)
        assert lin == ddim_timesteps(T, n)  # DDIM's grid is unchanged
        assert lead == [k * (T // n) for k in range(n - 1, -1, -1)]
        for seq in (lin, lead, trail):
            assert len(seq) == n and all(a > b for a, b in zip(seq, seq[1:])) and seq[-1] >= 0 and seq[0] <= T - 1
        assert lin[0] == trail[0] == T - 1 and lead[-1] == 0 and (n == 1 or lin[-1] == 0)
        # diffusers' float formulas agree wherever they do not land on a tie x.5 (and for one
        # step its linspace is [0], ours [T - 1], as DDIM's has always been)
        ref_lin = np.linspace(0, T - 1, n)[::-1]
        assert n == 1 or all(a == int(np.round(r)) for a, r in zip(lin, ref_lin) if not _tie(r))
        ref_trail = np.arange(T, 0, -T / n)[:n]
        assert all(a == int(np.round(r)) - 1 for a, r in zip(trail, ref_trail) if not _tie(r))


def test_spacing_examples():
    s = NoiseScheduler(timesteps=1000)
    assert sampling_timesteps(s, 10) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert sampling_timesteps(s, 10, spacing="leading") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert sampling_timesteps(s, 10, spacing="trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert sampling_timesteps(s, None) == list(range(999, -1, -1))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_karras_grid_is_distinct_trained_timesteps_near_the_karras_sigmas(schedule):
    s = NoiseScheduler(beta_schedule=schedule, timesteps=1000)
    abar = s.alphas_cumprod.double()
    log_sigma = 0.5 * (torch.log1p(-abar) - torch.log(abar))
    for n in (1, 2, 5, 10, 25, 80, 500, 1000):
        grid = karras_timesteps(s, n)
        assert grid == sampling_timesteps(s, n, karras=True)
        assert len(grid) == n and grid[0] == 999 and all(a > b for a, b in zip(grid, grid[1:]))
        assert n == 1 or grid[-1] == 0
    # each timestep is the one nearest (in log sigma) to Karras et al.'s eq. 5 sigma, or, where that
    # one is taken already (the cosine schedule's last 5 timesteps span sigma 160 .. 2e4), the next free one
    n, rho = 25, 7.0
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    smax, smin = log_sigma[-1].exp(), log_sigma[0].exp()
    target = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    nearest = (target.log()[:, None] - log_sigma[None]).abs().argmin(1).tolist()
    grid = karras_timesteps(s, n)
    assert grid[0] == nearest[0] == 999
    for i in range(1, n):
        assert grid[i] == (nearest[i] if nearest[i] < grid[i - 1] else grid[i - 1] - 1)
    moved = sum(a != b for a, b in zip(grid, nearest))
    assert moved == (15 if schedule == "cosine" else 0)
    assert karras_timesteps(s, 1000) == list(range(999, -1, -1))
