"""Run by test_training_distributed.py under `accelerate launch` with 2 CPU processes.

Usage: _ddp_train_script.py OUT_DIR. Asserts inside; writes OUT_DIR/rank{r}.json on success.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _training_toys import ToyPrior  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import InitProcessGroupKwargs  # noqa: E402

import dalle2_pytorch.training.checkpoint as ckpt_module  # noqa: E402
from dalle2_pytorch.command_line import exit_fast  # noqa: E402
from dalle2_pytorch.training import DiffusionPriorTrainer  # noqa: E402
from dalle2_pytorch.training.scripts.cli import close_process_group  # noqa: E402

out = Path(sys.argv[1])
accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=60))])
assert accelerator.num_processes == 2, accelerator.num_processes
assert accelerator.distributed_type.value == "MULTI_CPU", accelerator.distributed_type
rank = accelerator.process_index

writes = []
real_write = ckpt_module.write_checkpoint


def recording_write(final_dir, writers, **kw):
    writes.append(str(final_dir))
    return real_write(final_dir, writers, **kw)


ckpt_module.write_checkpoint = recording_write


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def make_trainer():
    torch.manual_seed(0)  # identical initial weights on both ranks
    return DiffusionPriorTrainer(
        ToyPrior(), accelerator=accelerator, lr=1e-2, max_grad_norm=1.0, ema_update_after_step=0, ema_update_every=1
    )


trainer = make_trainer()
torch.manual_seed(100 + rank)  # different noise / dropout per rank
losses = []
for step in range(6):
    g = torch.Generator().manual_seed(1000 * rank + step)  # different data per rank
    x, y = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    if step == 1 and rank == 1:
        y[0, 0] = float("nan")  # a NaN loss on rank 1 only
    losses.append(trainer(text_embed=x, image_embed=y, max_batch_size=3))
    if step == 3 and rank == 0:
        trainer._pending_nonfinite = True  # a problem only rank 0 knows about (no NaN in the grads)
    trainer.update()

assert trainer.num_steps_taken() == 4, trainer.num_steps_taken()
assert trainer.num_nonfinite_skips == 2, trainer.num_nonfinite_skips
params = flat(trainer.unwrapped_prior)
assert torch.isfinite(params).all()
gathered = accelerator.gather(params[None])
assert gathered.shape[0] == 2 and torch.equal(gathered[0], gathered[1]), "parameters differ across ranks"
ema = accelerator.gather(flat(trainer.ema_diffusion_prior.ema_model)[None])
assert torch.equal(ema[0], ema[1]), "EMA parameters differ across ranks"

rng_before_save = torch.get_rng_state()
written = trainer.save(out / "ckpt", epoch=0)
assert (written is not None) == (rank == 0)

# every rank resumes from the checkpoint: same weights, its own RNG state
resumed = make_trainer()
torch.manual_seed(12345)
meta = resumed.load(out / "ckpt")
assert meta["step"] == 4 and resumed.num_nonfinite_skips == 2
assert torch.equal(flat(resumed.unwrapped_prior), params)
assert torch.equal(torch.get_rng_state(), rng_before_save), "RNG state of this rank not restored"
accelerator.wait_for_everyone()

(out / f"rank{rank}.json").write_text(
    json.dumps({"rank": rank, "writes": writes, "losses": [None if l != l else l for l in losses]})
)
accelerator.wait_for_everyone()
close_process_group()
exit_fast(0)  # not the interpreter's teardown, where gloo's threads can abort the process (see run_cli)
