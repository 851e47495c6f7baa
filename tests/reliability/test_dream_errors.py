"""Issue 12, defects 3 and 4 for `dream`: every bad argument is one line on stderr and exit status 2
before any model is loaded or file written; nothing is silently accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle2_pytorch.cli import main as dream
from tests.reliability._cli import call, error_line

BAD = {
    "empty prompt": (["", "--device", "cpu"], "prompt 1 is empty"),
    "blank prompt": (["   ", "--device", "cpu"], "prompt 1 is empty"),
    "one blank among others": (["a cat", "\t", "--device", "cpu"], "prompt 2 is empty"),
    "negative guidance": (["a cat", "--cond-scale", "-5", "--device", "cpu"], "--cond-scale must be a finite number >= 0"),
    "negative prior guidance": (["a cat", "--prior-cond-scale", "-0.5", "--device", "cpu"], "--prior-cond-scale"),
    "NaN guidance": (["a cat", "--cond-scale", "nan", "--device", "cpu"], "--cond-scale"),
    "unknown device": (["a cat", "--device", "banana"], "--device 'banana' is not a device name"),
    "meta device": (["a cat", "--device", "meta"], "--device meta"),
    "negative seed": (["a cat", "--seed", "-1", "--device", "cpu"], "--seed must be between 0"),
    "zero steps": (["a cat", "--steps", "0", "--device", "cpu"], "--steps must be >= 1"),
    "zero images": (["a cat", "-n", "0", "--device", "cpu"], "--num-images and --batch-size must be >= 1"),
    "absurd image count": (["a cat", "-n", "99999999", "--device", "cpu"], "images per prompt"),
    "not a number": (["a cat", "--num-images", "two", "--device", "cpu"], "invalid int value: 'two'"),
    "unknown option": (["a cat", "--colour", "red", "--device", "cpu"], "unrecognized arguments"),
    "prompts and images": (["a cat", "--image", "x.png", "--device", "cpu"], "prompts are not used by --image variations"),
    "missing image": (["--image", "nowhere.png", "--device", "cpu"], "--image nowhere.png: file not found"),
    "missing prompts file": (["--prompts-file", "nowhere.txt", "--device", "cpu"], "prompts file not found"),
    "no prompt at all": (["--device", "cpu"], "give at least one prompt"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_argument_is_one_line_and_writes_nothing(case, model_folder, tmp_path, capsys):
    argv, words = BAD[case]
    out = tmp_path / "out"
    status, stdout, err = call(dream, [*argv, "--model-dir", str(model_folder), "--output", str(out)], capsys)
    assert status == 2, err
    assert words in error_line(err, "dream")
    assert not out.exists() and stdout == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line(device, model_folder, tmp_path, capsys):
    status, _, err = call(dream, ["a cat", "--model-dir", str(model_folder), "--output", str(tmp_path / "o"),
                                  "--device", device], capsys)
    assert status == 2
    assert "no CUDA GPU is available" in error_line(err, "dream") and "--device cpu" in err


def test_output_pointing_at_an_existing_file_is_one_line(model_folder, tmp_path, capsys):
    existing = tmp_path / "picture.png"
    existing.write_bytes(b"the user's file")
    status, _, err = call(dream, ["a cat", "--model-dir", str(model_folder), "--output", str(existing),
                                  "--device", "cpu"], capsys)
    assert status == 2
    assert "is an existing file" in error_line(err, "dream")
    assert existing.read_bytes() == b"the user's file"


def test_verbose_shows_the_traceback_before_the_line(model_folder, tmp_path, capsys):
    status, _, err = call(dream, ["", "--model-dir", str(model_folder), "--output", str(tmp_path / "o"),
                                  "--device", "cpu", "--verbose"], capsys)
    assert status == 2
    assert "Traceback (most recent call last)" in err and "DreamError" in err
    assert err.strip().splitlines()[-1].startswith("dream: error: prompt 1 is empty")


def test_good_arguments_still_write_images(model_folder, tmp_path, capsys):
    out = tmp_path / "out"
    status, stdout, err = call(dream, ["a cat", "sea", "--model-dir", str(model_folder), "--output", str(out),
                                       "--device", "cpu", "--cond-scale", "0", "--seed", "3"], capsys)
    assert status == 0, err
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["a_cat_seed3_0.png", "sea_seed3_0.png"]
    assert stdout.split() == [str(f) for f in [out / "a_cat_seed3_0.png", out / "sea_seed3_0.png"]]
    with Image.open(files[0]) as im:
        assert im.size == (32, 32)
    assert not list(out.glob(".*.tmp"))
    assert Path(out).is_dir()
