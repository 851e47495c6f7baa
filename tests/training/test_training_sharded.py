"""Sharded training (FSDP2) with 2 real CPU processes: trains, checkpoints, is killed, resumes with equal
parameters. accelerate does not shard on CPU (it runs MULTI_CPU and ignores the FSDP plugin), so the
worker script switches the accelerator's state to FSDP2 by hand; everything after that is accelerate's
and PyTorch's real FSDP2 code. The accelerate-launched FSDP2 run on a GPU is in scripts/gpu_check.sh."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dalle2_pytorch.training.checkpoint import load_checkpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, phase: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "ACCELERATE_USE_FSDP": "true",  # what an FSDP accelerate config sets; accelerate ignores it on CPU
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
        str(HERE / "_fsdp_train_script.py"), str(out), phase,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """The "train" phase, run once for this module: (its directory, the launcher's result)."""
    out = tmp_path_factory.mktemp("fsdp")
    return out, _launch(out, "train")


@pytest.mark.slow
def test_fsdp2_two_processes_train_checkpoint_killed_and_resume_equal(killed_run):
    tmp_path, first = killed_run
    reports = [json.loads((tmp_path / f"train_rank{r}.json").read_text()) for r in (0, 1)
               if (tmp_path / f"train_rank{r}.json").exists()]
    assert len(reports) == 2, f"rc={first.returncode}\n{first.stdout[-3000:]}\n{first.stderr[-6000:]}"
    assert first.returncode != 0  # rank 0 was killed after the checkpoint
    assert reports[0]["accelerate_chose"] == "MULTI_CPU"  # why the script had to switch to FSDP2 itself
    assert "FSDPAttention" in reports[0]["wrapped"] and "FSDPFeedForward" in reports[0]["wrapped"]
    assert reports[0]["local_rows"] == 64  # 128 rows of the first feed-forward weight, half per rank

    # the checkpoint the killed run left is complete, unsharded, and written once
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.path.name == "step_00000004" and ckpt.trainer_state["num_processes"] == 2
    assert ckpt.model["net.causal_transformer.layers.0.1.1.weight"].shape == (128, 16)
    assert len(ckpt.rng["states"]) == 2
    assert isinstance(next(iter(ckpt.optimizer["optimizers"][0]["state"])), int)  # index-keyed like unsharded

    second = _launch(tmp_path, "resume")
    assert second.returncode == 0, f"{second.stdout[-3000:]}\n{second.stderr[-6000:]}"
    resumed = [json.loads((tmp_path / f"resume_rank{r}.json").read_text()) for r in (0, 1)]
    for r in (0, 1):  # the same losses after the checkpoint as the run that was killed
        assert resumed[r]["after_resume"] == reports[r]["after_save"]
    a = torch.load(tmp_path / "final_train.pt", weights_only=True)
    b = torch.load(tmp_path / "final_resume.pt", weights_only=True)
    for part in ("online", "ema"):
        assert a[part].keys() == b[part].keys() and len(a[part]) > 20
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


@pytest.mark.slow
def test_a_sharded_checkpoint_resumes_without_sharding(killed_run):
    """The sharded run's checkpoint (gathered, index-keyed optimiser) loads into a plain trainer."""
    from dalle2_pytorch.prior.diffusion_prior import DiffusionPrior
    from dalle2_pytorch.prior.network import DiffusionPriorNetwork
    from dalle2_pytorch.training import DiffusionPriorTrainer

    tmp_path, first = killed_run
    assert (tmp_path / "ckpt").is_dir(), f"{first.stdout[-3000:]}\n{first.stderr[-6000:]}"
    torch.manual_seed(0)
    net = DiffusionPriorNetwork(dim=16, depth=2, dim_head=8, heads=2, max_text_len=4, num_timesteps=None,
                                attn_dropout=0.1, ff_dropout=0.1)
    trainer = DiffusionPriorTrainer(DiffusionPrior(net, image_embed_dim=16, timesteps=20, cond_drop_prob=0.2), lr=1e-2)
    with pytest.warns(UserWarning, match="RNG states"):  # 2 processes saved, 1 resumes: said, not hidden
        meta = trainer.load(tmp_path / "ckpt")
    assert meta["step"] == 4
    ckpt = load_checkpoint(tmp_path / "ckpt")
    for k, v in trainer.unwrapped_prior.state_dict().items():
        assert torch.equal(v, ckpt.model[k]), k
    state = trainer.optimizer.state_dict()["state"]
    saved = ckpt.optimizer["optimizers"][0]["state"]
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[i]["exp_avg"], saved[i]["exp_avg"]) for i in state)
    g = torch.Generator().manual_seed(0)
    loss = trainer(text_embed=torch.randn(4, 16, generator=g), image_embed=torch.randn(4, 16, generator=g),
                   text_encodings=torch.randn(4, 4, 16, generator=g))
    trainer.update()
    assert trainer.num_steps_taken() == 5 and loss == loss
