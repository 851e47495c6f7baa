"""Benchmark worker: builds the models, runs workloads and writes timings (run by `bench_api.py`).

This file runs under either interpreter: ours (the repository's `dalle2_pytorch` on PYTHONPATH) or
the reference's scratch virtual environment (`dalle2-pytorch` 1.15.6). It only uses the public API
the two packages share, plus our `dalle2_pytorch.compat` converters to load the reference's state
dicts into our modules, so both sides run the same work with the same weights and inputs.

Two commands (see `python workloads.py -h`):

* `setup`: builds the prior and the decoder with a fixed seed, gives the zero-initialised Unet output
  conv random values (otherwise every Unet output is exactly 0 and the comparison says nothing),
  and saves `prior.pt`, `decoder.pt` (state dicts) and `inputs.pt` into the work directory.
* `run`: loads them, then for each workload runs `warmup` untimed and `repeats` timed calls and
  writes `{side}_{workload}.json` (times in ms) and `{side}_{workload}.pt` (the outputs of the
  last call). With `--compare`, outputs are compared with the other side's `.pt` file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from reference_shim import import_package
from workload_names import SAMPLING_WORKLOADS, WORKLOADS

# ----------------------------------------------------------------------------- configurations

SIZES: dict[str, dict[str, Any]] = {
    "full": dict(
        prior=dict(dim=256, depth=6, dim_head=64, heads=8, max_text_len=77, num_timesteps=1000),
        prior_batch=32, prior_sample_batch=4, prior_sample_steps=64,
        unet=dict(dim=64, dim_mults=(1, 2, 4), self_attn=(False, True, True), max_text_len=77),
        embed_dim=256, unet_image=64, unet_batch=2, decoder_image=32, decoder_batch=2, decoder_steps=25,
    ),
    "quick": dict(
        prior=dict(dim=64, depth=2, dim_head=32, heads=2, max_text_len=16, num_timesteps=1000),
        prior_batch=4, prior_sample_batch=4, prior_sample_steps=4,
        unet=dict(dim=16, dim_mults=(1, 2, 4), self_attn=(False, True, True), max_text_len=16),
        embed_dim=64, unet_image=16, unet_batch=2, decoder_image=16, decoder_batch=2, decoder_steps=3,
    ),
}
COND_SCALE = 2.0
TIMESTEPS = 1000

# ----------------------------------------------------------------------------- models and data


def build_models(pkg: Any, size: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Prior (DiffusionPrior around a DiffusionPriorNetwork) and a one-Unet Decoder, CPU float32."""
    torch.manual_seed(0)
    d = size["embed_dim"]
    net = pkg.DiffusionPriorNetwork(**size["prior"])
    prior = pkg.DiffusionPrior(
        net=net, image_embed_dim=d, timesteps=TIMESTEPS, cond_drop_prob=0.1, condition_on_text_encodings=True
    )
    unet = pkg.Unet(
        **size["unet"], image_embed_dim=d, text_embed_dim=d, cond_on_image_embeds=True, cond_on_text_encodings=True
    )
    decoder = pkg.Decoder(
        unet=unet, image_size=size["decoder_image"], timesteps=TIMESTEPS,
        sample_timesteps=size["decoder_steps"], learned_variance=False,
    )
    return prior, decoder


def randomise_zero_params(module: torch.nn.Module, seed: int = 1) -> None:
    """Gives every all-zero floating-point parameter N(0, 0.02²) values (the Unet's `to_out`)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def padded_encodings(b: int, n: int, d: int, g: torch.Generator) -> torch.Tensor:
    """(b, n, d) text encodings with a random number of tokens per row (>= 4) and zero padding."""
    enc = torch.randn(b, n, d, generator=g)
    lengths = torch.randint(min(4, n), n + 1, (b,), generator=g)
    enc[torch.arange(n)[None, :] >= lengths[:, None]] = 0.0
    return enc


def make_inputs(size: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2024)
    d, bp, bu, bs, bd = (size[k] for k in ("embed_dim", "prior_batch", "unet_batch", "prior_sample_batch", "decoder_batch"))
    lp, lu, s = size["prior"]["max_text_len"], size["unet"]["max_text_len"], size["unet_image"]
    return {
        "prior_image_embed": F.normalize(torch.randn(bp, d, generator=g), dim=-1),
        "prior_noised": torch.randn(bp, d, generator=g) * d**0.5,
        "prior_text_embed": F.normalize(torch.randn(bp, d, generator=g), dim=-1),
        "prior_text_encodings": padded_encodings(bp, lp, d, g),
        "prior_t": torch.randint(0, TIMESTEPS, (bp,), generator=g),
        "sample_text_embed": F.normalize(torch.randn(bs, d, generator=g), dim=-1),
        "sample_text_encodings": padded_encodings(bs, lp, d, g),
        "unet_x": torch.randn(bu, 3, s, s, generator=g),
        "unet_noise": torch.randn(bu, 3, s, s, generator=g),
        "unet_t": torch.randint(0, TIMESTEPS, (bu,), generator=g),
        "unet_image_embed": F.normalize(torch.randn(bu, d, generator=g), dim=-1),
        "unet_text_encodings": padded_encodings(bu, lu, d, g),
        "decoder_image_embed": F.normalize(torch.randn(bd, d, generator=g), dim=-1),
        "decoder_text_encodings": padded_encodings(bd, lu, d, g),
    }


def load_weights(side: str, prior: torch.nn.Module, decoder: torch.nn.Module, workdir: Path) -> list[str]:
    """Loads prior.pt / decoder.pt. Ours goes through the compat converters (whoever wrote the files)."""
    prior_sd = torch.load(workdir / "prior.pt", weights_only=True)
    decoder_sd = torch.load(workdir / "decoder.pt", weights_only=True)
    notes: list[str] = []
    if side == "reference":
        prior.load_state_dict(prior_sd)
        decoder.load_state_dict(decoder_sd)
        return notes
    from dalle2_pytorch.compat.decoder_keys import (
        convert_decoder_state_dict, detect_decoder_layout, load_unet_state_dict, split_unet_state_dicts,
    )
    from dalle2_pytorch.compat.prior_keys import check_prior_network_state, convert_prior_state_dict

    conv = convert_prior_state_dict(prior_sd)
    check_prior_network_state(prior.net, conv)
    prior.net.load_state_dict(conv.network_state_dict())
    for name, value in conv.noise_scheduler.items():
        diff = (getattr(prior.noise_scheduler, name).float() - value.float()).abs().max().item()
        if diff > 1e-5:
            notes.append(f"prior schedule buffer {name} differs by {diff:.2e}")
    unet_state, _, _ = convert_decoder_state_dict(decoder_sd, detect_decoder_layout(decoder_sd))
    for i, state in split_unet_state_dicts(unet_state).items():
        load_unet_state_dict(decoder.unets[i], state, context=f"decoder.pt unet {i + 1}")
    return notes


# ----------------------------------------------------------------------------- workloads
# Each factory returns step(collect) -> outputs (dict of tensors; `collect` asks for gradients too).


def _grads(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}grad:{n}": p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _zero_grad(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


def make_workload(name: str, prior: Any, decoder: Any, x: dict, size: dict) -> Callable[[bool], dict]:
    net, unet = prior.net, decoder.unets[0]
    prior_kw = dict(text_embed=x["prior_text_embed"], text_encodings=x["prior_text_encodings"])
    unet_kw = dict(image_embed=x["unet_image_embed"], text_encodings=x["unet_text_encodings"])

    if name in ("prior_forward", "prior_forward_cfg"):
        net.eval()
        scale = COND_SCALE if name.endswith("cfg") else 1.0

        @torch.no_grad()
        def step(collect: bool) -> dict:
            if scale == 1.0:
                return {"out": net(x["prior_noised"], x["prior_t"], **prior_kw)}
            return {"out": net.forward_with_cond_scale(x["prior_noised"], x["prior_t"], cond_scale=scale, **prior_kw)}

        return step

    if name == "prior_train_step":
        prior.train()

        def step(collect: bool) -> dict:
            _zero_grad(prior)
            torch.manual_seed(1234)  # same t / noise / dropout draws on both sides if they draw alike
            # a fresh tensor every call: the reference scales `image_embed` in place
            loss = prior(image_embed=x["prior_image_embed"].clone(), **prior_kw)
            loss.backward()
            return {"loss": loss.detach(), **(_grads(prior.net, "net.") if collect else {})}

        return step

    if name == "prior_sample_ddim":
        prior.eval()
        cond = dict(text_embed=x["sample_text_embed"], text_encodings=x["sample_text_encodings"])
        shape = (x["sample_text_embed"].shape[0], size["embed_dim"])

        def step(collect: bool) -> dict:
            torch.manual_seed(99)
            return {"sample": prior.p_sample_loop(shape, cond, cond_scale=COND_SCALE, timesteps=size["prior_sample_steps"])}

        return step

    if name in ("unet_forward", "unet_forward_cfg"):
        unet.eval()
        scale = COND_SCALE if name.endswith("cfg") else 1.0

        @torch.no_grad()
        def step(collect: bool) -> dict:
            if scale == 1.0:
                return {"out": unet(x["unet_x"], x["unet_t"], **unet_kw)}
            return {"out": unet.forward_with_cond_scale(x["unet_x"], x["unet_t"], cond_scale=scale, **unet_kw)}

        return step

    if name in ("unet_train_step", "unet_train_step_image_cond"):
        unet.train()
        # image_cond: no text encodings, so the cross-attention context is the few time + image tokens
        kw = {"image_embed": x["unet_image_embed"]} if name.endswith("image_cond") else unet_kw

        def step(collect: bool) -> dict:
            _zero_grad(unet)
            out = unet(x["unet_x"], x["unet_t"], **kw)
            loss = F.mse_loss(out, x["unet_noise"])
            loss.backward()
            return {"loss": loss.detach(), **(_grads(unet, "") if collect else {})}

        return step

    if name == "decoder_sample_ddim":
        decoder.eval()

        def step(collect: bool) -> dict:
            torch.manual_seed(7)
            return {"sample": decoder.sample(
                image_embed=x["decoder_image_embed"], text_encodings=x["decoder_text_encodings"], cond_scale=COND_SCALE
            )}

        return step

    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


# ----------------------------------------------------------------------------- timing and comparison


def time_step(step: Callable[[bool], dict], warmup: int, repeats: int) -> tuple[list[float], list[float], dict]:
    """Runs `warmup` untimed and `repeats` timed calls.

    Returns:
        (wall times in ms, process CPU times in ms (all threads), outputs of the last call).
    """
    for _ in range(warmup):
        step(False)
    wall, cpu = [], []
    for i in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = step(i == repeats - 1)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu, out


def compare(ours: dict, ref: dict) -> dict:
    """Max abs diff and max relative diff (abs diff / max |ref| per tensor) over shared keys."""
    keys = sorted(set(ours) & set(ref))
    if not keys:
        return {"keys": 0}
    abs_diff, rel_diff = 0.0, 0.0
    for k in keys:
        a, b = ours[k].float(), ref[k].float()
        if a.shape != b.shape:
            return {"keys": len(keys), "error": f"shape mismatch for {k}: {tuple(a.shape)} vs {tuple(b.shape)}"}
        d = (a - b).abs().max().item() if a.numel() else 0.0
        abs_diff = max(abs_diff, d)
        rel_diff = max(rel_diff, d / max(b.abs().max().item(), 1e-12))
    return {"keys": len(keys), "only_ours": len(set(ours) - set(ref)), "only_ref": len(set(ref) - set(ours)),
            "max_abs": abs_diff, "max_rel": rel_diff}


def profile_step(step: Callable[[bool], dict], rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    step(False)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        step(False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


# ----------------------------------------------------------------------------- commands


def cmd_setup(args: argparse.Namespace) -> None:
    pkg, note = import_package(args.side)
    size = SIZES[args.size]
    prior, decoder = build_models(pkg, size)
    randomise_zero_params(decoder)
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.save(prior.state_dict(), args.workdir / "prior.pt")
    torch.save(decoder.state_dict(), args.workdir / "decoder.pt")
    torch.save(make_inputs(size), args.workdir / "inputs.pt")
    info = {"built_by": args.side, "size": args.size, "import_note": note}
    (args.workdir / "setup.json").write_text(json.dumps(info))


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    pkg, note = import_package(args.side)
    size = SIZES[args.size]
    prior, decoder = build_models(pkg, size)
    notes = load_weights(args.side, prior, decoder, args.workdir) + ([note] if note else [])
    inputs = torch.load(args.workdir / "inputs.pt", weights_only=True)
    other = "reference" if args.side == "ours" else "ours"
    for name in args.workloads.split(","):
        step = make_workload(name, prior, decoder, inputs, size)
        if args.profile:
            print(f"### {args.side} {name}\n{profile_step(step, args.profile)}", flush=True)
            continue
        # a sampling loop warms itself up in its first steps: no untimed call
        warmup = 0 if name in SAMPLING_WORKLOADS else args.warmup
        times, cpu_times, out = time_step(step, warmup, args.repeats)
        out = {k: v.detach().cpu() for k, v in out.items()}
        torch.save(out, args.workdir / f"{args.side}_{name}.pt")
        result = {"side": args.side, "workload": name, "times_ms": times, "median_ms": statistics.median(times),
                  "cpu_ms": cpu_times,
                  "threads": torch.get_num_threads(), "notes": notes}
        other_file = args.workdir / f"{other}_{name}.pt"
        if args.compare and other_file.exists():
            ref = torch.load(other_file, weights_only=True)
            result["diff"] = compare(out, ref) if args.side == "ours" else compare(ref, out)
        (args.workdir / f"{args.side}_{name}.{args.tag}.json").write_text(json.dumps(result))
        print(json.dumps(result), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("setup", "run"))
    p.add_argument("--side", choices=("ours", "reference"), required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tag", default="r0", help="suffix of the result files (one per round)")
    p.add_argument("--compare", action="store_true", help="compare outputs with the other side's files")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="print a torch.profiler table (ROWS rows) per workload instead of timing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    (cmd_setup if args.command == "setup" else cmd_run)(args)


if __name__ == "__main__":
    sys.exit(main())
