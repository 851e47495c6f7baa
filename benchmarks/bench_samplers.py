"""Sampler accuracy on the closed-form Gaussian problem: a markdown table for every registry name.

Data x_0 ~ N(0.3, 0.5^2) with its exact denoiser, T = 1000 (cosine and linear schedules).
Deterministic samplers are compared with the exact probability-flow ODE solution from the same
(moment-matched) x_T, so their errors carry no Monte-Carlo noise; stochastic ones (ddpm, ddim with
eta > 0, euler_ancestral, dpmpp_2m_sde) by the mean and std of a large batch against the exact
target distribution (Monte-Carlo noise about 0.5 / sqrt(batch)). See
`dalle2_pytorch/diffusion/samplers/closed_form.py`.

    .venv/bin/python benchmarks/bench_samplers.py                # ~10 s of CPU time on one core
    .venv/bin/python benchmarks/bench_samplers.py --karras       # Karras sigma spacing
    .venv/bin/python benchmarks/bench_samplers.py --spacing trailing --schedules linear
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from dalle2_pytorch.diffusion import NoiseScheduler, sampler_info, sampler_names
from dalle2_pytorch.diffusion.samplers.closed_form import GaussianData, sampler_error

STEPS = (10, 20, 40, 80)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(x: float) -> str:
    return f"{x:.1e}"


def rows(schedule: str, args: argparse.Namespace) -> list[str]:
    scheduler = NoiseScheduler(beta_schedule=schedule, timesteps=1000)
    data = GaussianData(mean=0.3, std=0.5)
    out = []
    runs = [(name, {}) for name in sampler_names()]
    runs.insert(2, ("ddim", {"eta": 1.0}))
    for name, kw in runs:
        stochastic = sampler_info(name).stochastic if "eta" not in kw else kw["eta"] > 0
        batch = args.ddpm_batch if name == "ddpm" else args.stochastic_batch if stochastic else args.batch
        label = name + (f" (eta={kw['eta']:g})" if kw else "")
        if name == "ddpm":
            e = sampler_error(name, scheduler, None, data=data, batch=batch)
            out.append(f"| {label} | {schedule} | {e.calls} | " + " | ".join(["—"] * 3 + [_fmt(e.mean_error)])
                       + " | " + " | ".join(["—"] * 3 + [_fmt(e.std_error)]) + " | — |")
            continue
        kw = dict(kw, spacing=args.spacing, karras=args.karras)
        errs = [sampler_error(name, scheduler, n, data=data, batch=batch, seed=n, **kw) for n in STEPS]
        calls = "/".join(str(e.calls) for e in errs)
        ratio = errs[1].std_error / errs[2].std_error
        out.append(f"| {label} | {schedule} | {calls} | " + " | ".join(_fmt(e.mean_error) for e in errs)
                   + " | " + " | ".join(_fmt(e.std_error) for e in errs) + f" | {ratio:.2f} |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", default="cosine,linear", help="comma-separated beta schedules")
    parser.add_argument("--spacing", default=None, choices=("linspace", "leading", "trailing"))
    parser.add_argument("--karras", action="store_true", help="Karras et al. 2022 sigma spacing")
    parser.add_argument("--batch", type=int, default=4096, help="batch of the deterministic samplers")
    parser.add_argument("--stochastic-batch", type=int, default=100_000, help="batch of the stochastic samplers")
    parser.add_argument("--ddpm-batch", type=int, default=20_000, help="batch of ddpm (1000 steps)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start, cpu_start = time.perf_counter(), time.process_time()
    grid = "karras sigmas" if args.karras else f"{args.spacing or 'linspace'} spacing"
    print(f"Gaussian data N(0.3, 0.5^2), exact denoiser, T = 1000, {grid}; "
          f"batch {args.batch} (deterministic) / {args.stochastic_batch} (stochastic) / {args.ddpm_batch} (ddpm)\n")
    print("| sampler | schedule | network calls | mean err 10 | 20 | 40 | 80 | std err 10 | 20 | 40 | 80 | std ratio 20→40 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for schedule in args.schedules.split(","):
        for row in rows(schedule.strip(), args):
            print(row, flush=True)
    print(f"\n{_cpu_name()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu_start:.1f} s CPU")


if __name__ == "__main__":
    main()
