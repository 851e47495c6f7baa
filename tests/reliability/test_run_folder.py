"""Issue 12, defect 1: a run folder that cannot be continued is refused with one line, and nothing of
an earlier run is overwritten by a run that starts at step 0 (`--start-over` moves it aside)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dalle2_pytorch.training.scripts import decoder_script, prior_script
from tests.reliability._cli import call, digest, error_line
from tests.scripts._script_helpers import decoder_argv, prior_argv, read_metrics, train_losses


def _ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def _earlier_run(tiny_data, run: Path) -> dict[str, str]:
    """A finished 14-step prior run (checkpoints 7 and 14, best.ckpt, metrics); returns the digests
    of what a restart must not touch."""
    assert prior_script.main(prior_argv(tiny_data, run, "--max-steps", "14", "--save-every-steps", "7")) == 0
    assert (run / "best.ckpt").is_dir() and len(read_metrics(run)) > 14
    return {**digest(run / "best.ckpt"), **digest(run / "metrics.jsonl")}


def _damage_every_checkpoint(run: Path) -> None:
    newest = _ckpt(run, 14) / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    (_ckpt(run, 7) / "manifest.json").unlink()  # an unfinished write


def test_all_damaged_checkpoints_are_refused_in_one_line(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    kept = _earlier_run(tiny_data, run)
    _damage_every_checkpoint(run)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())

    status, _, err = call(prior_script.cli, prior_argv(tiny_data, run, "--max-steps", "3"), capsys)

    assert status == 2
    line = error_line(err, "train_prior.py")
    assert "every checkpoint is damaged" in line
    assert "step_00000014" in line and "truncated" in line and "step_00000007" in line and "manifest" in line
    assert "Repair" in line and "--start-over" in line and "nothing is deleted" in line
    # nothing was trained or rewritten: best.ckpt and metrics.jsonl are byte for byte the earlier run's
    assert {**digest(run / "best.ckpt"), **digest(run / "metrics.jsonl")} == kept
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_start_over_moves_the_old_run_aside_and_deletes_nothing(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    kept = _earlier_run(tiny_data, run)
    _damage_every_checkpoint(run)

    status, _, _ = call(prior_script.cli, prior_argv(tiny_data, run, "--max-steps", "2", "--start-over"), capsys)

    assert status == 0
    (old,) = tmp_path.glob("run.old-*")
    assert {**digest(old / "best.ckpt"), **digest(old / "metrics.jsonl")} == kept
    assert (old / "checkpoints" / "step_00000014").is_dir() and (old / "checkpoints" / "step_00000007").is_dir()
    assert [s for s, _ in train_losses(read_metrics(run))] == [1, 2]  # a fresh run in the same place


def test_a_run_stopped_before_its_first_checkpoint_restarts_and_keeps_its_partial_results(tiny_data, tmp_path,
                                                                                         capsys):
    """(e.g. SIGKILL before the first save): the same command starts again at step 0 (a scheduler's
    requeue works), and moves the partial metrics.jsonl / best.ckpt aside instead of overwriting them."""
    run = tmp_path / "run"
    _earlier_run(tiny_data, run)
    for name in ("checkpoints", "export"):
        shutil.rmtree(run / name)
    (run / "checkpoints").mkdir()  # made at the start of every run
    (run / "model.pth").unlink()
    (run / "model.pth.sha256").unlink()
    kept = {**digest(run / "best.ckpt"), **digest(run / "metrics.jsonl")}

    status, _, err = call(prior_script.cli, prior_argv(tiny_data, run, "--max-steps", "3"), capsys)

    assert status == 0, err
    (old_metrics,) = run.glob("metrics.jsonl.old-*")
    (old_best,) = run.glob("best.ckpt.old-*")
    assert {**digest(old_best), **digest(old_metrics)} == {k.replace("best.ckpt", old_best.name).replace(
        "metrics.jsonl", old_metrics.name): v for k, v in kept.items()}
    assert [s for s, _ in train_losses(read_metrics(run))] == [1, 2, 3]


def test_a_finished_run_without_checkpoints_is_not_started_over(tiny_data, tmp_path, capsys):
    """checkpoints/ removed by hand from a finished run: its exports and best.ckpt stay untouched."""
    run = tmp_path / "run"
    kept = _earlier_run(tiny_data, run)
    exports = digest(run / "export")
    shutil.rmtree(run / "checkpoints")

    status, _, err = call(prior_script.cli, prior_argv(tiny_data, run, "--max-steps", "3"), capsys)

    assert status == 2
    line = error_line(err, "train_prior.py")
    assert "finished run" in line and "export" in line and "no checkpoint to continue from" in line
    assert "--start-over" in line
    assert {**digest(run / "best.ckpt"), **digest(run / "metrics.jsonl")} == kept and digest(run / "export") == exports


@pytest.mark.parametrize("script", ["prior", "decoder"])
def test_no_resume_on_a_folder_with_checkpoints_is_a_one_line_refusal(script, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    module, argv = ((prior_script, lambda *a: prior_argv(tiny_data, run, *a)) if script == "prior"
                    else (decoder_script, lambda *a: decoder_argv(run, *a)))
    assert module.main(argv("--max-steps", "1", "--override", "train.epochs=1")) == 0
    kept = digest(run)

    status, _, err = call(module.cli, argv("--no-resume"), capsys)

    assert status == 2
    line = error_line(err, f"train_{script}.py")
    assert "--no-resume" in line and "step_00000001" in line and "--resume" in line and "--start-over" in line
    assert digest(run) == kept


@contextlib.contextmanager
def _read_only(folder: Path):
    """`folder` cannot be written in the block: chmod for ordinary users; root ignores permission
    bits, so there the folder is made immutable (chattr +i, ext4 / xfs / btrfs)."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a folder read-only for root here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_run_folder_is_a_clear_error_at_start(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with _read_only(run):
        status, _, err = call(prior_script.cli, prior_argv(tiny_data, run, "--max-steps", "3"), capsys)
    assert status == 2
    line = error_line(err, "train_prior.py")
    assert "cannot be written" in line and str(run) in line
    assert list(run.iterdir()) == []  # nothing was trained or written
