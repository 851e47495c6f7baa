"""Issue 12: the kill test (scripts/kill_test.py) in small: SIGKILLs of a real `train_decoder.py`
process, one of them aimed at a checkpoint write; every restart works with the same command and
the finished run is bit-identical to an uninterrupted one (weights, EMA, optimiser, RNG, losses).
The README's numbers come from the same script with `--kills 20`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.scripts._script_helpers import REPO


@pytest.mark.slow  # about a dozen training processes (1-2 min on a busy 2-core machine)
def test_sigkilled_runs_resume_bit_exactly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "kill_test.py"), "--kills", "2", "--aim-every", "2",
                           "--out", str(tmp_path / "kill"), "--seed", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "kill" / "runs.log").read_text()[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert "2 SIGKILLs" in line and "1 aimed at checkpoint writes" in line and "0 failed starts" in line
    assert "0 damaged checkpoints" in line and " NO" not in line and line.endswith("PASS")
