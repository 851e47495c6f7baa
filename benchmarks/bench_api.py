"""Times our public API against the reference `dalle2-pytorch` 1.15.6 on the same work.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_api.py                         # ours only
    .venv/bin/python benchmarks/bench_api.py --reference-python /tmp/refvenv/bin/python
    .venv/bin/python benchmarks/bench_api.py --quick                 # smoke test, < 1 min

Workloads (CPU, float32; sizes in `workloads.SIZES`): prior network forward and guided forward,
prior training step (`DiffusionPrior.forward` + backward), prior DDIM sampling, decoder Unet
forward, guided forward and training step (forward + MSE + backward), decoder DDIM sampling.

How it works: a `setup` worker (the reference interpreter when given, else ours) builds the models
with a fixed seed and saves their state dicts and the inputs; every workload then runs in a fresh
worker process per side (`workloads.py run`; with `--quick` one worker per side runs them all), which
loads the same weights (ours through
`dalle2_pytorch.compat`), runs `--warmup` untimed and `--repeats` timed calls and saves the outputs.
Our worker compares its outputs with the reference's (max abs diff; relative = abs diff / max |ref|).
With `--rounds R` the two sides alternate R times (order flipped each round) so that load changes on
a shared machine hit both; the table shows the median over all timed calls and the min–max spread.
On a loaded machine prefer `--threads 1 --metric cpu` (process CPU time of one thread): with two
OpenMP threads every parallel region waits for a descheduled thread, which inflates wall times by
several times and penalises whichever side launches more (small) operations.

The parent process needs only the standard library; the workers need torch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workload_names import SAMPLING_WORKLOADS, WORKLOADS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "workloads.py"
DEFAULT_OURS_PYTHON = REPO / ".venv" / "bin" / "python"
# Why a diff is expected (or not comparable) for some workloads.
NOTES = {
    "prior_train_step": "same seed; loss + grads compared",
    "prior_sample_ddim": "DDIM differs on purpose (ref: 63 net calls for 64 steps, off-by-one alpha_bar, eta 1)",
    "unet_train_step": "loss + all grads compared",
    "decoder_sample_ddim": "different DDIM timestep grid; ours clamps the output",
}


def worker_env(side: str, threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               WANDB_MODE="offline", TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    if side == "ours":
        env["PYTHONPATH"] = str(REPO)  # the repository's package, whatever is installed
    return env


def run_worker(python: str, side: str, command: str, workdir: Path, args: argparse.Namespace,
               workloads: list[str] | None = None, tag: str = "r0") -> None:
    cmd = [python, str(WORKER), command, "--side", side, "--workdir", str(workdir), "--size", args.size]
    if command == "run":
        cmd += ["--workloads", ",".join(workloads or []), "--threads", str(args.threads), "--warmup",
                str(args.warmup), "--repeats", str(args.repeats), "--tag", tag, "--compare"]
        if args.profile:
            cmd += ["--profile", str(args.profile)]
    # cwd = the work directory, so the reference interpreter cannot pick up the repository's package
    proc = subprocess.run(cmd, cwd=workdir, env=worker_env(side, args.threads), capture_output=True, text=True)
    if args.verbose or args.profile:
        sys.stderr.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"{side} worker failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def collect(workdir: Path, side: str, name: str, metric: str = "wall") -> dict | None:
    files = sorted(workdir.glob(f"{side}_{name}.r*.json"))
    if not files:
        return None
    results = [json.loads(f.read_text()) for f in files]
    times = [t for r in results for t in r["cpu_ms" if metric == "cpu" else "times_ms"]]
    diff = next((r["diff"] for r in results if "diff" in r), None)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times),
            "round_medians": [statistics.median(r["cpu_ms" if metric == "cpu" else "times_ms"]) for r in results],
            "diff": diff, "notes": results[0].get("notes", [])}


def fmt_time(r: dict | None) -> str:
    if r is None:
        return "–"
    return f"{r['median']:.1f} ({r['min']:.1f}–{r['max']:.1f})"


def fmt_diff(d: dict | None) -> str:
    if not d:
        return "–"
    if "error" in d:
        return d["error"]
    if d.get("keys", 0) == 0:
        return "no shared outputs"
    extra = f", {d['keys']} tensors" if d["keys"] > 1 else ""
    return f"{d['max_abs']:.2e} (rel {d['max_rel']:.1e}{extra})"


def table(workdir: Path, workloads: list[str], with_ref: bool, metric: str = "wall") -> str:
    unit = "ms CPU" if metric == "cpu" else "ms"
    lines = [f"| workload | ours ({unit}) | reference ({unit}) | speedup | max abs diff (rel) | note |",
             "|---|---:|---:|---:|---|---|"]
    for name in workloads:
        ours, ref = collect(workdir, "ours", name, metric), collect(workdir, "reference", name, metric)
        speed = f"{ref['median'] / ours['median']:.2f}×" if ours and ref else "–"
        note = NOTES.get(name, "") if with_ref else ""
        diff = "n/a (time only)" if name in SAMPLING_WORKLOADS and ref else fmt_diff(ours["diff"] if ours else None)
        lines.append(f"| {name} | {fmt_time(ours)} | {fmt_time(ref)} | {speed} | {diff} | {note} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference-python", help="interpreter with dalle2-pytorch 1.15.6 (omit: ours only)")
    p.add_argument("--ours-python", default=str(DEFAULT_OURS_PYTHON) if DEFAULT_OURS_PYTHON.exists() else sys.executable)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in the workers (default 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per workload (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per workload and round (default 3)")
    p.add_argument("--rounds", type=int, default=1, help="alternate ours/reference this many times")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    p.add_argument("--quick", action="store_true",
                   help="small sizes, 1 warm-up + 1 timed call, one worker process per side (< 1 min)")
    p.add_argument("--workdir", type=Path, help="keep weights / outputs / results here (default: temp dir)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS", help="print torch.profiler tables, no timing")
    p.add_argument("--json", type=Path, help="also write the aggregated results as JSON")
    p.add_argument("--metric", choices=("wall", "cpu", "both"), default="wall",
                   help="table of wall-clock times, of process CPU times (all threads; steadier on a loaded "
                        "machine), or both tables")
    p.add_argument("-v", "--verbose", action="store_true", help="echo the workers' output")
    args = p.parse_args(argv)
    args.size = "quick" if args.quick else "full"
    args.warmup = args.warmup if args.warmup is not None else 1
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        raise SystemExit(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dalle2_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*_*.r*.json"):
        stale.unlink()
    sides = [("ours", args.ours_python)] + ([("reference", args.reference_python)] if args.reference_python else [])
    load_before, t_start = load_average(), time.time()
    try:
        builder = sides[-1]  # the reference builds the weights when it is there
        run_worker(builder[1], builder[0], "setup", workdir, args)
        groups = [workloads] if args.quick else [[w] for w in workloads]
        for r in range(args.rounds):
            order = sides[::-1] if r % 2 == 0 else sides  # reference first in round 0: ours compares
            for group in groups:
                for side, python in order:
                    run_worker(python, side, "run", workdir, args, group, tag=f"r{r}")
        if args.profile:
            return 0
        header = (f"threads={args.threads} warmup={args.warmup} repeats={args.repeats} rounds={args.rounds} "
                  f"size={args.size}; load average before: {load_before}, after: {load_average()}; "
                  f"wall {time.time() - t_start:.0f} s")
        print(header)
        for metric in ("wall", "cpu") if args.metric == "both" else (args.metric,):
            print(table(workdir, workloads, bool(args.reference_python), metric))
        notes = sorted({n for w in workloads for side in ("ours", "reference")
                        if (c := collect(workdir, side, w)) for n in c["notes"]})
        for n in notes:
            print(f"note: {n}")
        if args.json:
            data = {w: {s: {m: collect(workdir, s, w, m) for m in ("wall", "cpu")} for s, _ in sides}
                    for w in workloads}
            args.json.write_text(json.dumps({"header": header, "results": data}, indent=1))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
