"""Run by test_training_sharded.py under `accelerate launch` with 2 CPU processes (gloo).

Usage: _fsdp_train_script.py OUT_DIR PHASE, PHASE "train" or "resume".

accelerate 1.15 does not shard on CPU: with ACCELERATE_USE_CPU it picks MULTI_CPU (DDP over gloo)
and ignores an FSDP plugin (state.py only turns FSDP on for GPU-like distributed types). PyTorch's
FSDP2 itself works on CPU with gloo, so this script records what accelerate chose and then switches
the accelerator's state to FSDP2 by hand; from there on, accelerate's own FSDP2 preparation
(`fully_shard` of the blocks, optimiser re-pointing) and our trainers run unchanged.

train:  4 steps, checkpoint (step 4), 2 more steps, write the final full weights, then rank 0 is
        killed with SIGKILL (the launcher then stops the other rank).
resume: a fresh trainer loads the checkpoint, takes the same 2 steps; writes its final weights.
Asserts inside; writes OUT_DIR/{phase}_rank{r}.json on success.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs

from dalle2_pytorch.command_line import exit_fast
from dalle2_pytorch.decoder.decoder import Decoder
from dalle2_pytorch.decoder.unet import Unet
from dalle2_pytorch.prior.diffusion_prior import DiffusionPrior
from dalle2_pytorch.prior.network import DiffusionPriorNetwork
from dalle2_pytorch.training import DecoderTrainer, DiffusionPriorTrainer
from dalle2_pytorch.training.scripts.cli import close_process_group
from dalle2_pytorch.training.sharding import full_model_state

faulthandler.enable(all_threads=True)  # an abort in C++ (gloo) prints where every thread was
out, phase = Path(sys.argv[1]), sys.argv[2]
DIM = 16

accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=120))])
assert accelerator.num_processes == 2, accelerator.num_processes
chosen = accelerator.distributed_type.value
assert accelerator.distributed_type == DistributedType.MULTI_CPU, chosen  # accelerate did not shard
plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                        reshard_after_forward=True, cpu_ram_efficient_loading=False)
accelerator.state.fsdp_plugin = plugin
accelerator.state.distributed_type = DistributedType.FSDP
PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState() re-reads it
assert accelerator.is_fsdp2
rank = accelerator.process_index


def prior_trainer() -> DiffusionPriorTrainer:
    torch.manual_seed(0)  # identical initial weights on both ranks
    net = DiffusionPriorNetwork(dim=DIM, depth=2, dim_head=8, heads=2, max_text_len=4, num_timesteps=None,
                                attn_dropout=0.1, ff_dropout=0.1)
    prior = DiffusionPrior(net, image_embed_dim=DIM, timesteps=20, sample_timesteps=4, cond_drop_prob=0.2)
    return DiffusionPriorTrainer(prior, accelerator=accelerator, lr=1e-2, max_grad_norm=1.0,
                                 ema_update_after_step=0, ema_update_every=1)


def batch(step: int) -> dict:
    g = torch.Generator().manual_seed(1000 * rank + step)  # different data per rank
    return dict(text_embed=torch.nn.functional.normalize(torch.randn(4, DIM, generator=g), dim=-1),
                image_embed=torch.nn.functional.normalize(torch.randn(4, DIM, generator=g), dim=-1),
                text_encodings=torch.randn(4, 4, DIM, generator=g))


def train(trainer: DiffusionPriorTrainer, start: int, stop: int) -> list[float]:
    losses = []
    for step in range(start, stop):
        losses.append(trainer(**batch(step), max_batch_size=3))
        trainer.update()
    return losses


def final_weights(trainer: DiffusionPriorTrainer) -> dict:
    online = full_model_state(trainer.unwrapped_prior)  # collective; full on rank 0
    ema = {k: v.clone() for k, v in trainer.ema_diffusion_prior.ema_model.state_dict().items()}
    return {"online": online, "ema": ema}


trainer = prior_trainer()
assert trainer.sharded
from torch.distributed.tensor import DTensor  # noqa: E402

weight = trainer.unwrapped_prior.net.causal_transformer.layers[0][1][1].weight
assert isinstance(weight, DTensor) and weight.to_local().shape[0] * 2 == weight.shape[0], weight.to_local().shape
wrapped = sorted({type(m).__name__ for m in trainer.unwrapped_prior.modules() if type(m).__name__.startswith("FSDP")})
report = {"accelerate_chose": chosen, "wrapped": wrapped, "local_rows": weight.to_local().shape[0]}

if phase == "train":
    report["losses"] = train(trainer, 0, 4)
    written = trainer.save(out / "ckpt", epoch=0)
    assert (written is not None) == (rank == 0)
    report["after_save"] = train(trainer, 4, 6)
    weights = final_weights(trainer)
    samples = None
    if rank == 0:  # the EMA copy is whole: sampling on one rank needs no collective
        torch.save(weights, out / "final_train.pt")
        samples = trainer.sample(text_embed=batch(0)["text_embed"][:2], text_encodings=batch(0)["text_encodings"][:2])
        assert samples.shape == (2, DIM) and torch.isfinite(samples).all()

    # a sharded decoder: train, save, load into a fresh trainer, same weights; EMA sampling on rank 0
    def decoder_trainer() -> DecoderTrainer:
        torch.manual_seed(0)
        unet = Unet(dim=8, dim_mults=(1, 2), cond_dim=8, image_embed_dim=DIM, cond_on_image_embeds=True,
                    attn_heads=2, attn_dim_head=4, num_resnet_blocks=1, self_attn=(False, True))
        return DecoderTrainer(Decoder(unet, image_sizes=(16,), timesteps=20, sample_timesteps=3, learned_variance=False),
                              accelerator=accelerator, lr=1e-3, ema_update_after_step=0, ema_update_every=1)

    dec = decoder_trainer()
    assert dec.sharded
    for step in range(2):
        g = torch.Generator().manual_seed(50 + 10 * rank + step)
        dec(torch.rand(2, 3, 16, 16, generator=g), image_embed=torch.randn(2, DIM, generator=g), unet_number=1)
        dec.update(1)
    dec.save(out / "dec_ckpt")
    dec_weights = full_model_state(dec.unwrapped_decoder)
    other = decoder_trainer()
    other.load(out / "dec_ckpt")
    other_weights = full_model_state(other.unwrapped_decoder)
    if rank == 0:
        assert dec_weights.keys() == other_weights.keys()
        assert all(torch.equal(dec_weights[k], other_weights[k]) for k in dec_weights)
        images = dec.sample(image_embed=torch.randn(2, DIM))
        assert images.shape == (2, 3, 16, 16)
    accelerator.wait_for_everyone()
    (out / f"train_rank{rank}.json").write_text(json.dumps(report))
    accelerator.wait_for_everyone()
    if rank == 0:
        os.kill(os.getpid(), signal.SIGKILL)  # the crash: nothing after the checkpoint is saved
    accelerator.wait_for_everyone()  # rank 1 waits here until the launcher stops it
else:
    meta = trainer.load(out / "ckpt")
    assert meta["step"] == 4 and meta["epoch"] == 0 and trainer.num_steps_taken() == 4, meta
    report["after_resume"] = train(trainer, 4, 6)
    weights = final_weights(trainer)
    if rank == 0:
        torch.save(weights, out / "final_resume.pt")
    (out / f"resume_rank{rank}.json").write_text(json.dumps(report))
    close_process_group()
    # gloo's threads can still hold a finished all-gather's tensors: freed during the interpreter's
    # teardown they abort the process (see run_cli); leave the way the training scripts do
    exit_fast(0)
