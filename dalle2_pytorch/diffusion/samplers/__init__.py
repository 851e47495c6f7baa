"""Samplers shared by the diffusion prior and every decoder stage, by name.

One function per sampler, all with the shared signature documented in :mod:`.base`; the registry
(:mod:`.registry`) maps names to them and :func:`sample` runs one by name.

| name | file | calls for `steps` | notes |
|---|---|---|---|
| ``ddpm`` | ddpm.py | T | ancestral, learned variance, RePaint |
| ``ddim`` | ddim.py | steps | eta, RePaint |
| ``dpmpp_2m`` / ``dpmpp_2m_sde`` | dpm_solver.py | steps | DPM-Solver++(2M) ODE / SDE |
| ``unipc`` | unipc.py | steps | UniPC-2 bh2 with corrector |
| ``euler`` / ``euler_ancestral`` / ``heun`` | karras.py | steps / steps / 2 steps - 1 | EDM sigmas |

Timestep spacings (``linspace`` / ``leading`` / ``trailing``) and Karras sigmas: :mod:`.spacing`.
"""

from dalle2_pytorch.diffusion.samplers.base import (
    INPAINT_SAMPLERS,
    Denoiser,
    Inpaint,
    ModelPrediction,
    Sampler,
    SamplerCallback,
)
from dalle2_pytorch.diffusion.samplers.ddim import ddim_sample
from dalle2_pytorch.diffusion.samplers.ddpm import ddpm_sample
from dalle2_pytorch.diffusion.samplers.dpm_solver import dpmpp_2m, dpmpp_2m_sde
from dalle2_pytorch.diffusion.samplers.karras import euler, euler_ancestral, heun
from dalle2_pytorch.diffusion.samplers.registry import (
    SAMPLERS,
    SamplerInfo,
    get_sampler,
    parse_sampler,
    sample,
    sampler_info,
    sampler_names,
)
from dalle2_pytorch.diffusion.samplers.spacing import (
    SPACINGS,
    ddim_timesteps,
    karras_timesteps,
    sampling_timesteps,
)
from dalle2_pytorch.diffusion.samplers.unipc import unipc

__all__ = [
    "INPAINT_SAMPLERS",
    "SAMPLERS",
    "SPACINGS",
    "Denoiser",
    "Inpaint",
    "ModelPrediction",
    "Sampler",
    "SamplerCallback",
    "SamplerInfo",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "euler",
    "euler_ancestral",
    "get_sampler",
    "heun",
    "karras_timesteps",
    "parse_sampler",
    "sample",
    "sampler_info",
    "sampler_names",
    "sampling_timesteps",
    "unipc",
]
