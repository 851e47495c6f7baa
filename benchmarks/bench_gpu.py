"""GPU benchmark: the issue-11 training and sampling workloads, ours against the reference 1.15.6.

Usage (from the repository root)::

    python benchmarks/bench_gpu.py --device cuda --dtype bf16                        # ours only
    python benchmarks/bench_gpu.py --reference-python /tmp/refvenv/bin/python        # against the reference
    python benchmarks/bench_gpu.py --reference-path /tmp/ref --out /tmp/bench        # reference on a path
    python benchmarks/bench_gpu.py --quick --device cpu --dtype fp32                  # CPU smoke run, ~1 min

Workloads (`gpu_workloads.SIZES`; `--workloads` picks a subset):

| name | what is timed |
|---|---|
| `prior_train` | `DiffusionPrior.forward` + backward + AdamW step; LAION prior (dim 768, depth 12, 12 heads, NormFormer, 77 text tokens), batch 256 |
| `unet_laion_train` | `Decoder.forward` + backward + step; the LAION decoder v1.0.2 Unet (957 M, learned variance), 64 px, batch 32 |
| `unet188_train` | the same with a dim-128, mults 1-2-4-8 Unet (188 M, image-embedding conditioned), 64 px, batch 64 |
| `prior_sample` | `DiffusionPrior.p_sample_loop`, LAION prior, 64 DDIM steps, batch 64, guidance 2 |
| `decoder_sample` | `Decoder.sample`, the 188 M Unet, 64 DDIM steps, batch 16, guidance 3.5 |

Two long-lived worker processes (`gpu_workloads.py`), one per side, take turns workload by workload
(reference first), so each row of the table can be read as soon as its pair is done. Ours runs every
`--variants` entry (see `gpu_workloads.py` for the flags); the reference runs as it is. Every result
is printed as it finishes and appended to `OUT/bench_gpu.jsonl`, so a run stopped at a time limit
keeps what it measured; at the end the tables go to stdout and `OUT/bench_gpu.md`.

`--budget-s` stops starting new workloads and variants once that many seconds have passed.
The parent uses only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "gpu_workloads.py"
WORKLOADS = ("prior_train", "unet_laion_train", "unet188_train", "prior_sample", "decoder_sample")
TRAIN = {"prior_train", "unet_laion_train", "unet188_train"}
DEFAULT_VARIANTS = "eager,fused,casts,channels_last,compile"


class Worker:
    """One `gpu_workloads.py` process: JSON commands in, RESULT lines out."""

    def __init__(self, side: str, python: str, env: dict[str, str], args: argparse.Namespace) -> None:
        self.side, self.python, self.env, self.args = side, python, env, args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        a = self.args
        cmd = [self.python, str(WORKER), "--side", self.side, "--device", a.device, "--dtype", a.dtype,
               "--size", a.size, "--warmup", str(a.warmup), "--repeats", str(a.repeats),
               "--sample-repeats", str(a.sample_repeats), "--compile-backend", a.compile_backend]
        # cwd outside the repository: the reference interpreter must not find our package by accident
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env,
                                     cwd=tempfile.gettempdir(), bufsize=1)
        for line in self.proc.stdout:
            if line.startswith("READY "):
                info = json.loads(line[6:])
                print(f"[{self.side}] package {info['package']} {info['note']}".rstrip(), flush=True)
                return
            sys.stdout.write(f"[{self.side}] {line}")
        raise RuntimeError(f"the {self.side} worker exited before it was ready (rc {self.proc.wait()})")

    def run(self, command: dict) -> list[dict]:
        """Sends one workload; returns its results (an error result if the worker died)."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        results = []
        for line in self.proc.stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
                results.append(result)
                yield_result(result, self.args)
            elif line.strip() == "DONE":
                return results
            else:
                sys.stdout.write(f"[{self.side}] {line}")
        rc = self.proc.wait()
        result = {"side": self.side, "workload": command["workload"], "variant": "worker",
                  "error": f"the {self.side} worker died (exit code {rc}); see its output above"}
        yield_result(result, self.args)
        return results + [result]

    def close(self, force: bool = False) -> None:
        if force and self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def yield_result(result: dict, args: argparse.Namespace) -> None:
    """Appends one result to the JSONL file and prints it in one line."""
    with open(args.out / "bench_gpu.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print("  " + describe(result), flush=True)


def describe(r: dict) -> str:
    head = f"{r['workload']:<17} {r['side']:<9} {r.get('variant', ''):<22}"
    if "error" in r:
        return f"{head} ERROR {r['error'][:300]}"
    if "skipped" in r:
        return f"{head} skipped: {r['skipped']}"
    parts = [f"{r['step_ms']:9.1f} ms"]
    if r.get("tflops") is not None:
        parts.append(f"{r['tflops']:.4g} TFLOP/s")
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:5.1f} %")
    if r.get("peak_gb") is not None:
        parts.append(f"peak {r['peak_gb']:6.2f} GB")
    parts.append(f"first call {r.get('first_step_s', 0):.1f} s")
    return head + "  ".join(parts)


# ----------------------------------------------------------------------------- tables


def ok(r: dict) -> bool:
    return "error" not in r and "skipped" not in r and r.get("step_ms") is not None


def fmt_time(ms: float, workload: str) -> str:
    return f"{ms / 1e3:.3g} s" if workload not in TRAIN else f"{ms:.1f} ms"


def tables(results: list[dict]) -> str:
    by_w: dict[str, list[dict]] = {}
    for r in results:
        by_w.setdefault(r["workload"], []).append(r)
    lines = ["| workload | ours (variant) | reference | speed-up | MFU ours / ref | peak GB ours / ref | first call ours |",
             "|---|---|---|---|---|---|---|"]
    for w in [w for w in WORKLOADS if w in by_w]:
        rs = by_w[w]
        ours = [r for r in rs if r["side"] == "ours" and ok(r)]
        ref = next((r for r in rs if r["side"] == "reference" and ok(r)), None)
        best = min(ours, key=lambda r: r["step_ms"]) if ours else None
        cells = [w]
        cells.append(f"{fmt_time(best['step_ms'], w)} ({best['variant']})" if best else "–")
        cells.append(fmt_time(ref["step_ms"], w) if ref else "–")
        cells.append(f"{ref['step_ms'] / best['step_ms']:.2f}×" if best and ref else "–")
        mfu = lambda r: f"{100 * r['mfu']:.1f} %" if r and r.get("mfu") is not None else "–"  # noqa: E731
        cells.append(f"{mfu(best)} / {mfu(ref)}" if w in TRAIN else "")
        gb = lambda r: f"{r['peak_gb']:.1f}" if r and r.get("peak_gb") is not None else "–"  # noqa: E731
        ratio = f" ({best['peak_gb'] / ref['peak_gb']:.2f}×)" if best and ref and best.get("peak_gb") and ref.get("peak_gb") else ""
        cells.append(f"{gb(best)} / {gb(ref)}{ratio}")
        cells.append(f"{best['first_step_s']:.1f} s" if best else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| workload | side | variant | time | vs reference | TFLOP/s | MFU | peak GB | first call s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for w in [w for w in WORKLOADS if w in by_w]:
        ref = next((r for r in by_w[w] if r["side"] == "reference" and ok(r)), None)
        for r in by_w[w]:
            if not ok(r):
                why = r.get("error") or r.get("skipped") or "?"
                lines.append(f"| {w} | {r['side']} | {r.get('variant', '')} | {why[:120]} | | | | | |")
                continue
            vs = f"{ref['step_ms'] / r['step_ms']:.2f}×" if ref else "–"
            tf = f"{r['tflops']:.4g}" if r.get("tflops") is not None else "–"
            m = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "–"
            gb = f"{r['peak_gb']:.2f}" if r.get("peak_gb") is not None else "–"
            lines.append(f"| {w} | {r['side']} | {r['variant']} | {fmt_time(r['step_ms'], w)} | {vs} | {tf} | {m} | "
                         f"{gb} | {r.get('first_step_s', 0):.1f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def worker_env(side: str, reference_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    if side == "ours":
        path = [str(REPO)] + path  # the repository's package, whatever else is installed
    elif reference_path:
        path = [reference_path] + path
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 warm-up + 2 timed steps (CPU smoke run)")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"ours' variants, in order (default {DEFAULT_VARIANTS})")
    p.add_argument("--variants-for", action="append", default=[], metavar="WORKLOAD=V1,V2",
                   help="other variants for one workload (repeatable)")
    p.add_argument("--reference-python", help="interpreter that imports dalle2-pytorch 1.15.6")
    p.add_argument("--reference-path", help="directory holding dalle2-pytorch 1.15.6 (put first on its PYTHONPATH)")
    p.add_argument("--no-ours", action="store_true", help="run the reference only")
    p.add_argument("--ours-python", default=sys.executable)
    p.add_argument("--out", type=Path, help="results directory (default: a new temporary one)")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps (default 3, quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed training steps (default 10, quick 2)")
    p.add_argument("--sample-repeats", type=int, default=None, help="timed sampling runs (default 2, quick 1)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--budget-s", type=float, default=None, help="start nothing new after this many seconds")
    p.add_argument("--table-from", type=Path, metavar="JSONL",
                   help="only print (and write next to it) the tables of an earlier run's bench_gpu.jsonl")
    p.add_argument("--profile", default="", metavar="V1,V2",
                   help="variants (or 'reference') to profile for 2 steps after timing; tables go to OUT/profile.txt")
    args = p.parse_args(argv)
    args.size = "quick" if args.quick else "full"
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 10)
    args.sample_repeats = args.sample_repeats if args.sample_repeats is not None else (1 if args.quick else 2)
    args.workload_list = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(args.workload_list) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    args.variant_map = {w: [v for v in args.variants.split(",") if v] for w in WORKLOADS}
    for item in args.variants_for:
        w, _, vs = item.partition("=")
        if w not in WORKLOADS or not vs:
            p.error(f"--variants-for needs WORKLOAD=V1,V2 with a known workload, got {item!r}")
        args.variant_map[w] = [v for v in vs.split(",") if v]
    if args.reference_path and not args.reference_python:
        args.reference_python = sys.executable
    return args


class Stopped(Exception):
    """SIGTERM (e.g. `timeout`): stop the workers and keep what was measured."""


def _stop(signum, frame):  # pragma: no cover - signal handler
    raise Stopped()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_from:
        results = [json.loads(line) for line in args.table_from.read_text().splitlines() if line.strip()]
        table = tables(results)
        args.table_from.with_suffix(".md").write_text(table + "\n", encoding="utf-8")
        print(table)
        return 0
    signal.signal(signal.SIGTERM, _stop)
    args.out = args.out or Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + args.budget_s if args.budget_s else None
    workers = []
    if args.reference_python:
        workers.append(Worker("reference", args.reference_python, worker_env("reference", args.reference_path), args))
    if not args.no_ours:
        workers.append(Worker("ours", args.ours_python, worker_env("ours", None), args))
    print(f"bench_gpu: device {args.device}, {args.dtype}, size {args.size}, warm-up {args.warmup}, "
          f"{args.repeats} timed steps; results in {args.out}", flush=True)
    results: list[dict] = []
    stopped = False
    try:
        for w in args.workload_list:
            if deadline is not None and time.time() > deadline:
                for worker in workers:
                    r = {"side": worker.side, "workload": w, "variant": "-", "skipped": "time budget used up"}
                    yield_result(r, args)
                    results.append(r)
                continue
            profile = [v for v in args.profile.split(",") if v]
            for worker in workers:
                results += worker.run({"workload": w, "variants": args.variant_map[w], "deadline": deadline,
                                       "profile": profile, "profile_out": str(args.out / "profile.txt")})
    except (Stopped, KeyboardInterrupt):
        stopped = True
        print("bench_gpu: stopped; the results so far are in bench_gpu.jsonl", flush=True)
    finally:
        for worker in workers:
            worker.close(force=stopped)
    table = tables(results)
    (args.out / "bench_gpu.md").write_text(table + "\n", encoding="utf-8")
    print(f"\nbench_gpu done in {time.time() - start:.0f} s\n{table}", flush=True)
    return 0 if results and any(ok(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
