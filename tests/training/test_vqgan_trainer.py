"""VQGanVAETrainer (folder of images -> trained VAE) and the train_vqgan.py script, on tiny images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_pytorch.training.checkpoint import list_checkpoints, verify_checkpoint
from dalle2_pytorch.training.vqgan_trainer import VQGanVAETrainer
from dalle2_pytorch.vqgan_vae import VQGanVAE
from tests.vqgan_vae.helpers import TINY, StandInVGG


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """24 PNGs of coloured squares on plain backgrounds, in two subfolders (searched recursively)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(24):
        img = np.full((20, 20, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        x, y = rng.integers(0, 12, 2)
        img[y:y + 8, x:x + 8] = rng.integers(0, 255, 3)
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(img).save(sub / f"{i}.png")
    return folder


def make_trainer(folder, results, **kwargs):
    torch.manual_seed(0)
    vae = kwargs.pop("vae", None) or VQGanVAE(**TINY, vgg=StandInVGG())
    defaults = dict(num_train_steps=3, lr=1e-3, batch_size=4, folder=folder, grad_accum_every=1,
                    save_results_every=2, save_model_every=2, results_folder=results, valid_frac=0.2,
                    ema_update_after_step=0, ema_update_every=1, apply_grad_penalty_every=2, device="cpu")
    return VQGanVAETrainer(vae, **{**defaults, **kwargs})


def test_gan_training_checkpoints_resume_and_export(image_folder, tmp_path):
    trainer = make_trainer(image_folder, tmp_path / "run")
    assert len(trainer.ds) + len(trainer.valid_ds) == 24 and len(trainer.valid_ds) == 5
    vgg_ids = {id(p) for p in trainer.vae.vgg.parameters()}
    optimised = [p for g in trainer.optim.param_groups + trainer.discr_optim.param_groups for p in g["params"]]
    assert not vgg_ids & {id(p) for p in optimised}  # the perceptual network is never trained
    before = {k: v.clone() for k, v in trainer.vae.discr.state_dict().items()}
    logs = trainer.train_step()
    assert {"loss", "discr_loss", "valid_psnr", "valid_ema_psnr"} <= set(logs)  # step 0 writes results
    assert any(not torch.equal(before[k], v) for k, v in trainer.vae.discr.state_dict().items())
    assert (tmp_path / "run" / "samples" / "0.png").is_file() and (tmp_path / "run" / "samples" / "0.ema.png").is_file()
    trainer.train()
    assert trainer.num_steps == 3
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [c.name for c in checkpoints] == ["step_00000002", "step_00000003"]
    for c in checkpoints:
        verify_checkpoint(c)
    # a new trainer in the same folder resumes from the newest checkpoint
    resumed = make_trainer(image_folder, tmp_path / "run", num_train_steps=4)
    assert resumed.num_steps == 3
    for (k, a), b in zip(resumed.vae.state_dict().items(), trainer.vae.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(resumed.ema_vae.ema_model.enc_dec.encoders[0].weight, trainer.ema_vae.ema_model.enc_dec.encoders[0].weight)
    resumed.train()
    assert resumed.num_steps == 4
    # the export is the EMA VAE, readable by from_checkpoint and as the reference's state dict
    loaded = VQGanVAE.from_checkpoint(tmp_path / "run" / "vae")
    images = torch.rand(2, 3, 16, 16)
    ema = resumed.ema_vae.ema_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), ema(images))
    from dalle2_pytorch.serialization import safe_torch_load

    reference_layout = safe_torch_load(tmp_path / "run" / "vae.pt")
    assert set(reference_layout) == set(ema.state_dict()) and any(k.startswith("discr.") for k in reference_layout)
    eval_copy = resumed.eval_vae()
    assert eval_copy.discr is None and not eval_copy.training
    resumed.eval()  # nn.Module.eval() still works (train(False) only sets the mode)
    assert not resumed.training and resumed.num_steps == 4


def test_training_reduces_the_reconstruction_error(image_folder, tmp_path):
    vae = VQGanVAE(**{**TINY, "dim": 32, "vq_codebook_size": 32}, use_vgg_and_gan=False)
    trainer = make_trainer(image_folder, tmp_path / "run", vae=vae, num_train_steps=40, save_results_every=39,
                           save_model_every=100, valid_frac=0.0, ema_update_after_step=100)
    first = trainer.train_step()
    assert "discr_loss" not in first  # no discriminator: autoencoder steps only
    last = trainer.train()
    assert last["valid_psnr"] > first["valid_psnr"] + 3.0, (first["valid_psnr"], last["valid_psnr"])


def test_bad_inputs(image_folder, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        make_trainer(tmp_path / "empty", tmp_path / "run")
    with pytest.raises(TypeError, match="VQGanVAE"):
        VQGanVAETrainer(torch.nn.Linear(2, 2), num_train_steps=1, lr=1e-3, batch_size=2, folder=image_folder,
                        grad_accum_every=1)
    with pytest.raises(ValueError, match="grad_accum_every"):
        make_trainer(image_folder, tmp_path / "run", grad_accum_every=0)


def test_train_vqgan_script_on_the_demo_dataset(tmp_path, capsys):
    from train_vqgan import main

    config = {
        "vae": {**TINY, "use_vgg_and_gan": False},
        "data": {"folder": str(tmp_path / "images"), "demo": {"num_train": 24, "num_heldout": 8, "image_size": 16}},
        "train": {"num_train_steps": 3, "lr": 1e-3, "batch_size": 4, "save_results_every": 2, "save_model_every": 2,
                  "results_folder": str(tmp_path / "run"), "valid_frac": 0.2},
    }
    path = tmp_path / "vqgan.json"
    path.write_text(json.dumps(config))
    assert main(["--config_file", str(path), "--cpu"]) == 0
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 24
    metrics = json.loads((tmp_path / "run" / "heldout_metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["heldout"]["num_images"] == 8 and metrics["heldout"]["psnr"] > 0
    assert "held-out reconstruction" in capsys.readouterr().out
    # a typo in the config is one clear line and exit status 2
    from dalle2_pytorch.training.scripts.cli import run_cli

    config["train"]["lerning_rate"] = 1.0
    path.write_text(json.dumps(config))
    assert run_cli(main, ["--config_file", str(path)]) == 2
    assert "lerning_rate" in capsys.readouterr().err


def test_shipped_tiny_config_parses():
    from dalle2_pytorch.config.vqgan import TrainVQGanVAEConfig

    root = Path(__file__).resolve().parents[2]
    config = TrainVQGanVAEConfig.from_json_path(root / "train_configs" / "vqgan_tiny_cpu.json")
    vae = config.vae.create()
    assert vae.config["encdec_resnet_groups"] == 8 and vae.image_size == config.data.demo.image_size
