"""Issue 12, defect 3: every user-facing command turns every expected failure into one line on stderr
and a non-zero exit status; `--verbose` adds the traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dalle2_pytorch.data import precompute
from dalle2_pytorch.demo import run as demo_run
from dalle2_pytorch.training.scripts import decoder_script, prior_script
from tests.reliability._cli import call, error_line
from tests.scripts._script_helpers import CONFIGS, REPO, REFERENCE_SHARDS

EXIT_INVALID, EXIT_FAILED = 2, 3  # dalle2_pytorch.command_line

TINY_CLIP = '{"make": "x-clip", "model": "x", "pretrained": false}'


def _precompute(tmp_path: Path, *extra: str, shards: str | None = None) -> list[str]:
    return ["--shards", shards or f"{REFERENCE_SHARDS}/{{0..1}}.tar", "--out", str(tmp_path / "emb"), *extra]


@pytest.mark.parametrize("argv, words", [
    (["--shards", "x.tar"], "the following arguments are required: --out, --clip"),
    (["--clip", "nonsense"], "unrecognised --clip spec 'nonsense'"),
    (["--clip", '{"make": "openai"'], "could not build the CLIP adapter"),
    (["--clip", TINY_CLIP, "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--clip", TINY_CLIP, "--device", "banana"], "--device 'banana' is not a device name"),
    (["--clip", TINY_CLIP, "--dtype", "float64"], "invalid choice: 'float64'"),
])
def test_precompute_bad_arguments(argv, words, tmp_path, capsys):
    full = argv if argv[0] == "--shards" else _precompute(tmp_path, *argv)
    status, _, err = call(precompute.main, full, capsys)
    assert status == EXIT_INVALID
    assert words in error_line(err, "precompute")
    assert not (tmp_path / "emb").exists()


def test_precompute_missing_shards_and_output_file(tmp_path, capsys):
    status, _, err = call(precompute.main, _precompute(tmp_path, "--clip", TINY_CLIP, shards=str(tmp_path / "{0..3}.tar")),
                          capsys)
    assert status == EXIT_INVALID and "4 of 4 shard file(s) not found" in error_line(err, "precompute")
    (tmp_path / "file").write_text("x")
    argv = ["--shards", f"{REFERENCE_SHARDS}/0.tar", "--out", str(tmp_path / "file"), "--clip", TINY_CLIP]
    status, _, err = call(precompute.main, argv, capsys)
    assert status == EXIT_INVALID and "is an existing file" in error_line(err, "precompute")


@pytest.mark.parametrize("argv, words", [
    (["--threads", "0"], "--threads must be >= 1"),
    (["--seed", "-2"], "--seed must be between 0"),
    (["--tiny", "--configs", "/nowhere"], "demo_prior.json"),
    (["--tiny", "--speed", "9"], "unrecognized arguments: --speed 9"),
])
def test_demo_bad_arguments(argv, words, tmp_path, capsys):
    status, _, err = call(demo_run.main, ["--output", str(tmp_path / "o"), *argv], capsys)
    assert status == EXIT_INVALID
    assert words in error_line(err, "demo")


@pytest.mark.parametrize("argv, words", [
    ([], "the following arguments are required: --config_file"),
    (["--config_file", "/nowhere.json"], "config file not found: /nowhere.json"),
    (["--config_file", str(CONFIGS / "decoder_tiny_cpu.json"), "--max-steps", "0"], "expected a positive integer, got 0"),
    (["--config_file", str(CONFIGS / "decoder_tiny_cpu.json"), "--max-steps", "ten"], "expected a positive integer, got 'ten'"),
    (["--config_file", str(CONFIGS / "decoder_tiny_cpu.json"), "--override", "train.lr"], "--override expects KEY=VALUE"),
    (["--config_file", str(CONFIGS / "decoder_tiny_cpu.json"), "--resume-from", "x"], "unrecognized arguments"),
])
@pytest.mark.parametrize("module, prog", [(prior_script, "train_prior.py"), (decoder_script, "train_decoder.py")])
def test_training_script_bad_arguments(module, prog, argv, words, capsys):
    status, _, err = call(module.cli, argv, capsys)
    assert status == EXIT_INVALID
    assert words in error_line(err, prog)


def test_training_script_verbose_prints_the_traceback(capsys):
    status, _, err = call(decoder_script.cli, ["--config_file", "/nowhere.json", "--verbose"], capsys)
    assert status == EXIT_INVALID
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1] == "train_decoder.py: error: config file not found: /nowhere.json"


def test_unexpected_errors_are_one_line_too():
    from dalle2_pytorch.command_line import describe_error

    message, status = describe_error(KeyError("surprise"))
    assert status == EXIT_FAILED and message.startswith("internal error: KeyError") and "--verbose" in message
    message, status = describe_error(OSError(28, "No space left on device", "/data/run"))
    assert (message, status) == ("No space left on device: /data/run", EXIT_FAILED)
    assert "\n" not in describe_error(ValueError("first\nsecond"))[0]


@pytest.mark.slow  # three fresh interpreters (torch import)
@pytest.mark.parametrize("command, words", [
    ([str(REPO / "train_prior.py"), "--config_file", str(CONFIGS / "prior_tiny_cpu.json"), "--override",
      'data.batch_size="8"', "--check-config"], "train_prior.py: error: invalid training config"),
    (["-m", "dalle2_pytorch.cli", "   ", "--model-dir", "/nowhere"], "dream: error: prompt 1 is empty"),
    (["-m", "dalle2_pytorch.data.precompute", "--shards", "/nowhere/{0..1}.tar", "--out", "/tmp/x", "--clip",
      TINY_CLIP], "precompute: error: --shards: 2 of 2 shard file(s) not found"),
])
def test_real_processes_print_one_line(command, words, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == EXIT_INVALID, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # exactly one line
    assert proc.stderr.startswith(words)


def test_exit_fast_runs_the_exit_handlers_and_delivers_buffered_output(tmp_path):
    """`dream`'s console entry skips the interpreter's teardown, not what a user could lose: atexit
    handlers, `weakref.finalize` clean-ups and buffered stdout / stderr all happen, with the status."""
    folder = tmp_path / "scratch"
    code = (
        "import atexit, shutil, sys, weakref\n"
        "from pathlib import Path\n"
        "from dalle2_pytorch.command_line import exit_fast\n"
        f"folder = Path({str(folder)!r}); folder.mkdir()\n"
        "class Holder: pass\n"
        "holder = Holder()\n"
        "weakref.finalize(holder, shutil.rmtree, folder)\n"
        "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
        "print('buffered, no newline', end='')\n"
        "exit_fast(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 3
    assert proc.stdout == "buffered, no newline"
    assert proc.stderr.strip() == "handler ran"
    assert not folder.exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to make stdout's flush fail")
def test_exit_fast_reports_output_it_could_not_write():
    code = "import sys\nfrom dalle2_pytorch.command_line import exit_fast\nsys.stdout.write('lost')\nexit_fast(0)\n"
    with open("/dev/full", "w") as full:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the write must wait for the flush
        proc = subprocess.run([sys.executable, "-c", code], stdout=full, stderr=subprocess.PIPE, timeout=120,
                              env=dict(env, PYTHONPATH=str(REPO)))
    assert proc.returncode == 120
