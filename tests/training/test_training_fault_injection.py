"""Fault injection: SIGKILL during a checkpoint write, truncated checkpoints, malicious pickles."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _kill_mid_save_script import assert_same_state, make_trainer, memory_state, train

from dalle2_pytorch.serialization import UnsafeCheckpointError, safe_torch_load
from dalle2_pytorch.training.checkpoint import find_latest_valid_checkpoint, list_checkpoints

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def test_sigkill_during_checkpoint_write_resumes_from_last_good(tmp_path, caplog):
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_kill_mid_save_script.py"), str(tmp_path), "train"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.strip() == "PAUSED" or not line:
                break
        assert line.strip() == "PAUSED", f"writer never paused; stderr:\n{proc.stderr.read()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    root = tmp_path / "ckpt"
    # the interrupted write left only a temporary directory behind
    leftovers = [p.name for p in root.iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1 and leftovers[0].startswith("step_00000005.tmp-")
    assert [p.name for p in list_checkpoints(root)] == ["step_00000003"]
    assert find_latest_valid_checkpoint(root).name == "step_00000003"

    # restart in a fresh process: it resumes from step 3 with the exact in-memory state (weights,
    # EMA, optimizer) the killed run had there, and training on reproduces the killed run's
    # steps 4-5 bit for bit (asserted inside the script)
    restart = subprocess.run(
        [sys.executable, str(HERE / "_kill_mid_save_script.py"), str(tmp_path), "resume"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )
    assert restart.returncode == 0 and "RESUMED OK" in restart.stdout, restart.stderr[-3000:]
    # its successful save removed the leftover of the killed write
    assert sorted(p.name for p in root.iterdir()) == ["step_00000003", "step_00000005"]


def test_truncated_newest_checkpoint_resumes_from_previous(tmp_path, caplog):
    trainer = make_trainer()
    train(trainer, 0, 2)
    trainer.save(tmp_path)
    expected = memory_state(trainer)
    train(trainer, 2, 4)
    newest = trainer.save(tmp_path)
    opt_file = newest / "optimizer.pt"
    opt_file.write_bytes(opt_file.read_bytes()[:100])  # torn write

    resumed = make_trainer(seed=1)
    with caplog.at_level(logging.WARNING):
        meta = resumed.load(tmp_path)
    assert meta["step"] == 2 and Path(meta["path"]).name == "step_00000002"
    assert_same_state(memory_state(resumed), expected)
    assert any("step_00000004" in r.getMessage() and "optimizer.pt" in r.getMessage() for r in caplog.records)


class _Payload:
    """Unpickling this object creates (opens for writing) the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_object_outside_allow_list_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "version": "1.15.6", "extra": _Payload(marker)}, evil)
    assert not marker.exists()

    # control: an unsafe load really runs the payload (so the test below can fail)
    control = tmp_path / "control"
    control.mkdir()
    subprocess.run(
        [sys.executable, "-c", "import sys, torch; torch.load(sys.argv[1], weights_only=False)", str(evil)],
        cwd=control, check=True, env=_env(), timeout=120,
    )
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(evil)
    assert not marker.exists()

    trainer = make_trainer()
    with pytest.raises(UnsafeCheckpointError):
        trainer.load(evil)  # a reference-style file
    assert not marker.exists()


def test_malicious_file_inside_checkpoint_directory_is_refused(tmp_path):
    """An attacker who replaces optimizer.pt and rewrites the manifest still runs no code."""
    import hashlib
    import json

    marker = tmp_path / "PWNED"
    trainer = make_trainer()
    path = trainer.save(tmp_path / "ckpt")
    torch.save({"optimizers": [_Payload(marker)]}, path / "optimizer.pt")
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / "optimizer.pt").read_bytes()
    manifest["files"]["optimizer.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(UnsafeCheckpointError):
        make_trainer().load(path)
    assert not marker.exists()
