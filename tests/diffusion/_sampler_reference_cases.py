"""Seeded DDPM / DDIM runs whose outputs are pinned in a fixture file.

The fixture `tests/fixtures/samplers/ddpm_ddim_reference.safetensors` was written by running this
module (``python tests/diffusion/_sampler_reference_cases.py``) against the single-file
`diffusion/samplers.py` of commit a1c8252, before the samplers became a registry package.
`test_sampler_reference_outputs.py` replays every case with the current code and requires the
same outputs to float rounding: bit for bit on the machine that recorded them, within 1e-6 on others
(CPUs with other vector units run other torch kernels: an AMD EPYC with AVX-512 differed by at most
3.3e-7 on 2026-12-06, where any change to a sampler's formula moves the outputs by orders of
magnitude more). DDPM and DDIM must not change when samplers are added.

The toy denoiser is deliberately nonlinear (tanh), uses the self-conditioning input and, for the
learned-variance cases, returns a per-element log-variance, so every branch of the two samplers
matters. It accepts an optional fourth argument so it fits both the old denoiser protocol
``(x_t, t, x_self_cond, cond_scale)`` and the new one ``(x_t, t, x_self_cond)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dalle2_pytorch.diffusion import Inpaint, ModelPrediction, NoiseScheduler, ddim_sample, ddpm_sample, extract, sample

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "samplers" / "ddpm_ddim_reference.safetensors"

MU, S = 0.3, 0.5


def toy_denoiser(scheduler: NoiseScheduler, *, learned_variance: bool = False):
    """A nonlinear x_0 predictor: tanh of the Gaussian posterior mean, nudged by the self-condition."""

    def denoise(x_t, t, x_self_cond, cond_scale=None):
        ab = extract(scheduler.alphas_cumprod, t, x_t.shape)
        gain = ab.sqrt() * S**2 / (ab * S**2 + 1 - ab)
        x_start = torch.tanh(MU + gain * (x_t - ab.sqrt() * MU))
        if x_self_cond is not None:
            x_start = x_start + 0.1 * x_self_cond
        log_var = None
        if learned_variance:
            log_var = scheduler.learned_log_variance(0.5 * torch.tanh(x_t), t)
        return ModelPrediction(x_start=x_start, log_variance=log_var)

    return denoise


@dataclass
class Case:
    sampler: str  # "ddpm", "ddim" or "sample" (the step-count dispatch)
    shape: tuple[int, ...]
    timesteps: int = 50
    schedule: str = "cosine"
    seed: int = 0
    kwargs: dict = field(default_factory=dict)
    learned_variance: bool = False
    inpaint_resample: int = 0  # > 0: RePaint inpainting with this many resamples


VEC, IMG = (4, 6), (2, 3, 4, 4)

CASES: dict[str, Case] = {
    "ddpm_vec": Case("ddpm", VEC, seed=0),
    "ddpm_vec_linear": Case("ddpm", VEC, schedule="linear", seed=1),
    "ddpm_vec_selfcond": Case("ddpm", VEC, seed=2, kwargs=dict(self_condition=True)),
    "ddpm_img_learned_var": Case("ddpm", IMG, seed=3, learned_variance=True),
    "ddpm_img_inpaint": Case("ddpm", IMG, timesteps=20, seed=4, inpaint_resample=3),
    "ddim_vec_eta0": Case("ddim", VEC, seed=5, kwargs=dict(steps=10, eta=0.0)),
    "ddim_vec_eta05": Case("ddim", VEC, seed=6, kwargs=dict(steps=10, eta=0.5)),
    "ddim_vec_allsteps": Case("ddim", VEC, seed=7, kwargs=dict(steps=50, eta=0.0)),
    "ddim_vec_selfcond_eta05": Case("ddim", VEC, seed=8, kwargs=dict(steps=7, eta=0.5, self_condition=True)),
    "ddim_img_eta0": Case("ddim", IMG, seed=9, kwargs=dict(steps=10, eta=0.0)),
    "ddim_img_selfcond": Case("ddim", IMG, seed=10, kwargs=dict(steps=10, eta=0.0, self_condition=True)),
    "ddim_img_learned_var_eta05": Case("ddim", IMG, seed=11, learned_variance=True, kwargs=dict(steps=9, eta=0.5)),
    "ddim_img_inpaint_eta05": Case("ddim", IMG, timesteps=20, seed=12, inpaint_resample=2,
                                   kwargs=dict(steps=7, eta=0.5)),
    "sample_default_vec": Case("sample", VEC, seed=13),
    "sample_steps_vec": Case("sample", VEC, seed=14, kwargs=dict(steps=12)),
    "sample_steps_eta_img": Case("sample", IMG, seed=15, kwargs=dict(steps=12, eta=0.5, self_condition=True)),
}


def run_case(name: str) -> torch.Tensor:
    """Runs case `name` with today's samplers; returns the final sample."""
    case = CASES[name]
    scheduler = NoiseScheduler(beta_schedule=case.schedule, timesteps=case.timesteps)
    kwargs = dict(case.kwargs)
    if case.inpaint_resample:
        g_img = torch.Generator().manual_seed(1000 + case.seed)
        image = torch.rand(case.shape, generator=g_img) * 2 - 1
        mask = torch.zeros(case.shape[0], 1, *case.shape[2:])
        mask[..., : case.shape[-1] // 2] = 1
        kwargs["inpaint"] = Inpaint(image=image, mask=mask, resample_times=case.inpaint_resample)
    fn = {"ddpm": ddpm_sample, "ddim": ddim_sample, "sample": sample}[case.sampler]
    denoise = toy_denoiser(scheduler, learned_variance=case.learned_variance)
    g = torch.Generator().manual_seed(case.seed)
    return fn(denoise, case.shape, scheduler, generator=g, **kwargs)


def main() -> None:
    from safetensors.torch import save_file

    outputs = {name: run_case(name).contiguous() for name in CASES}
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    save_file(outputs, str(FIXTURE), metadata={"written_by": "tests/diffusion/_sampler_reference_cases.py"})
    print(f"wrote {len(outputs)} cases to {FIXTURE}")


if __name__ == "__main__":
    main()
