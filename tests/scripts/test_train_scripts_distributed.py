"""train_prior.py under a real two-process `accelerate launch` on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dalle2_pytorch.serialization import safe_torch_load
from tests.scripts._script_helpers import REPO, prior_argv


@pytest.mark.slow
def test_train_prior_with_two_processes(tiny_data, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO / "train_prior.py"), *prior_argv(tiny_data, run, "--max-steps", "6", "--save-every-steps", "3"),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert checkpoints, "no checkpoint written"
    rng = safe_torch_load(checkpoints[-1] / "rng.pt")
    assert rng["num_processes"] == 2 and len(rng["states"]) == 2  # both ranks' RNG, one file
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    assert state["step"] == 6
    # exactly one writer: one metrics line per logged step, no duplicated steps
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in json.loads(line)]
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert not list(Path(tmp_path).glob("**/*.tmp-*")), "no temporary checkpoint left behind"
