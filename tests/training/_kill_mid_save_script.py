"""Run by test_training_fault_injection.py: trains a toy prior, checkpoints at step 3, trains to
step 5 and starts a second checkpoint that pauses after writing model.safetensors (printing
PAUSED) so the test can SIGKILL it mid-write.

Usage: _kill_mid_save_script.py OUT_DIR train|resume. `train` also writes OUT_DIR/mem_step3.pt
and mem_step5.pt (the in-memory state at those steps); `resume` (the restart after the kill) loads
the newest valid checkpoint, checks it against mem_step3.pt, trains to step 5, checks against
mem_step5.pt, saves and prints RESUMED OK. Both run in fresh processes with the same thread
settings, so the comparison is bit-exact.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _training_toys import ToyPrior  # noqa: E402

import dalle2_pytorch.training.checkpoint as ckpt_module  # noqa: E402
from dalle2_pytorch.training import DiffusionPriorTrainer  # noqa: E402

TRAINER_KWARGS = dict(lr=1e-2, warmup_steps=2, max_grad_norm=1.0, ema_update_after_step=0, ema_update_every=1)


def make_trainer(seed: int = 0) -> DiffusionPriorTrainer:
    torch.manual_seed(seed)
    return DiffusionPriorTrainer(ToyPrior(), **TRAINER_KWARGS)


def batch(step: int):
    g = torch.Generator().manual_seed(step)
    return torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)


def train(trainer: DiffusionPriorTrainer, start: int, stop: int) -> None:
    for step in range(start, stop):
        x, y = batch(step)
        trainer(text_embed=x, image_embed=y, max_batch_size=4)
        trainer.update()


def memory_state(trainer: DiffusionPriorTrainer) -> dict:
    return {
        "model": {k: v.clone() for k, v in trainer.unwrapped_prior.state_dict().items()},
        "ema": {k: v.clone() for k, v in trainer.ema_diffusion_prior.state_dict().items()},
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),  # live tensors otherwise
        "step": trainer.num_steps_taken(),
    }


def assert_same_state(actual: dict, expected: dict) -> None:
    assert actual["step"] == expected["step"], (actual["step"], expected["step"])
    for part in ("model", "ema"):
        for k, v in expected[part].items():
            assert torch.equal(actual[part][k], v), (part, k)
    exp_opt, act_opt = expected["optimizer"], actual["optimizer"]
    assert exp_opt["param_groups"] == act_opt["param_groups"]
    for idx, state in exp_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(act_opt["state"][idx][name], value), (idx, name)


def resume(out: Path) -> None:
    trainer = make_trainer(seed=42)  # different init and RNG: everything must come from the checkpoint
    meta = trainer.load(out / "ckpt")
    assert meta["step"] == 3, meta
    assert_same_state(memory_state(trainer), torch.load(out / "mem_step3.pt", weights_only=True))
    train(trainer, 3, 5)
    assert_same_state(memory_state(trainer), torch.load(out / "mem_step5.pt", weights_only=True))
    trainer.save(out / "ckpt")
    print("RESUMED OK", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    if sys.argv[2] == "resume":
        resume(out)
        sys.exit(0)
    trainer = make_trainer()
    train(trainer, 0, 3)
    trainer.save(out / "ckpt")
    torch.save(memory_state(trainer), out / "mem_step3.pt")
    train(trainer, 3, 5)
    torch.save(memory_state(trainer), out / "mem_step5.pt")

    real_fsync = ckpt_module._fsync_file

    def pausing_fsync(path: Path) -> None:
        real_fsync(path)
        if path.name == "model.safetensors":
            print("PAUSED", flush=True)
            time.sleep(600)

    ckpt_module._fsync_file = pausing_fsync
    trainer.save(out / "ckpt")
    print("NOT KILLED", flush=True)
