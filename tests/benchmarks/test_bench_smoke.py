"""Smoke tests of `benchmarks/bench_api.py` (our package only; the reference is not installed here)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
WORKLOADS = (
    "prior_forward", "prior_forward_cfg", "prior_train_step", "prior_sample_ddim",
    "unet_forward", "unet_forward_cfg", "unet_train_step", "unet_train_step_image_cond", "decoder_sample_ddim",
)


def test_the_cli_and_the_worker_know_the_same_workloads(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_api
    import workloads

    assert bench_api.WORKLOADS == workloads.WORKLOADS == WORKLOADS


@pytest.mark.slow
def test_quick_run_prints_a_row_with_a_time_for_every_workload(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_api.py"), "--quick", "--ours-python", sys.executable,
         "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("| workload | ours (ms) | reference (ms) | speedup") for line in lines), proc.stdout
    for name in WORKLOADS:
        row = next((line for line in lines if line.startswith(f"| {name} |")), None)
        assert row is not None, f"no row for {name}:\n{proc.stdout}"
        ours = row.split("|")[2].strip()
        assert re.fullmatch(r"\d+\.\d \(\d+\.\d–\d+\.\d\)", ours), row
        assert float(ours.split()[0]) > 0
    # every workload saved its outputs for a later comparison with the reference
    assert sorted(p.stem for p in tmp_path.glob("ours_*.pt")) == sorted(f"ours_{w}" for w in WORKLOADS)


def test_compare_reports_the_largest_difference(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from workloads import compare

    ref = {"out": torch.tensor([1.0, -4.0, 2.0]), "grad:w": torch.zeros(2)}
    same = compare({k: v.clone() for k, v in ref.items()}, ref)
    assert same["keys"] == 2 and same["max_abs"] == 0.0
    ours = {"out": torch.tensor([1.0, -4.5, 2.0]), "grad:w": torch.zeros(2), "extra": torch.ones(1)}
    diff = compare(ours, ref)
    assert diff["max_abs"] == pytest.approx(0.5)
    assert diff["max_rel"] == pytest.approx(0.5 / 4.0)
    assert diff["only_ours"] == 1 and diff["only_ref"] == 0
    bad = compare({"out": torch.zeros(2)}, ref)
    assert "shape mismatch" in bad["error"]


def test_unknown_workload_is_refused():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_api.py"), "--quick", "--workloads", "prior_forward,nope"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "unknown workload" in proc.stderr and "nope" in proc.stderr
