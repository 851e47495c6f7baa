import hashlib
import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file

from dalle2_pytorch.training import checkpoint as ck
from dalle2_pytorch.training.checkpoint import (
    CorruptCheckpointError,
    find_latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)


def _save(root, step, value=1.0, keep_last=5, **kw):
    return save_checkpoint(
        root,
        step=step,
        model_state={"w": torch.full((4, 4), float(value)), "b": torch.zeros(4)},
        ema_state={"ema_model.w": torch.full((4, 4), value / 2), "step": torch.tensor(step), "initted": torch.tensor(True)},
        optimizer_state={"optimizers": [{"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}]},
        rng_state={"num_processes": 1, "states": [{"torch": torch.get_rng_state()}]},
        trainer_state={"kind": "prior", "step": step, "epoch": 2},
        keep_last=keep_last,
        **kw,
    )


def test_layout_and_manifest(tmp_path):
    path = _save(tmp_path, 7)
    assert path == tmp_path / "step_00000007"
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(list(ck.CHECKPOINT_FILES) + ["manifest.json"])
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 7 and set(manifest["files"]) == set(ck.CHECKPOINT_FILES)
    for name, info in manifest["files"].items():
        data = (path / name).read_bytes()
        assert info["size"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
    assert load_file(str(path / "model.safetensors"))["w"].sum() == 16
    assert json.loads((path / "trainer_state.json").read_text())["epoch"] == 2
    assert not list(tmp_path.glob("*.tmp-*"))


def test_manifest_is_written_last(tmp_path, monkeypatch):
    order = []
    real = ck._fsync_file
    monkeypatch.setattr(ck, "_fsync_file", lambda p: (order.append(p.name), real(p)))
    _save(tmp_path, 1)
    assert order[-1] == "manifest.json" and set(order[:-1]) == set(ck.CHECKPOINT_FILES)


def test_failed_write_leaves_nothing(tmp_path):
    def boom(path):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path / "step_00000001", {"a.bin": lambda p: p.write_bytes(b"x"), "b.bin": boom})
    assert list(tmp_path.iterdir()) == []


def test_load_roundtrip(tmp_path):
    _save(tmp_path, 3, value=2.0)
    loaded = load_checkpoint(tmp_path)
    assert loaded.path.name == "step_00000003"
    assert torch.equal(loaded.model["w"], torch.full((4, 4), 2.0))
    assert loaded.ema["step"].item() == 3
    assert torch.equal(loaded.optimizer["optimizers"][0]["state"][0]["exp_avg"], torch.ones(2))
    assert loaded.trainer_state["step"] == 3


def _damage_truncate(p):
    data = (p / "model.safetensors").read_bytes()
    (p / "model.safetensors").write_bytes(data[: len(data) // 2])


def _damage_flip(p):
    data = bytearray((p / "optimizer.pt").read_bytes())
    data[-30] ^= 0xFF
    (p / "optimizer.pt").write_bytes(bytes(data))


def _damage_no_manifest(p):
    (p / "manifest.json").unlink()


def _damage_missing_file(p):
    (p / "rng.pt").unlink()


@pytest.mark.parametrize(
    "damage, words",
    [
        (_damage_truncate, "truncated"),
        (_damage_flip, "sha256"),
        (_damage_no_manifest, "no manifest.json"),
        (_damage_missing_file, "missing"),
    ],
)
def test_damaged_newest_falls_back_to_previous(tmp_path, caplog, damage, words):
    _save(tmp_path, 1, value=1.0)
    newest = _save(tmp_path, 2, value=2.0)
    damage(newest)
    with pytest.raises(CorruptCheckpointError, match=words):
        verify_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="dalle2_pytorch.training.checkpoint"):
        found = find_latest_valid_checkpoint(tmp_path)
    assert found == tmp_path / "step_00000001"
    assert any("step_00000002" in r.getMessage() and words in r.getMessage() for r in caplog.records)
    assert torch.equal(load_checkpoint(tmp_path).model["w"], torch.full((4, 4), 1.0))


def test_all_damaged(tmp_path):
    _damage_truncate(_save(tmp_path, 1))
    assert find_latest_valid_checkpoint(tmp_path) is None
    with pytest.raises(CorruptCheckpointError, match="every candidate is damaged"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nothing")


def test_keep_last_rotation(tmp_path):
    for step in range(1, 6):
        _save(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


def test_just_written_is_never_pruned(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step, keep_last=5)
    written = _save(tmp_path, 5, keep_last=1)  # e.g. a run restarted from an older step
    assert written.exists()


def test_same_step_overwrite_and_interrupted_overwrite(tmp_path):
    _save(tmp_path, 4, value=1.0)
    _save(tmp_path, 4, value=3.0)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000004"]
    assert load_checkpoint(tmp_path).model["w"][0, 0] == 3.0
    # a crash between moving the old directory aside and renaming the new one: the old copy is used
    os.replace(tmp_path / "step_00000004", tmp_path / "step_00000004.old-abcd1234")
    assert find_latest_valid_checkpoint(tmp_path).name == "step_00000004.old-abcd1234"


def test_stale_temporaries_are_removed_by_next_write(tmp_path):
    stale = tmp_path / "step_00000002.tmp-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert find_latest_valid_checkpoint(tmp_path) is None  # a .tmp- directory is never a candidate
    _save(tmp_path, 3)
    assert not stale.exists()


def test_exact_path(tmp_path):
    path = _save(tmp_path / "latest.pth", 9, exact_path=True)
    assert path == tmp_path / "latest.pth" and (path / "manifest.json").exists()
    assert resolve_checkpoint(path) == path


def test_non_tensor_and_non_json_rejected(tmp_path):
    with pytest.raises(TypeError, match="not a tensor"):
        ck.to_safetensors_dict({"a": 1})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path, step=1, model_state={}, ema_state={}, optimizer_state={}, rng_state={},
                        trainer_state={"x": object()})


def test_shared_tensors_are_saved(tmp_path):
    w = torch.randn(3, 3)
    out = ck.to_safetensors_dict({"a": w, "b": w})
    assert out["a"].data_ptr() != out["b"].data_ptr() and torch.equal(out["a"], out["b"])
