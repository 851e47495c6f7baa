"""Issue 12: fault injection beyond SIGKILL. A write that fails with ENOSPC or EIO at any point of a
checkpoint save or an export (injected through the writer's `Storage` seam, see `_faults.py`)
never leaves a checkpoint or export that a later run would take, keeps what was there before, and
the training script reports it in one line with exit status 3."""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from dalle2_pytorch.decoder import Decoder
from dalle2_pytorch.training.checkpoint import (
    CheckpointWriteError,
    find_latest_valid_checkpoint,
    use_storage,
    verify_checkpoint,
)
from dalle2_pytorch.training.export import export_model, export_reference_model
from dalle2_pytorch.training.scripts import prior_script
from tests.reliability._cli import call, digest, error_line
from tests.reliability._faults import FaultyStorage
from tests.scripts._script_helpers import prior_argv, read_metrics, train_losses
from tests.training._kill_mid_save_script import assert_same_state, make_trainer, memory_state, train

ERRORS = (errno.ENOSPC, errno.EIO)


def _operations(write) -> list[tuple[str, str]]:
    counter = FaultyStorage()
    with use_storage(counter):
        write()
    return counter.log


def _fail(write, fail_at: int, rng: random.Random) -> FaultyStorage:
    storage = FaultyStorage(fail_at, error=ERRORS[fail_at % 2], keep=rng.random())
    with use_storage(storage), pytest.raises(CheckpointWriteError, match=os.strerror(storage.error)):
        write()
    assert storage.failed is not None
    return storage


def test_checkpoint_save_failing_at_any_operation_keeps_the_previous_checkpoint(tmp_path):
    rng = random.Random(12)
    root = tmp_path / "count"
    trainer = make_trainer()
    train(trainer, 0, 2)
    operations = _operations(lambda: trainer.save(root))
    assert len(operations) >= 15 and {op for op, _ in operations} == {"mkdir", "write_file", "fsync_file",
                                                                       "fsync_dir", "replace"}
    for fail_at in range(1, len(operations) + 1):
        root = tmp_path / f"run{fail_at}"
        trainer = make_trainer()
        train(trainer, 0, 2)
        trainer.save(root)
        at_step_2 = memory_state(trainer)
        train(trainer, 2, 4)
        at_step_4 = memory_state(trainer)
        failed = _fail(lambda: trainer.save(root), fail_at, rng)
        # the failed write left nothing behind: the step-2 checkpoint is the only one, and it is intact
        assert sorted(p.name for p in root.iterdir()) == ["step_00000002"], failed.failed
        assert find_latest_valid_checkpoint(root) == root / "step_00000002"
        resumed = make_trainer(seed=7)
        resumed.load(root)
        assert_same_state(memory_state(resumed), at_step_2)
        # and once the disk is fine again the same save succeeds
        trainer.save(root)
        resumed.load(root)
        assert_same_state(memory_state(resumed), at_step_4)


def test_overwriting_best_ckpt_failing_at_any_operation_keeps_the_old_one(tmp_path):
    rng = random.Random(13)
    trainer = make_trainer()
    train(trainer, 0, 2)
    best = tmp_path / "run" / "best.ckpt"
    trainer.save(best)
    old = digest(best)
    train(trainer, 2, 3)
    scratch = tmp_path / "count" / "best.ckpt"
    trainer.save(scratch)
    operations = _operations(lambda: trainer.save(scratch))  # an overwrite: the old one is moved aside first
    assert ("replace", str(scratch)) in operations
    for fail_at in range(1, len(operations) + 1):
        _fail(lambda: trainer.save(best), fail_at, rng)
        assert digest(best) == old and verify_checkpoint(best), fail_at
        assert [p.name for p in best.parent.iterdir()] == ["best.ckpt"]


def _weights(decoder: Decoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in decoder.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_failing_at_any_operation_keeps_the_previous_export(model_folder, tmp_path):
    rng = random.Random(14)
    decoder = Decoder.from_checkpoint(model_folder / "decoder")
    old_weights = _weights(decoder)
    out = tmp_path / "out"
    export_model(decoder, out / "export", kind="decoder")
    old = digest(out / "export")
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(1.0)  # the new weights differ everywhere
    count = len(_operations(lambda: export_model(decoder, tmp_path / "count" / "export", kind="decoder")))
    for fail_at in range(1, count + 1):
        _fail(lambda: export_model(decoder, out / "export", kind="decoder"), fail_at, rng)
        assert digest(out / "export") == old, fail_at
        assert sorted(p.name for p in out.iterdir()) == ["export"]
    assert _same(_weights(Decoder.from_checkpoint(out / "export")), old_weights)  # checked against its manifest


def test_reference_export_failing_at_any_operation_is_never_a_mismatched_pair(model_folder, tmp_path):
    """`model.pth` is replaced atomically (always a complete file) and its `.sha256` never describes
    another file: after any failure the pair loads, as the old or (if it was already in place) the
    new weights."""
    rng = random.Random(15)
    decoder = Decoder.from_checkpoint(model_folder / "decoder")
    old_weights = _weights(decoder)
    pth = tmp_path / "out" / "model.pth"
    export_reference_model(decoder, pth, kind="decoder")
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(1.0)
    new_weights = _weights(decoder)
    count = len(_operations(lambda: export_reference_model(decoder, tmp_path / "count.pth", kind="decoder")))
    outcomes = []
    for fail_at in range(1, count + 1):
        export_reference_model(Decoder.from_checkpoint(model_folder / "decoder"), pth, kind="decoder")  # the old pair
        storage = _fail(lambda: export_reference_model(decoder, pth, kind="decoder"), fail_at, rng)
        loaded = _weights(Decoder.from_checkpoint(pth))
        assert sorted(p.name for p in pth.parent.iterdir()) in (["model.pth", "model.pth.sha256"], ["model.pth"])
        outcomes.append("old" if _same(loaded, old_weights) else "new" if _same(loaded, new_weights) else storage.failed)
    assert set(outcomes) <= {"old", "new"} and outcomes[0] == "old"


def _write_groups(log: list[tuple[str, str]], run: Path) -> dict[str, list[int]]:
    """1-based operation numbers of each write of a run, by what it writes (a directory fsync
    belongs to the write in progress)."""
    groups: dict[str, list[int]] = {}
    current = None
    for i, (_, path) in enumerate(log, 1):
        rel = Path(path).relative_to(run).parts
        if rel and rel[0] == "checkpoints" and len(rel) > 1:
            current = rel[1].split(".tmp-")[0].split(".old-")[0]
        elif rel and rel[0] != "checkpoints":
            current = rel[0].split(".tmp-")[0].split(".old-")[0].removesuffix(".sha256")
        groups.setdefault(current, []).append(i)
    return groups


@pytest.mark.slow  # four in-process training runs plus a counting run (~15 s)
@pytest.mark.parametrize("target, which", [("step_00000014", 0), ("step_00000014", -1), ("export", 3),
                                           ("model.pth", 1)])
def test_training_script_reports_a_failed_write_and_the_next_run_continues(target, which, tiny_data, tmp_path,
                                                                           capsys):
    argv = ("--max-steps", "14", "--save-every-steps", "7")
    counting_run = tmp_path / "count"
    counter = FaultyStorage()
    with use_storage(counter):
        assert prior_script.main(prior_argv(tiny_data, counting_run, *argv)) == 0
    groups = _write_groups(counter.log, counting_run)
    assert {"step_00000007", "step_00000014", "best.ckpt", "export", "model.pth"} <= set(groups)

    run = tmp_path / "run"
    storage = FaultyStorage(groups[target][which], error=errno.ENOSPC if which >= 0 else errno.EIO, keep=0.3)
    with use_storage(storage):
        status, _, err = call(prior_script.cli, prior_argv(tiny_data, run, *argv), capsys)
    assert status == 3, err
    line = error_line(err, "train_prior.py")
    assert f"could not write {run}" in line and target in line and os.strerror(storage.error) in line
    assert "intact" in line or "removed" in line
    assert verify_checkpoint(run / "checkpoints" / "step_00000007")
    if target == "step_00000014":
        assert not (run / "checkpoints" / "step_00000014").exists()
    if target == "export":
        assert not (run / "export").exists()
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]

    status, _, err = call(prior_script.cli, prior_argv(tiny_data, run, *argv), capsys)
    assert status == 0, err
    assert [s for s, _ in train_losses(read_metrics(run))] == list(range(1, 15))
    assert verify_checkpoint(run / "export") and (run / "model.pth.sha256").is_file()
