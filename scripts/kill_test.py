#!/usr/bin/env python
"""Kill test: SIGKILL a tiny training run again and again; every restart must work with the same
command, and the finished run must be bit-identical to an uninterrupted one.

    python scripts/kill_test.py --kills 20 --out /tmp/kill_test            # the tiny decoder config
    python scripts/kill_test.py --kills 5 --out /tmp/kill_test --seed 3

What it does:

1. trains `train_configs/decoder_tiny_cpu.json` (checkpoints every 2 steps) uninterrupted to
   `--max-steps` (default: 2 per kill + 8) in `OUT/reference`;
2. starts the same command in `OUT/killed` and SIGKILLs it `--kills` times: most kills land a
   random 1-3 training steps (plus up to 0.3 s) after the previous start resumed; every fourth
   (`--aim-every`) is aimed at a checkpoint write (sent the moment a `step_*.tmp-*` folder appears);
3. runs the command once more to the end, and compares the final checkpoint (model and EMA weights,
   optimiser state, RNG states, counters) and the per-step training losses with the reference.

Prints one summary line and exits 0 only when there were no failed starts, no damaged checkpoint
and everything is bit-identical. Needs a source checkout (the shards in tests/fixtures/).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 7  # 56 training samples of the reference shards, batch 8


def command(run_dir: Path, max_steps: int) -> list[str]:
    epochs = max_steps // STEPS_PER_EPOCH + 2
    return [
        sys.executable, str(REPO / "train_decoder.py"),
        "--config_file", str(REPO / "train_configs" / "decoder_tiny_cpu.json"),
        "--override", f"data.webdataset_base_url={REPO}/tests/fixtures/reference_shards/{{}}.tar",
        "--override", f"tracker.data_path={run_dir}",
        "--override", "train.save_every_n_samples=16",
        "--override", f"train.epochs={epochs}",
        "--max-steps", str(max_steps), "--cpu",
    ]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONHASHSEED="0")


def _steps_logged(run_dir: Path) -> int:
    try:
        text = (run_dir / "metrics.jsonl").read_text()
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if '"train/loss"' in line)


def _temporary_checkpoint(run_dir: Path) -> bool:
    for folder in (run_dir / "checkpoints", run_dir):
        try:
            if any(".tmp-" in p.name for p in folder.iterdir()):
                return True
        except OSError:
            pass
    return False


def _equal(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def compare(reference: Path, killed: Path, step: int) -> dict[str, bool]:
    """Which parts of the final checkpoints (and the loss curves) are bit-identical."""
    from safetensors.torch import load_file

    from dalle2_pytorch.serialization import safe_torch_load

    a, b = (run / "checkpoints" / f"step_{step:08d}" for run in (reference, killed))
    state_a, state_b = (json.loads((p / "trainer_state.json").read_text()) for p in (a, b))
    ignore = ("metadata",)  # holds the config (with the run folder's path)
    return {
        "model weights": _equal(load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))),
        "EMA": _equal(load_file(str(a / "ema.safetensors")), load_file(str(b / "ema.safetensors"))),
        "optimizer": _equal(safe_torch_load(a / "optimizer.pt"), safe_torch_load(b / "optimizer.pt")),
        "RNG states": _equal(safe_torch_load(a / "rng.pt"), safe_torch_load(b / "rng.pt")),
        "counters": {k: v for k, v in state_a.items() if k not in ignore}
        == {k: v for k, v in state_b.items() if k not in ignore},
        "loss curve": _losses(reference) == _losses(killed),
    }


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [(r["step"], r["train/loss"]) for r in records if r.get("train/loss") is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--out", required=True, help="working folder (must not exist)")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--aim-every", type=int, default=4, help="every N-th kill is aimed at a checkpoint write")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        parser.error(f"--out {out} exists; give a new folder")
    out.mkdir(parents=True)
    max_steps = args.max_steps or 2 * args.kills + 8
    rng = random.Random(args.seed)
    log = open(out / "runs.log", "w", encoding="utf-8")

    started = time.monotonic()
    ref = subprocess.run(command(out / "reference", max_steps), stdout=log, stderr=subprocess.STDOUT, env=_env())
    if ref.returncode != 0:
        print(f"kill test: the uninterrupted run failed (exit {ref.returncode}); see {out / 'runs.log'}")
        return 1

    run = out / "killed"
    stats = {"kills": 0, "aimed": 0, "during_write": 0, "starts": 0, "failed_starts": 0, "finished_early": 0}
    while stats["kills"] < args.kills:
        aimed = stats["kills"] % args.aim_every == args.aim_every - 1
        log.write(f"\n=== start {stats['starts'] + 1} ({'aimed at a checkpoint write' if aimed else 'random'})\n")
        log.flush()
        before = _steps_logged(run)
        proc = subprocess.Popen(command(run, max_steps), stdout=log, stderr=subprocess.STDOUT, env=_env())
        stats["starts"] += 1
        target = before + rng.randint(1, 3)
        delay = rng.uniform(0.0, 0.3)
        while proc.poll() is None:
            if aimed and _steps_logged(run) > before and _temporary_checkpoint(run):
                break
            if not aimed and _steps_logged(run) >= target:
                time.sleep(delay)
                break
            time.sleep(0.002)
        if proc.poll() is not None:  # ended by itself
            if proc.returncode != 0:
                stats["failed_starts"] += 1
                print(f"kill test: a restart failed (exit {proc.returncode}); see {out / 'runs.log'}")
                return 1
            stats["finished_early"] += 1
            break
        during = _temporary_checkpoint(run)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stats["kills"] += 1
        stats["aimed"] += aimed
        stats["during_write"] += during
        log.write(f"=== SIGKILL {stats['kills']} at {_steps_logged(run)} logged steps"
                  f"{' (a temporary checkpoint folder existed)' if during else ''}\n")
    final = subprocess.run(command(run, max_steps), stdout=log, stderr=subprocess.STDOUT, env=_env())
    stats["starts"] += 1
    log.close()
    text = (out / "runs.log").read_text()
    damaged = text.count("skipping damaged checkpoint")
    if final.returncode != 0:
        print(f"kill test: the last restart failed (exit {final.returncode}); see {out / 'runs.log'}")
        return 1
    same = compare(out / "reference", run, max_steps)
    ok = all(same.values()) and damaged == 0 and stats["failed_starts"] == 0
    print(f"kill test: {stats['kills']} SIGKILLs of a {max_steps}-step tiny decoder run ({stats['aimed']} aimed at "
          f"checkpoint writes, {stats['during_write']} while a temporary checkpoint folder existed), "
          f"{stats['starts']} starts, {stats['failed_starts']} failed starts, {damaged} damaged checkpoints; "
          f"bit-identical to the uninterrupted run: "
          + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same.items())
          + f" ({time.monotonic() - started:.0f} s) -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
