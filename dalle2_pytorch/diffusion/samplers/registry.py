"""The sampler registry: every sampler by name, and the one `sample` entry point.

A new sampler is one file in this package with a function of the shared signature
(:mod:`.base`) and one :class:`SamplerInfo` line in `_INFOS` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler
from dalle2_pytorch.diffusion.steps import check_steps, reference_sampler
from dalle2_pytorch.diffusion.samplers.base import INPAINT_SAMPLERS, Denoiser, Sampler
from dalle2_pytorch.diffusion.samplers.ddim import ddim_sample
from dalle2_pytorch.diffusion.samplers.ddpm import ddpm_sample
from dalle2_pytorch.diffusion.samplers.dpm_solver import dpmpp_2m, dpmpp_2m_sde
from dalle2_pytorch.diffusion.samplers.karras import euler, euler_ancestral, heun
from dalle2_pytorch.diffusion.samplers.spacing import SPACINGS
from dalle2_pytorch.diffusion.samplers.unipc import unipc

__all__ = ["SAMPLERS", "SamplerInfo", "get_sampler", "parse_sampler", "sample", "sampler_info", "sampler_names"]


@dataclass(frozen=True)
class SamplerInfo:
    """What a registered sampler is.

    Attributes:
        name: registry name.
        fn: the sampler function (shared signature).
        stochastic: draws noise at every step (with its default eta).
        calls_per_step: network calls per step; heun's last step makes one call, so its total is
            2 * steps - 1 (see :meth:`network_calls`).
        summary: one line for help texts.
    """

    name: str
    fn: Sampler
    stochastic: bool
    calls_per_step: int
    summary: str

    @property
    def supports_inpaint(self) -> bool:
        return self.name in INPAINT_SAMPLERS

    def network_calls(self, steps: int) -> int:
        """Denoiser calls for `steps` steps without inpainting."""
        return self.calls_per_step * steps - (self.calls_per_step - 1)


_INFOS = (
    SamplerInfo("ddpm", ddpm_sample, True, 1, "ancestral DDPM over all T steps (Ho et al. 2020); learned variances"),
    SamplerInfo("ddim", ddim_sample, False, 1, "DDIM (Song et al. 2021), eta 0 by default"),
    SamplerInfo("dpmpp_2m", dpmpp_2m, False, 1, "DPM-Solver++(2M), multistep 2nd order (Lu et al. 2022)"),
    SamplerInfo("dpmpp_2m_sde", dpmpp_2m_sde, True, 1, "SDE-DPM-Solver++(2M), stochastic (Lu et al. 2022)"),
    SamplerInfo("unipc", unipc, False, 1, "UniPC-2 bh2 predictor-corrector (Zhao et al. 2023)"),
    SamplerInfo("euler", euler, False, 1, "Euler on the EDM ODE (Karras et al. 2022)"),
    SamplerInfo("euler_ancestral", euler_ancestral, True, 1, "Euler ancestral, EDM sigmas (Karras et al. 2022)"),
    SamplerInfo("heun", heun, False, 2, "Heun 2nd order on the EDM ODE (Karras et al. 2022), 2*steps-1 calls"),
)

_BY_NAME: dict[str, SamplerInfo] = {info.name: info for info in _INFOS}

# name -> sampler function, read-only
SAMPLERS: Mapping[str, Sampler] = MappingProxyType({info.name: info.fn for info in _INFOS})


def sampler_names() -> tuple[str, ...]:
    """Every registered sampler name, in registry order."""
    return tuple(_BY_NAME)


def sampler_info(name: str) -> SamplerInfo:
    """The :class:`SamplerInfo` of `name`; ValueError listing the valid names if unknown."""
    if not isinstance(name, str) or name not in _BY_NAME:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def parse_sampler(spec: str) -> tuple[str, dict]:
    """A sampler spec -> (registry name, spacing options).

    A spec is a registry name, optionally with a timestep spacing after a colon: ``"ddim"``,
    ``"dpmpp_2m:trailing"``, ``"unipc:leading"``, ``"euler:karras"`` (Karras sigmas). This one string
    is what models, configs, `DALLE2` and `dream --sampler` take.
    """
    if not isinstance(spec, str):
        raise ValueError(f"a sampler must be a name such as 'dpmpp_2m' or 'dpmpp_2m:trailing', got {spec!r}")
    name, _, spacing = spec.partition(":")
    sampler_info(name)
    if not spacing:
        return name, {}
    if spacing == "karras":
        return name, {"karras": True}
    if spacing not in SPACINGS:
        raise ValueError(
            f"unknown timestep spacing {spacing!r} in sampler {spec!r}; choose one of: {', '.join((*SPACINGS, 'karras'))}"
        )
    return name, {"spacing": spacing}


def get_sampler(name: str) -> Sampler:
    """The sampler function registered as `name`; ValueError listing the valid names if unknown."""
    return sampler_info(name).fn


def sample(
    denoise: Denoiser,
    shape: tuple[int, ...],
    scheduler: NoiseScheduler,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    eta: float | None = None,
    use_ddim: bool | None = None,
    **kwargs,
) -> torch.Tensor:
    """Runs sampler `sampler` (a registry name) and returns x_0 (b, ...).

    `sampler` may carry a spacing (:func:`parse_sampler`). `sampler=None` keeps the reference-compatible rule: ddpm when `steps` is None or T (unless
    `use_ddim`), ddim otherwise; on that path `eta` is DDIM's (default 0) and is not passed to
    ddpm (callers hand their configured DDIM eta either way). With a name, `eta` goes to that
    sampler, which refuses values it cannot honour, and `use_ddim` must be None. Other keyword
    arguments are the shared signature's (:mod:`.base`).
    """
    if sampler is None:
        T = scheduler.num_timesteps
        if use_ddim is None:
            use_ddim = reference_sampler(check_steps(steps, T), T) == "ddim"
        if use_ddim:
            return ddim_sample(denoise, shape, scheduler, steps=steps, eta=0.0 if eta is None else eta, **kwargs)
        return ddpm_sample(denoise, shape, scheduler, steps=steps, **kwargs)
    if use_ddim is not None:
        raise ValueError(f"use_ddim only applies when sampler is None (got sampler={sampler!r})")
    name, options = parse_sampler(sampler)
    for key in options:
        if kwargs.get(key) not in (None, False):
            raise ValueError(f"sampler {sampler!r} sets {key}; do not pass {key}= as well")
    return get_sampler(name)(denoise, shape, scheduler, steps=steps, eta=eta, **{**kwargs, **options})
