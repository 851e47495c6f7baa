"""`dream` on the model folder of a tiny demo run: files, seeds, free-form prompts and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from dalle2_pytorch.cli import main as dream

pytestmark = pytest.mark.slow  # needs the tiny demo run (every model of the demo is trained)


def _dream(model_dir: Path, out: Path, *prompts: str, seed: int = 0, extra: tuple[str, ...] = ()) -> int:
    return dream([*prompts, "--model-dir", str(model_dir), "--seed", str(seed), "--output", str(out),
                  "--device", "cpu", *extra])


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_dream_writes_an_image_of_the_decoder_size(tiny_demo, tmp_path):
    model_dir = tiny_demo[0]
    assert _dream(model_dir, tmp_path / "a", "a red circle") == 0
    files = _pngs(tmp_path / "a")
    assert len(files) == 1 and files[0].name.startswith("a_red_circle_seed0")
    with Image.open(files[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"  # the tiny demo's last Unet


def test_same_seed_same_bytes_other_seed_other_image(tiny_demo, tmp_path):
    model_dir = tiny_demo[0]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert _dream(model_dir, tmp_path / name, "a red circle", seed=seed) == 0
    a, b, c = (_pngs(tmp_path / name)[0].read_bytes() for name in "abc")
    assert a == b
    assert a != c


def test_free_form_prompts(tiny_demo, tmp_path):
    prompts = ("a green square", "a small blue circle", "there is a lovely purple star near the top")
    assert _dream(tiny_demo[0], tmp_path, *prompts, extra=("--num-images", "2")) == 0
    names = [p.name for p in _pngs(tmp_path)]
    assert len(names) == 6
    assert sum(n.startswith("a_small_blue_circle") for n in names) == 2


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no_such_demo"
    assert _dream(missing, tmp_path / "out", "a red circle") == 2
    err = capsys.readouterr().err
    assert "model folder not found" in err and str(missing) in err
    assert "Traceback" not in err


@pytest.mark.parametrize("victim", ["decoder/model.safetensors", "prior_run/export/model.safetensors"])
def test_corrupted_checkpoint_is_a_clear_error(tiny_demo, tmp_path, capsys, victim):
    model_dir = tmp_path / "demo"
    shutil.copytree(tiny_demo[0], model_dir, ignore=shutil.ignore_patterns("data", "*_run", "embeddings"))
    shutil.copytree(tiny_demo[0] / "prior_run" / "export", model_dir / "prior_run" / "export")
    path = model_dir / victim
    path.write_bytes(b"this is not a safetensors file" + bytes(range(256)))
    assert _dream(model_dir, tmp_path / "out", "a red circle") == 2
    err = capsys.readouterr().err
    assert err.startswith("dream: error:") and "Traceback" not in err
    assert "could not load" in err
    assert not (tmp_path / "out").exists() or not _pngs(tmp_path / "out")


def test_model_folder_without_index_or_models(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _dream(tmp_path / "empty", tmp_path / "out", "a red circle") == 2
    assert "dalle2.json" in capsys.readouterr().err


def test_text_to_image_imports_nothing_of_training_nor_the_clip_image_tower(tiny_demo, tmp_path):
    """The fast path: no x-clip, torchvision, open_clip, torch._dynamo or training code, and the CLIP's
    image tower is never built; the model folder's sampling settings are the defaults."""
    import json
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dalle2_pytorch import cli\n"
        "built = []\n"
        "from dalle2_pytorch.clip_adapters.small_clip import SmallCLIP\n"
        "original = SmallCLIP.attach_image_tower\n"
        "SmallCLIP.attach_image_tower = lambda self, tower: (built.append(1), original(self, tower))\n"
        f"status = cli.main(['a purple star in the top left', '--model-dir', {str(tiny_demo[0])!r}, '--output', "
        f"{str(tmp_path)!r}, '--device', 'cpu'])\n"
        "heavy = sorted({m.split('.')[0] if not m.startswith('torch._dynamo') else 'torch._dynamo' for m in sys.modules\n"
        "                if m.split('.')[0] in ('x_clip', 'torchvision', 'open_clip', 'accelerate', 'webdataset', 'wandb',\n"
        "                                       'ema_pytorch', 'kornia', 'torchmetrics') or m.startswith('torch._dynamo')\n"
        "                or m.startswith(('dalle2_pytorch.training', 'dalle2_pytorch.data', 'dalle2_pytorch.demo'))})\n"
        "print('RESULT', status, heavy, len(built))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600).stdout
    assert "RESULT 0 [] 0" in out, out
    assert len(list(tmp_path.glob("a_purple_star_in_the_top_left_seed0_*.png"))) == 1
    index = json.loads((tiny_demo[0] / "dalle2.json").read_text())
    assert index["defaults"]["cond_scale"] == 2.0


def test_image_variations_build_the_clip_image_tower_on_demand(tiny_demo, tmp_path):
    from dalle2_pytorch.demo.shapes import render, sample_attributes

    import numpy as np

    source = tmp_path / "red_star.png"
    render(sample_attributes(np.random.default_rng(0), colour="red", shape="star"), 32).save(source)
    assert dream(["--image", str(source), "--model-dir", str(tiny_demo[0]), "--output", str(tmp_path / "v"),
                  "--num-images", "2", "--device", "cpu"]) == 0
    variations = [p for p in _pngs(tmp_path / "v") if p.with_suffix(".json").is_file()]  # the grid has no sidecar
    assert len(variations) == 2 and (tmp_path / "v" / "variations_seed0_grid.png").is_file()
