"""`dream`'s mode flags: every bad combination is one line on stderr with exit status 2, found before
any model is loaded (the model folder here does not even exist). The modes themselves, end to end on a
trained model: tests/demo/test_dream_modes.py."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dalle2_pytorch.cli import main as dream
from dalle2_pytorch.cli_outputs import free_index, free_suffix, load_mask, read_sidecar, slug


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(path)
    return path


CASES = [
    (["--mask", "{image}", "a cat"], "--mask is the mask of --inpaint"),
    (["--inpaint", "{image}", "a cat"], "--inpaint needs --mask"),
    (["--interpolate", "a", "b", "--frames", "1"], "--frames must be >= 2"),
    (["a cat", "--frames", "4"], "--frames goes with --interpolate"),
    (["--image", "{image}", "--text-diff", "a", "b", "--amounts", "0", "1.5"], "--amounts must be in [0, 1]"),
    (["a cat", "--amounts", "0.5"], "--amounts goes with --text-diff"),
    (["--text-diff", "a cat", "a dog"], "--text-diff needs --image"),
    (["--image", "{image}", "--text-diff", "a cat", " "], "captions must be non-empty"),
    (["--interpolate", "a cat", "missing.png"], "image not found: missing.png"),
    (["--interpolate", "a cat", "  "], "non-empty prompts or image files"),
    (["--interpolate", "a", "b", "--inpaint", "{image}", "--mask", "{image}"], "choose one mode"),
    (["--interpolate", "a", "b", "--image", "{image}"], "--interpolate takes its images as endpoints"),
    (["a cat", "--image", "{image}"], "prompts are not used by --image variations"),
    (["a cat", "--interpolate", "a", "b"], "prompts are not used by --interpolate"),
    (["a cat", "--gif"], "--gif goes with"),
    (["a cat", "--negative-prompt", "a dog"], "has no effect at --prior-cond-scale 1"),
    (["a cat", "--negative-prompt", " ", "--prior-cond-scale", "3"], "--negative-prompt must be non-empty"),
    (["--image", "{image}", "--negative-prompt", "a dog", "--prior-cond-scale", "3"], "steers the prior"),
    (["a cat", "--pretrained", "laion/dalle2"], "either --pretrained or --model-dir"),
    (["--replay", "{missing}"], "sidecar not found"),
    (["--replay", "{image}"], "not a JSON sidecar"),
    (["--replay", "{json}"], "not a sidecar written by dream"),
    (["a cat", "--replay", "{json}"], "--replay regenerates one sidecar's image"),
    ([], "give at least one prompt"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[c[1][:30] for c in CASES])
def test_bad_mode_flags_are_one_line_errors(argv, message, image, tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"prompt": "not a sidecar"}))
    subst = {"{image}": str(image), "{missing}": str(tmp_path / "nothing.json"), "{json}": str(other)}
    argv = [subst.get(a, a) for a in argv]
    assert dream([*argv, "--model-dir", str(tmp_path / "no_models"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dream: error:") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written, no model loaded


def test_unknown_pretrained_name_is_one_line(tmp_path, capsys):
    assert dream(["a cat", "--pretrained", "not a model", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a known pretrained name" in err


def test_output_names_never_replace_files(tmp_path):
    assert slug("A Red Circle!") == "a_red_circle" and slug("???") == "image"
    (tmp_path / "x_seed0_0.png").touch()
    (tmp_path / "x_seed0_1.json").touch()
    assert free_index(tmp_path, "x_seed0_") == 2
    assert free_suffix(tmp_path, ["y_00", "y_01"]) == ""
    (tmp_path / "y_01.png").touch()
    assert free_suffix(tmp_path, ["y_00", "y_01"]) == "-2"


def test_mask_convention(tmp_path):
    path = tmp_path / "mask.png"
    im = Image.new("L", (8, 8), 0)
    im.paste(255, (4, 0, 8, 8))  # right half white = paint
    im.save(path)
    keep = load_mask(path, 16)
    assert keep.shape == (16, 16) and bool(keep[:, :8].all()) and not bool(keep[:, 8:].any())
    Image.new("L", (8, 8), 0).save(path)
    with pytest.raises(ValueError, match="marks nothing to paint"):
        load_mask(path, 16)


def test_sidecar_format_is_checked(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format": "dalle2_pytorch.dream", "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        read_sidecar(path)
    path.write_text(json.dumps({"format": "dalle2_pytorch.dream", "format_version": 1, "mode": "text"}))
    with pytest.raises(ValueError, match="lacks 'render'"):
        read_sidecar(path)
