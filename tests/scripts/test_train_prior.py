"""`train_prior.py` end to end: real embedding files, real checkpoints, real accelerate (CPU)."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_prior
from dalle2_pytorch.prior.diffusion_prior import DiffusionPrior
from dalle2_pytorch.training.scripts.cli import ConfigError, apply_override
from tests.scripts._script_helpers import CONFIGS, REPO, prior_argv, read_metrics, train_losses

STEPS_PER_EPOCH = 7  # 56 training embeddings, batch 8


def _checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def _same_files(a: Path, b: Path, names=("model.safetensors", "ema.safetensors")) -> None:
    for name in names:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), f"{name}:{k}"


def test_prior_trains_evaluates_saves_and_exports(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert train_prior.main(prior_argv(tiny_data, run, "--eval-every-steps", "14", "--save-every-steps", "14")) == 0

    records = read_metrics(run)
    losses = train_losses(records)
    assert [s for s, _ in losses] == list(range(1, 6 * STEPS_PER_EPOCH + 1))
    first = sum(v for _, v in losses[:5]) / 5
    last = sum(v for _, v in losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)

    evals = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in evals] == [14, 28, 42]
    assert evals[-1]["val/loss_ema"] < evals[0]["val/loss_ema"]
    for steps in (16, 100):  # eval_timesteps of the tiny config
        for name in ("sim_pred_image", "sim_pred_text", "sim_unrelated_caption", "sim_pred_text_minus_baseline"):
            assert math.isfinite(evals[-1][f"val/{name}[steps={steps}]"])
    # the prior learns to map text to image embeddings (val rows repeat the train captions)
    assert evals[-1]["val/sim_pred_image[steps=100]"] > evals[-1]["val/sim_text_image"] + 0.5
    assert any("test/loss_ema" in r for r in records)

    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000028", "step_00000042"]
    state = json.loads((_checkpoint(run, 42) / "trainer_state.json").read_text())
    assert state["step"] == 42 and state["epoch"] == 6 and state["samples_seen"] == 6 * 56
    assert (run / "best.ckpt" / "manifest.json").is_file()
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 1e-3

    exported = DiffusionPrior.from_checkpoint(run / "export")
    ema = load_file(str(_checkpoint(run, 42) / "ema.safetensors"))
    for k, v in exported.state_dict().items():
        assert torch.equal(v, ema[f"ema_model.{k}"]), k
    config = json.loads((run / "config.json").read_text())
    reference = DiffusionPrior.from_checkpoint(run / "model.pth", config=config)
    for k, v in exported.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k]), k
    gen = torch.Generator().manual_seed(0)
    out = exported.sample(text_embed=torch.randn(3, 32), text_encodings=torch.randn(3, 8, 32), generator=gen)
    assert out.shape == (3, 32) and torch.isfinite(out).all()


def test_prior_resume_continues_exactly(tiny_data, tmp_path):
    """10 steps, stop, resume to 20 == 20 steps in one go (weights, EMA, optimiser, metrics)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train_prior.main(prior_argv(tiny_data, whole, "--max-steps", "20")) == 0
    assert train_prior.main(prior_argv(tiny_data, split, "--max-steps", "10")) == 0
    assert json.loads((_checkpoint(split, 10) / "trainer_state.json").read_text())["metadata"]["epoch_offset"] == 24
    assert train_prior.main(prior_argv(tiny_data, split, "--max-steps", "20")) == 0

    steps = [s for s, _ in train_losses(read_metrics(split))]
    assert steps == list(range(1, 21))  # continued at 11, not 1
    assert train_losses(read_metrics(split)) == train_losses(read_metrics(whole))
    _same_files(_checkpoint(whole, 20), _checkpoint(split, 20))
    opt_a = torch.load(_checkpoint(whole, 20) / "optimizer.pt", weights_only=True)
    opt_b = torch.load(_checkpoint(split, 20) / "optimizer.pt", weights_only=True)
    for sa, sb in zip(opt_a["optimizers"][0]["state"].values(), opt_b["optimizers"][0]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert opt_a["schedulers"] == opt_b["schedulers"]


def test_prior_damaged_newest_checkpoint_falls_back(tiny_data, tmp_path, caplog):
    run = tmp_path / "run"
    assert train_prior.main(prior_argv(tiny_data, run, "--max-steps", "14", "--save-every-steps", "7")) == 0
    newest = _checkpoint(run, 14) / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-10:] = b"\x00" * 10  # bit rot: same size, wrong hash
    newest.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING):
        assert train_prior.main(prior_argv(tiny_data, run, "--max-steps", "16")) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipping damaged checkpoint" in m and "step_00000014" in m for m in messages)
    steps = [s for s, _ in train_losses(read_metrics(run))]
    assert steps == list(range(1, 17))  # records after step 7 were dropped, training resumed at 8


def test_prior_sigterm_saves_a_checkpoint_and_resumes(tiny_data, tmp_path):
    """A pre-emption notice (SIGTERM) ends the run after a checkpoint; the next run continues it."""
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = prior_argv(tiny_data, run, "--override", "train.epochs=1000")
    proc = subprocess.Popen([sys.executable, str(REPO / "train_prior.py"), *argv], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "metrics.jsonl").exists() and len(train_losses(read_metrics(run))) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr
    assert "stopped by a signal" in stderr
    stopped = max(s for s, _ in train_losses(read_metrics(run)))
    assert (_checkpoint(run, stopped) / "manifest.json").is_file()

    argv = prior_argv(tiny_data, run, "--override", "train.epochs=1000", "--max-steps", str(stopped + 2))
    assert train_prior.main(argv) == 0
    assert [s for s, _ in train_losses(read_metrics(run))] == list(range(1, stopped + 3))


def test_prior_nonfinite_loss_is_skipped_logged_and_never_saved(tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = DiffusionPrior.p_losses

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 and self.training else loss

    monkeypatch.setattr(DiffusionPrior, "p_losses", flaky)
    run = tmp_path / "run"
    assert train_prior.main(prior_argv(tiny_data, run, "--max-steps", "5")) == 0
    records = [r for r in read_metrics(run) if "train/nonfinite_skips" in r]
    assert [r["train/nonfinite_skips"] for r in records] == [0, 0, 1, 1, 1, 1]
    assert records[2]["train/loss"] is None and records[2]["train/skipped_step"] is True
    assert [r["step"] for r in records] == [1, 2, 2, 3, 4, 5]  # the skipped update took no step
    for name in ("model.safetensors", "ema.safetensors"):
        for k, v in load_file(str(_checkpoint(run, 5) / name)).items():
            assert torch.isfinite(v.float()).all(), k


def test_prior_without_text_encodings_or_ema_uses_text_embeddings(tiny_data, tmp_path):
    """The reference's non-text-conditioned path was broken; here it trains on text_emb files."""
    run = tmp_path / "run"
    argv = prior_argv(
        tiny_data, run, "--max-steps", "4",
        "--override", "prior.condition_on_text_encodings=false",
        "--override", "prior.clip=null",
        "--override", "data.meta_url=null",
        "--override", f"data.text_url={tiny_data['text_url']}",
        "--override", "train.use_ema=false",  # crashed in the reference
    )
    assert train_prior.main(argv) == 0
    records = read_metrics(run)
    losses = [v for _, v in train_losses(records)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert any("val/loss" in r for r in records) and not any("val/loss_ema" in r for r in records)
    prior = DiffusionPrior.from_checkpoint(run / "export")
    online = load_file(str(_checkpoint(run, 4) / "model.safetensors"))
    assert not prior.condition_on_text_encodings
    assert all(torch.equal(v, online[k]) for k, v in prior.state_dict().items())


def test_prior_wandb_offline(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    argv = prior_argv(tiny_data, run, "--max-steps", "3", "--log-every", "1",
                      "--override", "tracker.log.log_type=wandb", "--override", "tracker.log.wandb_project=tests")
    assert train_prior.main(argv) == 0
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


def test_prior_dry_run_writes_nothing(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_prior.main(prior_argv(tiny_data, run, "--dry-run")) == 0
    assert "dry run: prior with" in capsys.readouterr().out
    assert not run.exists()


def test_prior_no_resume_refuses_a_folder_with_checkpoints(tiny_data, tmp_path):
    from dalle2_pytorch.training.scripts.run_folder import RunFolderError

    run = tmp_path / "run"
    assert train_prior.main(prior_argv(tiny_data, run, "--max-steps", "1")) == 0
    with pytest.raises(RunFolderError, match="--resume.*--start-over"):
        train_prior.main(prior_argv(tiny_data, run, "--no-resume"))


def test_prior_bad_config_names_the_key(tmp_path):
    config = json.loads((CONFIGS / "prior_tiny_cpu.json").read_text())
    config["train"]["lerning_rate"] = config["train"].pop("lr")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"train: unknown key 'lerning_rate'.*nearest valid key: 'lr'"):
        train_prior.main(["--config_file", str(bad)])

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "train_prior.py"), "--config_file", str(bad)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "lerning_rate" in proc.stderr and "'lr'" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_data_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.image_url"):
        train_prior.main(["--config_file", str(CONFIGS / "prior_tiny_cpu.json"),
                          "--override", f"data.image_url={tmp_path / 'nowhere'}"])


def test_apply_override_paths_and_values():
    data = {"train": {"lr": 1.0}, "decoder": {"unets": [{"dim": 8}, {"dim": 16}]}}
    apply_override(data, "train.lr=3e-4")
    apply_override(data, "decoder.unets.1.dim=32")
    apply_override(data, "train.eval_timesteps=[16, 64]")
    apply_override(data, "tracker.data_path=runs/a b")
    apply_override(data, "prior.clip=null")
    assert data["train"] == {"lr": 3e-4, "eval_timesteps": [16, 64]}
    assert data["decoder"]["unets"][1]["dim"] == 32
    assert data["tracker"]["data_path"] == "runs/a b" and data["prior"]["clip"] is None
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_override(data, "train.lr")
    with pytest.raises(ConfigError, match="index"):
        apply_override(data, "decoder.unets.5.dim=1")
