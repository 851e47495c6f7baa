"""Smoke tests of `benchmarks/bench_gpu.py` on CPU at `--quick` sizes (ours only; the GPU run with the
reference is `scripts/gpu_check.sh`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def test_quick_cpu_run_times_every_variant_and_keeps_results_as_they_finish(tmp_path):
    cmd = [sys.executable, str(BENCH / "bench_gpu.py"), "--quick", "--device", "cpu", "--dtype", "bf16",
           "--workloads", "unet188_train,prior_sample", "--variants", "eager,casts,fused+casts+cl",
           "--variants-for", "prior_sample=casts", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(line) for line in (tmp_path / "bench_gpu.jsonl").read_text().splitlines()]
    assert [(r["workload"], r["variant"]) for r in results] == [
        ("unet188_train", "eager"), ("unet188_train", "casts"), ("unet188_train", "fused+casts+cl"),
        ("prior_sample", "casts"),
    ]
    for r in results:
        assert "error" not in r, r
        assert r["step_ms"] > 0 and r["side"] == "ours" and r["device"] == "cpu"
    train = results[:3]
    assert all(r["flops"] > 0 and r["tflops"] > 0 and "mfu" not in r for r in train)  # no MFU without a peak
    assert train[2]["flags"] == ["fused", "casts", "cl"]
    table = (tmp_path / "bench_gpu.md").read_text()
    assert table.startswith("| workload | ours (variant) | reference | speed-up | MFU ours / ref | peak GB")
    assert "| unet188_train | ours | fused+casts+cl |" in table
    assert proc.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])  # the tables are printed last


def test_variant_names_and_tables(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_gpu
    from gpu_workloads import WORKLOADS, parse_variant

    assert bench_gpu.WORKLOADS == WORKLOADS
    assert parse_variant("compile") == ("fused", "casts", "cl", "compile") and parse_variant("eager") == ()
    assert parse_variant("fused+ckpt") == ("fused", "ckpt")
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variant("fused+turbo")
    results = [
        {"side": "reference", "workload": "unet188_train", "variant": "reference", "step_ms": 160.0, "mfu": 0.08,
         "tflops": 79.0, "peak_gb": 17.0, "first_step_s": 1.0},
        {"side": "ours", "workload": "unet188_train", "variant": "casts", "step_ms": 100.0, "mfu": 0.12,
         "tflops": 120.0, "peak_gb": 11.0, "first_step_s": 1.0},
        {"side": "ours", "workload": "unet188_train", "variant": "compile", "step_ms": 80.0, "mfu": 0.15,
         "tflops": 150.0, "peak_gb": 10.0, "first_step_s": 40.0},
        {"side": "ours", "workload": "prior_train", "variant": "compile", "skipped": "time budget used up"},
    ]
    table = bench_gpu.tables(results)
    assert "| unet188_train | 80.0 ms (compile) | 160.0 ms | 2.00× | 15.0 % / 8.0 % | 10.0 / 17.0 (0.59×) | 40.0 s |" in table
    assert "| prior_train | ours | compile | time budget used up |" in table
    jsonl = tmp_path / "bench_gpu.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in results) + "\n")
    assert bench_gpu.main(["--table-from", str(jsonl)]) == 0
    assert (tmp_path / "bench_gpu.md").read_text().strip() == table.strip()


def test_gpu_check_script_refuses_an_unknown_mode():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "fast"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage: bash scripts/gpu_check.sh explore|final|smoke" in proc.stderr
