"""`dream`'s mode flags end to end on the tiny trained demo model: files, names, sidecars, replays
that reproduce the same bytes, and the equalities of the Python API seen through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dalle2_pytorch.cli import main as dream

pytestmark = pytest.mark.slow  # needs the tiny demo run


def _dream(tiny_demo, out: Path, *argv: str) -> int:
    return dream([*argv, "--model-dir", str(tiny_demo[0]), "--output", str(out), "--device", "cpu", "--no-progress"])


def _replay(sidecar: Path, out: Path) -> Path:
    assert dream(["--replay", str(sidecar), "--output", str(out), "--device", "cpu", "--no-progress"]) == 0
    return out / f"{sidecar.stem}.png"


@pytest.fixture(scope="module")
def photos(tiny_demo, tmp_path_factory) -> list[Path]:
    """Two generated images of the model, as input files."""
    out = tmp_path_factory.mktemp("photos")
    assert _dream(tiny_demo, out, "a red circle", "a blue square") == 0
    return [out / "a_red_circle_seed0_0.png", out / "a_blue_square_seed0_0.png"]


def test_text_sidecars_replay_to_the_same_bytes(tiny_demo, tmp_path):
    out = tmp_path / "out"
    assert _dream(tiny_demo, out, "a red circle", "a blue square", "-n", "2", "--batch-size", "3", "--seed", "4") == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["a_blue_square_seed4_0.png", "a_blue_square_seed4_1.png",
                                      "a_red_circle_seed4_0.png", "a_red_circle_seed4_1.png"]
    side = json.loads((out / "a_blue_square_seed4_1.json").read_text())
    assert side["mode"] == "text" and side["prompt"] == "a blue square" and side["image"] == "a_blue_square_seed4_1.png"
    defaults = json.loads((Path(tiny_demo[0]) / "dalle2.json").read_text())["defaults"]  # the model's own defaults
    assert side["settings"]["seed"] == 4 and side["settings"]["cond_scale"] == defaults["cond_scale"] != 1.0
    assert side["models"]["model_dir"] == str(Path(tiny_demo[0]).resolve())
    assert side["sampling"]["decoder"][0]["steps"] == 4 and side["sampling"]["prior"]["sampler"]
    assert side["render"]["seed"] == 5  # the second batch of 3 draws with seed + 1
    for name in ("a_blue_square_seed4_1", "a_red_circle_seed4_0"):  # one image of each batch
        again = _replay(out / f"{name}.json", tmp_path / "replayed")
        assert again.read_bytes() == (out / f"{name}.png").read_bytes()
    # a second run into the same folder adds files, it never replaces them
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _dream(tiny_demo, out, "a red circle", "--seed", "4") == 0
    assert (out / "a_red_circle_seed4_2.png").exists()
    assert all((out / n).read_bytes() == b for n, b in before.items())
    # replaying into the image's own folder writes a "-2" file beside it
    assert dream(["--replay", str(out / "a_red_circle_seed4_0.json"), "--output", str(out), "--no-progress"]) == 0
    assert (out / "a_red_circle_seed4_0-2.png").read_bytes() == (out / "a_red_circle_seed4_0.png").read_bytes()


def test_image_variations(tiny_demo, tmp_path, photos):
    assert _dream(tiny_demo, tmp_path / "a", "--image", *map(str, photos), "-n", "2", "--seed", "3") == 0
    assert _dream(tiny_demo, tmp_path / "b", "--image", str(photos[1]), "-n", "2", "--seed", "3") == 0
    names = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert names == ["a_blue_square_seed0_0_seed3_0.png", "a_blue_square_seed0_0_seed3_1.png",
                     "a_red_circle_seed0_0_seed3_0.png", "a_red_circle_seed0_0_seed3_1.png", "variations_seed3_grid.png"]
    with Image.open(tmp_path / "a" / "variations_seed3_grid.png") as grid:  # a row per image: it, then its variations
        assert grid.size == (3 * 32, 2 * 32)
    for n in ("a_blue_square_seed0_0_seed3_0.png", "a_blue_square_seed0_0_seed3_1.png"):  # same noise, alone or not
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    side = json.loads((tmp_path / "a" / "a_red_circle_seed0_0_seed3_1.json").read_text())
    assert side["mode"] == "variations" and side["variation"] == 1 and side["seed"] == 4
    again = _replay(tmp_path / "a" / "a_red_circle_seed0_0_seed3_1.json", tmp_path / "r")
    assert again.read_bytes() == (tmp_path / "a" / "a_red_circle_seed0_0_seed3_1.png").read_bytes()


def test_interpolate_frames_strip_gif(tiny_demo, tmp_path, photos):
    out = tmp_path / "i"
    assert _dream(tiny_demo, out, "--interpolate", "a green triangle", str(photos[0]), "--frames", "4", "--gif",
                  "--seed", "2") == 0
    base = "interp_a_green_triangle_to_a_red_circle_seed0_0_seed2"
    frames = [out / f"{base}_{k:02d}.png" for k in range(4)]
    assert all(f.exists() and f.with_suffix(".json").exists() for f in frames)
    with Image.open(out / f"{base}_strip.png") as strip:
        assert strip.size == (4 * 32, 32)
    with Image.open(out / f"{base}_strip.gif") as gif:
        assert gif.is_animated and gif.size == (32, 32)  # (Pillow merges identical neighbouring frames)
    side = json.loads(frames[2].with_suffix(".json").read_text())
    assert side["mode"] == "interpolate" and side["position"] == pytest.approx(2 / 3)
    assert side["a"] == {"prompt": "a green triangle"} and side["b"] == {"image": str(photos[0].resolve())}
    # the image end frame is that image's variation with the same seed (variation 0 uses the seed)
    assert _dream(tiny_demo, tmp_path / "v", "--image", str(photos[0]), "--seed", "2") == 0
    assert frames[-1].read_bytes() == (tmp_path / "v" / "a_red_circle_seed0_0_seed2_0.png").read_bytes()
    assert _replay(frames[2].with_suffix(".json"), tmp_path / "r").read_bytes() == frames[2].read_bytes()
    # a second run keeps the first one's files and adds a "-2" set
    assert _dream(tiny_demo, out, "--interpolate", "a green triangle", str(photos[0]), "--frames", "4",
                  "--seed", "2") == 0
    assert (out / f"{base}_00-2.png").read_bytes() == frames[0].read_bytes()
    assert (out / f"{base}_strip-2.png").exists()


def test_text_diff_amount_zero_is_the_variation(tiny_demo, tmp_path, photos):
    out = tmp_path / "t"
    assert _dream(tiny_demo, out, "--image", str(photos[1]), "--text-diff", "a blue square", "a red circle",
                  "--amounts", "0", "0.3", "0.6", "--seed", "5") == 0
    base = "textdiff_a_blue_square_seed0_0_to_a_red_circle_seed5"
    assert all((out / f"{base}_{k:02d}.png").exists() for k in range(3)) and (out / f"{base}_strip.png").exists()
    assert _dream(tiny_demo, tmp_path / "v", "--image", str(photos[1]), "--seed", "5") == 0
    assert (out / f"{base}_00.png").read_bytes() == (tmp_path / "v" / "a_blue_square_seed0_0_seed5_0.png").read_bytes()
    side = json.loads((out / f"{base}_02.json").read_text())
    assert side["amount"] == 0.6 and side["from"] == "a blue square" and side["to"] == "a red circle"
    assert _replay(out / f"{base}_02.json", tmp_path / "r").read_bytes() == (out / f"{base}_02.png").read_bytes()


def test_inpaint_and_negative_prompt(tiny_demo, tmp_path, photos, monkeypatch):
    mask = tmp_path / "mask.png"
    m = Image.new("L", (32, 32), 0)
    m.paste(255, (16, 0, 32, 32))  # paint the right half
    m.save(mask)
    out = tmp_path / "p"
    assert _dream(tiny_demo, out, "a green triangle", "--inpaint", str(photos[0]), "--mask", str(mask), "-n", "2",
                  "--negative-prompt", "a red circle", "--prior-cond-scale", "3") == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["inpaint_a_red_circle_seed0_0_a_green_triangle_seed0_0.png",
                                       "inpaint_a_red_circle_seed0_0_a_green_triangle_seed0_1.png"]
    side = json.loads(files[1].with_suffix(".json").read_text())
    assert side["mode"] == "inpaint" and side["settings"]["negative_prompt"] == "a red circle"
    import numpy as np

    kept = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float32)[:, :14]
    orig = np.asarray(Image.open(photos[0]).convert("RGB"), dtype=np.float32)[:, :14]
    assert np.abs(kept - orig).mean() < 4  # the black half of the mask is kept (8-bit rounding)
    assert _replay(files[1].with_suffix(".json"), tmp_path / "r").read_bytes() == files[1].read_bytes()
    # the negative prompt reaches the prior's sampling (its effect on the embeddings: test_dalle2_edits.py)
    from dalle2_pytorch.prior import DiffusionPrior

    seen, original = [], DiffusionPrior.sample
    monkeypatch.setattr(DiffusionPrior, "sample", lambda self, *a, **k: seen.append(k) or original(self, *a, **k))
    assert _dream(tiny_demo, tmp_path / "n", "a red circle", "--prior-cond-scale", "3", "--negative-prompt", "a red star") == 0
    assert [(k["negative_prompt"], k["cond_scale"]) for k in seen] == [("a red star", 3.0)]


def test_progress_bars(tiny_demo, tmp_path, capsys):
    assert dream(["a red circle", "--model-dir", str(tiny_demo[0]), "--output", str(tmp_path), "--progress"]) == 0
    err = capsys.readouterr().err
    assert "prior" in err and "decoder unet 1" in err and "decoder unet 2" in err
