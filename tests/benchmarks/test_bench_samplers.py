"""Smoke test of `benchmarks/bench_samplers.py`: a row for every registered sampler, with numbers."""

import re

from dalle2_pytorch.diffusion import sampler_names


def test_prints_a_row_with_errors_for_every_sampler(monkeypatch, capsys):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_samplers

    bench_samplers.main(["--schedules", "linear", "--batch", "64", "--stochastic-batch", "2000", "--ddpm-batch", "64"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "linear" in line]
    names = [line.split("|")[1].strip().split(" ")[0] for line in rows]
    assert names == [sampler_names()[0], "ddim", "ddim", *sampler_names()[2:]]
    number = r"\d\.\de[-+]\d\d"
    for line in rows:
        assert len(re.findall(number, line)) == (2 if line.startswith("| ddpm") else 8), line
    heun = next(line for line in rows if line.startswith("| heun"))
    assert "19/39/79/159" in heun
