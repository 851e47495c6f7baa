"""`benchmarks/demo_samplers.py`: the Fréchet distance, the verdict rule and the table."""

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import demo_samplers

    return demo_samplers


def test_frechet_distance_of_gaussians(bench):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert bench.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # N(0, I) vs N(m, 4I) in 3-d: |m|^2 + 3 (1 + 4 - 2 * 2) = |m|^2 + 3
    b = rng.normal(size=(4000, 3)) * 2 + np.array([1.0, 0.0, 0.0])
    assert bench.frechet_distance(a, b) == pytest.approx(4.0, rel=0.1)
    assert bench.frechet_distance(b, a) == pytest.approx(bench.frechet_distance(a, b), rel=1e-6)


def _row(sampler, steps, colour, shape, clip, fd, seconds):
    s = lambda v: {"mean": float(np.mean(v)), "min": min(v), "max": max(v), "values": v}
    return {"sampler": sampler, "steps": steps, "network_calls": 3 * steps, "colour": s(colour), "shape": s(shape),
            "clip": s(clip), "fd": s(fd), "seconds": s(seconds)}


def test_verdict_and_table(bench):
    ref = _row("ddpm", 1000, [1.0, 1.0], [0.90, 0.80], [0.30, 0.31], [0.20, 0.25], [10.0, 10.0])
    close = _row("dpmpp_2m:trailing", 20, [1.0, 1.0], [0.85, 0.80], [0.305, 0.30], [0.22, 0.24], [0.2, 0.2])
    worse = _row("dpmpp_2m", 10, [1.0, 1.0], [0.60, 0.62], [0.30, 0.30], [0.21, 0.22], [0.1, 0.1])
    blurry = _row("ddim", 50, [1.0, 1.0], [0.85, 0.85], [0.30, 0.30], [0.50, 0.52], [0.5, 0.5])
    better = _row("unipc", 20, [1.0, 1.0], [0.98, 1.0], [0.36, 0.37], [0.10, 0.11], [0.2, 0.2])
    assert bench.reaches_reference(close, ref, images=80)
    assert bench.reaches_reference(better, ref, images=80)  # better than the reference beyond its noise
    assert not bench.reaches_reference(worse, ref, images=80)  # shape 20 points below, noise 10
    assert not bench.reaches_reference(blurry, ref, images=80)  # FD far above the reference's
    # worse CLIP similarity beyond the noise
    assert not bench.reaches_reference(_row("ddim", 50, [1.0, 1.0], [0.85, 0.85], [0.25, 0.25], [0.2, 0.2], [0.5, 0.5]),
                                       ref, images=80)
    result = {"rows": {"ddpm 1000": ref, "dpmpp_2m:trailing 20": close, "dpmpp_2m 10": worse}, "images_per_seed": 80,
              "heldout": [["red", "star"]], "seeds": [0, 1], "cond_scale": 2.0, "prior_candidates": 16,
              "prior_seconds_per_image": 0.01, "threads": 2, "gt_images": 320}
    table = bench.markdown(result)
    lines = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(lines) == 3 and lines[0].endswith("| reference |")
    assert "| 50× | yes |" in lines[1] and "| 100× | no |" in lines[2]
    assert "85% (80–90)" in lines[0]


def test_rows_take_one_step_count_or_one_per_unet(bench, capsys, tmp_path):
    assert bench.parse_row("ddpm=1000") == ("ddpm", 1000)
    assert bench.parse_row("dpmpp_2m:trailing=20/5/5") == ("dpmpp_2m:trailing", (20, 5, 5))
    for bad in ("ddpm", "ddpm=", "=20", "ddpm=20/x", "ddpm=0", "ddpm=20/0/5"):
        with pytest.raises(ValueError, match="expected sampler=steps"):
            bench.parse_row(bad)
    assert bench.main(["--model-dir", "/nowhere"]) == 2
    assert "no dalle2.json" in capsys.readouterr().err
    (tmp_path / "dalle2.json").write_text("{}")
    assert bench.main(["--model-dir", str(tmp_path), "--rows", "ddpm=x"]) == 2
    assert capsys.readouterr().err.strip() == ("demo_samplers: error: row 'ddpm=x': expected sampler=steps, the steps "
                                               "a count >= 1 or one per Unet like 20/8/8")
