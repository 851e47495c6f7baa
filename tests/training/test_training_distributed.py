"""Real 2-process CPU run through `accelerate launch` (reliability-ecosystem.md §2.1)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dalle2_pytorch.serialization import safe_torch_load

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_training(tmp_path):
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
        str(HERE / "_ddp_train_script.py"), str(tmp_path),
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, f"rc={proc.returncode} after {elapsed:.1f}s\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # exactly one writer: rank 0 wrote the checkpoint, rank 1 wrote nothing
    assert len(ranks[0]["writes"]) == 1 and ranks[1]["writes"] == []
    # the NaN loss was seen (and reported) by rank 1 only; both ranks skipped that step
    assert ranks[1]["losses"][1] is None and ranks[0]["losses"][1] is not None
    ckpts = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert ckpts == ["step_00000004"]
    rng = safe_torch_load(tmp_path / "ckpt" / "step_00000004" / "rng.pt")
    assert rng["num_processes"] == 2 and len(rng["states"]) == 2
    assert not (rng["states"][0]["torch"] == rng["states"][1]["torch"]).all()
    state = json.loads((tmp_path / "ckpt" / "step_00000004" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["num_nonfinite_skips"] == 2
