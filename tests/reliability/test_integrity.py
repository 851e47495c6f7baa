"""Issue 12, defect 2: every export / checkpoint is checked against its manifest (sizes + sha256) and
for finite tensors when loaded; `dream` never writes an image from non-finite outputs."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dalle2_pytorch.cli import main as dream
from dalle2_pytorch.decoder import Decoder
from dalle2_pytorch.prior import DiffusionPrior
from dalle2_pytorch.serialization import CheckpointError
from dalle2_pytorch.training.checkpoint import CorruptCheckpointError  # (also in dalle2_pytorch.integrity)
from dalle2_pytorch.training.checkpoint import load_checkpoint, save_checkpoint
from dalle2_pytorch.training.export import export_model, export_reference_model
from tests.reliability._cli import call, error_line, sha256_file

# raised for non-finite tensors (dalle2_pytorch.integrity.NonFiniteTensorError); a CheckpointError
NonFiniteTensorError = CheckpointError


def _copy(model_folder: Path, dst: Path) -> Path:
    return Path(shutil.copytree(model_folder, dst))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # inside the last tensor: the file still parses
    path.write_bytes(bytes(data))


def _rehash(folder: Path) -> None:
    """Rewrites the manifest so that it matches the (tampered) files: only the content check can catch them."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, info in manifest["files"].items():
        info.update(size=(folder / name).stat().st_size, sha256=sha256_file(folder / name))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _set_tensor(folder: Path, value: float, name: str = "model.safetensors") -> str:
    weights = load_file(str(folder / name))
    key = next(k for k, v in weights.items() if v.is_floating_point() and v.ndim == 4)
    weights[key] = torch.full_like(weights[key], value)
    save_file(weights, str(folder / name), metadata={"format": "pt"})
    _rehash(folder)
    return key


def _dream(model_dir: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    status, _, err = call(dream, ["a cat", "--model-dir", str(model_dir), "--output", str(out), "--device", "cpu",
                                  *extra], capsys)
    return status, err


def test_one_flipped_byte_in_an_export_is_one_clear_error(model_folder, tmp_path, capsys):
    models = _copy(model_folder, tmp_path / "m")
    _flip_last_byte(models / "decoder" / "model.safetensors")

    with pytest.raises(CorruptCheckpointError, match=r"decoder: model\.safetensors does not match its sha256"):
        Decoder.from_checkpoint(models / "decoder")
    status, err = _dream(models, tmp_path / "out", capsys)
    assert status == 2
    line = error_line(err, "dream")
    assert "model.safetensors" in line and "sha256" in line
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("damage", ["truncate", "no_manifest"])
def test_truncated_or_manifest_less_export_is_refused(model_folder, tmp_path, damage):
    models = _copy(model_folder, tmp_path / "m")
    target = models / "prior"
    if damage == "truncate":
        data = (target / "model.safetensors").read_bytes()
        (target / "model.safetensors").write_bytes(data[: len(data) - 8])
        match = "truncated or modified"
    else:
        (target / "manifest.json").unlink()
        match = "no manifest.json"
    with pytest.raises(CorruptCheckpointError, match=match):
        DiffusionPrior.from_checkpoint(target)


def test_non_finite_weight_in_an_export_is_refused(model_folder, tmp_path, capsys):
    models = _copy(model_folder, tmp_path / "m")
    key = _set_tensor(models / "decoder", float("nan"))  # manifest rewritten: it matches

    with pytest.raises(NonFiniteTensorError, match=key.replace(".", r"\.")):
        Decoder.from_checkpoint(models / "decoder")
    status, err = _dream(models, tmp_path / "out", capsys)
    assert status == 2
    assert "NaN or infinite" in error_line(err, "dream") and key in err
    assert not list((tmp_path / "out").glob("*.png"))


def test_dream_never_writes_an_image_from_non_finite_outputs(model_folder, tmp_path, capsys):
    """Finite but absurd weights (3e38) overflow inside the Unet: the sample is NaN. The reference
    (and this package before issue 12) wrote an all-black PNG and exited 0."""
    models = _copy(model_folder, tmp_path / "m")
    _set_tensor(models / "decoder", 3e38)

    status, err = _dream(models, tmp_path / "out", capsys)

    assert status == 3
    line = error_line(err, "dream")
    assert "non-finite" in line and "no image was written" in line
    assert not list((tmp_path / "out").glob("*.png"))


def _tiny_checkpoint(root: Path) -> Path:
    return save_checkpoint(
        root, step=3, model_state={"w": torch.ones(4, 4)}, ema_state={"ema_model.w": torch.ones(4, 4)},
        optimizer_state={"optimizers": [{"state": {0: {"exp_avg": torch.ones(4, 4)}}, "param_groups": []}]},
        rng_state={"num_processes": 1, "states": []}, trainer_state={"kind": "prior", "step": 3},
    )


@pytest.mark.parametrize("name, key", [("model.safetensors", "w"), ("ema.safetensors", "ema_model.w")])
def test_resume_refuses_a_checkpoint_with_non_finite_weights(tmp_path, name, key):
    path = _tiny_checkpoint(tmp_path)
    weights = load_file(str(path / name))
    weights[key][0, 0] = float("inf")
    save_file(weights, str(path / name), metadata={"format": "pt"})
    _rehash(path)
    with pytest.raises(NonFiniteTensorError, match=rf"{name}: tensor {key}"):
        load_checkpoint(path)


def test_reference_layout_export_is_checked_against_its_sha256_file(model_folder, tmp_path):
    decoder = Decoder.from_checkpoint(model_folder / "decoder")
    pth = export_reference_model(decoder, tmp_path / "model.pth", kind="decoder")
    assert (tmp_path / "model.pth.sha256").read_text().split() == [sha256_file(pth), "model.pth"]
    Decoder.from_checkpoint(pth)  # matches
    _flip_last_byte(pth)
    with pytest.raises(CorruptCheckpointError, match=r"model\.pth does not match its sha256 in model\.pth\.sha256"):
        Decoder.from_checkpoint(pth)


def test_exports_of_non_finite_weights_are_refused_and_write_nothing(model_folder, tmp_path):
    decoder = Decoder.from_checkpoint(model_folder / "decoder")
    with torch.no_grad():
        next(decoder.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteTensorError, match="NaN or infinite"):
        export_model(decoder, tmp_path / "export", kind="decoder")
    with pytest.raises(NonFiniteTensorError, match="NaN or infinite"):
        export_reference_model(decoder, tmp_path / "model.pth", kind="decoder")
    assert list(tmp_path.iterdir()) == []


def test_a_zip_that_is_not_a_torch_file_is_one_clear_line(model_folder, tmp_path, capsys):
    bogus = tmp_path / "decoder.pth"
    with zipfile.ZipFile(bogus, "w") as zf:
        zf.writestr("hello.txt", "not a checkpoint")
    with pytest.raises(CheckpointError, match="zip archive but not a torch checkpoint"):
        Decoder.from_checkpoint(bogus)
    status, _, err = call(dream, ["a cat", "--model-dir", str(model_folder), "--decoder", str(bogus), "--output",
                                  str(tmp_path / "out"), "--device", "cpu"], capsys)
    assert status == 2
    line = error_line(err, "dream")
    assert "not a torch checkpoint" in line and "enforce fail" not in err and "inline_container" not in err
