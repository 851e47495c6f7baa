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
        assert im.size == (32, 32) and im.mode == "RGB"


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
