import json
import pickletools

import pytest
import torch
from _training_toys import ToyDecoder, ToyPrior
from safetensors.torch import load_file

from dalle2_pytorch.serialization import safe_torch_load
from dalle2_pytorch.training import DecoderTrainer, DiffusionPriorTrainer
from dalle2_pytorch.training.export import export_model, export_reference_model, infer_kind
from dalle2_pytorch.version import __version__


class ToyPriorWithSchedule(ToyPrior):
    """Adds a non-persistent schedule buffer under `noise_scheduler.` and a frozen `clip`."""

    def __init__(self):
        super().__init__()
        self.noise_scheduler = torch.nn.Module()
        self.noise_scheduler.register_buffer("betas", torch.linspace(0.1, 0.2, 4), persistent=False)
        self.clip = torch.nn.Linear(2, 2)


def _pickle_globals(path):
    """Globals referenced by the pickle inside a torch zip file."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        data = zf.read(name)
    return {arg for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL") and arg}, data


def test_infer_kind():
    assert infer_kind(ToyPrior()) == "prior" and infer_kind(ToyDecoder()) == "decoder"
    with pytest.raises(ValueError, match="kind="):
        infer_kind(torch.nn.Linear(1, 1))


def test_export_model_contents(tmp_path):
    model = ToyPriorWithSchedule()
    out = export_model(model, tmp_path / "prior", kind="prior")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    header = json.loads((out / "config.json").read_text())
    assert header["format"] == "dalle2_pytorch" and header["kind"] == "prior"
    assert header["version"] == __version__ and header["config"] == model.config
    weights = load_file(str(out / "model.safetensors"))
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
    assert set(weights) == set(expected)
    for k, v in expected.items():
        assert torch.equal(weights[k], v)


def test_export_reference_model_prior(tmp_path):
    model = ToyPriorWithSchedule()
    path = export_reference_model(model, tmp_path / "prior.pth")
    obj = torch.load(path, weights_only=True)  # plain weights-only load, no allow-list needed
    assert set(obj) == {"version", "model"} and obj["version"] == "1.15.6" and isinstance(obj["version"], str)
    assert torch.equal(obj["model"]["noise_scheduler.betas"], model.noise_scheduler.betas)
    assert not any(k.startswith("clip.") for k in obj["model"])
    for k, v in model.state_dict().items():
        if not k.startswith("clip."):
            assert torch.equal(obj["model"][k], v)
    globals_, _ = _pickle_globals(path)
    assert globals_ and all(g.split(" ")[0].split(".")[0] in ("torch", "collections") for g in globals_), globals_
    assert not any("packaging" in g for g in globals_)
    with pytest.raises(ValueError, match="no config"):
        export_reference_model(model, tmp_path / "x.pth", config={"a": 1})


def test_export_reference_model_decoder(tmp_path):
    model = ToyDecoder()
    path = export_reference_model(model, tmp_path / "decoder.pth", config={"decoder": {"x": 1}, "seed": 0})
    obj = safe_torch_load(path)
    assert obj["config"] == {"decoder": {"x": 1}, "seed": 0} and obj["version"] == "1.15.6"
    assert set(obj["model"]) == set(model.state_dict())
    default = safe_torch_load(export_reference_model(model, tmp_path / "d2.pth"))
    assert default["config"] == {"decoder": model.config}


def test_trainer_exports_ema_weights(tmp_path):
    torch.manual_seed(0)
    t = DecoderTrainer(ToyDecoder(), ema_update_after_step=0, ema_update_every=1)
    for _ in range(3):
        for u in (1, 2):
            t(torch.rand(2, 3, 4, 4), unet_number=u)
            t.update(u)
    path = t.export_reference_model(tmp_path / "model.pth", version="9.9.9")
    obj = safe_torch_load(path)
    assert obj["version"] == "9.9.9"
    ema_w = t.ema_unets[0].ema_model.conv_in.weight
    assert torch.equal(obj["model"]["unets.0.conv_in.weight"], ema_w)
    assert not torch.equal(ema_w, t.unwrapped_decoder.unets[0].conv_in.weight)
    # the online unets are back in place
    assert t.unwrapped_decoder.unets[0] is not t.ema_unets[0].ema_model

    # the exported reference "model" file loads back into a fresh trainer (online and EMA)
    fresh = DecoderTrainer(ToyDecoder())
    meta = fresh.load(path)
    assert meta["version"] == "9.9.9"
    assert torch.equal(fresh.unwrapped_decoder.unets[0].conv_in.weight, ema_w)
    assert torch.equal(fresh.ema_unets[0].ema_model.conv_in.weight, ema_w)

    pt = DiffusionPriorTrainer(ToyPrior())
    out = pt.export_model(tmp_path / "prior_release")
    assert json.loads((out / "config.json").read_text())["kind"] == "prior"
