"""GPU benchmark worker (run by `bench_gpu.py`): training steps and sampling of the issue-11 workloads.

Runs under either package: ours (the repository's `dalle2_pytorch` first on PYTHONPATH) or the
reference `dalle2-pytorch` 1.15.6. Only the public API the two share is used to build and run the
models: `DiffusionPriorNetwork` / `DiffusionPrior` / `Unet` / `Decoder`, `DiffusionPrior.forward`
and `Decoder.forward` (loss) for a training step, `DiffusionPrior.p_sample_loop` and
`Decoder.sample` for sampling. The optimiser is `torch.optim.AdamW` on both sides.

Protocol: one JSON command per stdin line, `{"workload": NAME, "variants": [...], "deadline": UNIX
TIME}`; the worker answers `RESULT {json}` lines (one per variant, printed as each finishes) and a
`DONE` line. Variants apply to ours only (the reference runs as it is, "reference"):

| flag | what changes (ours) |
|---|---|
| (none) `eager` | AdamW with PyTorch's default implementation (foreach), norms in float32 under autocast, NCHW |
| `fused` | AdamW(fused=True) |
| `casts` | norms in the activation dtype (`set_norm_upcast(model, False)`, our default) |
| `cl` | channels-last Unets |
| `compile` | `compile_network(..., "blocks")` (per-block torch.compile, as `train.compile: true`) |
| `compile_model` | the whole network compiled |
| `ckpt` | gradient checkpointing |

Named variants: `eager`, `fused`, `casts` = fused+casts, `channels_last` = fused+casts+cl,
`compile` = fused+casts+cl+compile; any `+`-joined set of flags works too (e.g. `fused+casts+compile`).

Timing: `warmup` untimed steps, then `repeats` steps each timed with CUDA events (perf_counter on
CPU); the median is reported. FLOPs of one training step (forward + backward) are counted once per
side with `torch.utils.flop_counter.FlopCounterMode`; MFU = FLOPs / step time / peak.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from contextlib import nullcontext
from typing import Any, Callable

import torch
import torch.nn.functional as F

from reference_shim import import_package

PEAK_FLOPS = {"cuda": 989e12}  # H100/H200 dense bf16
NAMED_VARIANTS = {
    "eager": (),
    "fused": ("fused",),
    "casts": ("fused", "casts"),
    "channels_last": ("fused", "casts", "cl"),
    "compile": ("fused", "casts", "cl", "compile"),
}
FLAGS = ("fused", "casts", "cl", "compile", "compile_model", "ckpt")

# ----------------------------------------------------------------------------- sizes

LAION_PRIOR = dict(dim=768, depth=12, num_timesteps=1000, max_text_len=77, num_time_embeds=1, num_image_embeds=1,
                   num_text_embeds=1, dim_head=64, heads=12, ff_mult=4, norm_out=True, attn_dropout=0.05,
                   ff_dropout=0.05, final_proj=True, normformer=True, rotary_emb=True)
# train_configs/decoder_laion_v1.0.2.json (957 M parameters with learned variance)
LAION_UNET = dict(dim=320, image_embed_dim=768, text_embed_dim=768, cond_dim=512, channels=3, dim_mults=(1, 2, 3, 4),
                  num_resnet_blocks=4, attn_heads=8, attn_dim_head=64, sparse_attn=True, memory_efficient=True,
                  cond_on_text_encodings=True, self_attn=(False, True, True, True), max_text_len=77)
UNET_188M = dict(dim=128, dim_mults=(1, 2, 4, 8), image_embed_dim=768)

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "prior_train": dict(net=LAION_PRIOR, embed=768, batch=256, text_len=77),
        "unet_laion_train": dict(unet=LAION_UNET, embed=768, batch=32, image=64, text_len=77, learned_variance=True),
        "unet188_train": dict(unet=UNET_188M, embed=768, batch=64, image=64, text_len=0, learned_variance=False),
        "prior_sample": dict(net=LAION_PRIOR, embed=768, batch=64, text_len=77, steps=64, cond_scale=2.0),
        "decoder_sample": dict(unet=UNET_188M, embed=768, batch=16, image=64, text_len=0, steps=64, cond_scale=3.5),
    },
    "quick": {
        "prior_train": dict(net=dict(LAION_PRIOR, dim=64, depth=2, dim_head=32, heads=2, max_text_len=16), embed=64,
                            batch=4, text_len=16),
        "unet_laion_train": dict(unet=dict(LAION_UNET, dim=16, image_embed_dim=64, text_embed_dim=64, cond_dim=32,
                                           dim_mults=(1, 2), num_resnet_blocks=1, attn_dim_head=16, attn_heads=2,
                                           self_attn=(False, True), max_text_len=16),
                                 embed=64, batch=2, image=16, text_len=16, learned_variance=True),
        "unet188_train": dict(unet=dict(UNET_188M, dim=16, dim_mults=(1, 2), image_embed_dim=64), embed=64, batch=2,
                              image=16, text_len=0, learned_variance=False),
        "prior_sample": dict(net=dict(LAION_PRIOR, dim=64, depth=2, dim_head=32, heads=2, max_text_len=16), embed=64,
                             batch=2, text_len=16, steps=3, cond_scale=2.0),
        "decoder_sample": dict(unet=dict(UNET_188M, dim=16, dim_mults=(1, 2), image_embed_dim=64), embed=64, batch=2,
                               image=16, text_len=0, steps=3, cond_scale=3.5),
    },
}
WORKLOADS = tuple(SIZES["full"])
TRAIN_WORKLOADS = ("prior_train", "unet_laion_train", "unet188_train")


def parse_variant(name: str) -> tuple[str, ...]:
    """A variant name -> its flags (raises ValueError for an unknown name or flag)."""
    if name in NAMED_VARIANTS:
        return NAMED_VARIANTS[name]
    flags = tuple(f for f in name.split("+") if f)
    unknown = [f for f in flags if f not in FLAGS]
    if unknown or not flags:
        raise ValueError(f"unknown variant {name!r}: use one of {sorted(NAMED_VARIANTS)} or flags {FLAGS} joined by '+'")
    return flags


# ----------------------------------------------------------------------------- models and inputs


def padded_encodings(b: int, n: int, d: int, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """(b, n, d) text encodings with at least 4 real tokens per row and zero padding after them."""
    enc = torch.randn(b, n, d, generator=g)
    lengths = torch.randint(min(4, n), n + 1, (b,), generator=g)
    enc[torch.arange(n)[None, :] >= lengths[:, None]] = 0.0
    return enc.to(device)


def build(pkg: Any, workload: str, size: dict, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of a workload (on `device`, float32) and its inputs."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    b, d = size["batch"], size["embed"]
    with device:
        if workload.startswith("prior"):
            net = pkg.DiffusionPriorNetwork(**size["net"])
            model = pkg.DiffusionPrior(net=net, image_embed_dim=d, timesteps=1000, cond_drop_prob=0.1,
                                       condition_on_text_encodings=True)
            inputs = dict(text_embed=F.normalize(torch.randn(b, d, generator=g), dim=-1).to(device),
                          image_embed=F.normalize(torch.randn(b, d, generator=g), dim=-1).to(device),
                          text_encodings=padded_encodings(b, size["text_len"], d, g, device))
        else:
            unet = pkg.Unet(**size["unet"], cond_on_image_embeds=True)
            model = pkg.Decoder(unet=unet, image_size=size["image"], timesteps=1000, learned_variance=size.get(
                "learned_variance", False), sample_timesteps=size.get("steps"))
            s = size["image"]
            inputs = dict(image=torch.rand(b, 3, s, s, generator=g).to(device),
                          image_embed=F.normalize(torch.randn(b, d, generator=g), dim=-1).to(device))
            if size["text_len"]:
                inputs["text_encodings"] = padded_encodings(b, size["text_len"], d, g, device)
    return model.to(device), inputs


def networks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(model.unets) if hasattr(model, "unets") else [model.net]


# ----------------------------------------------------------------------------- timing


class Timer:
    """Per-step wall times: CUDA events on a GPU, perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def time(self, fn: Callable[[], Any], n: int) -> list[float]:
        times = []
        for _ in range(n):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return times


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


# ----------------------------------------------------------------------------- variants (ours)


def apply_variant(model: torch.nn.Module, flags: tuple[str, ...], args: argparse.Namespace) -> None:
    """Puts ours into the state a variant asks for (norm casts, layout, checkpointing, compile)."""
    from dalle2_pytorch.layers.normalization import set_norm_upcast
    from dalle2_pytorch.training.performance import compile_network, enable_gradient_checkpointing

    set_norm_upcast(model, "casts" not in flags)
    enable_gradient_checkpointing(model, "ckpt" in flags)
    fmt = torch.channels_last if "cl" in flags else torch.contiguous_format
    for net in networks(model):
        if net.__class__.__name__ == "Unet":
            net.to(memory_format=fmt)
    for m in model.modules():  # a previous variant's compile is undone
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None
    if "compile" in flags or "compile_model" in flags:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = max(1, min(32, os.cpu_count() or 1))
        scope = "model" if "compile_model" in flags else "blocks"
        compile_network(model, scope, backend=args.compile_backend)


def make_optimizer(model: torch.nn.Module, fused: bool) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4, fused=True) if fused else torch.optim.AdamW(params, lr=1e-4)


# ----------------------------------------------------------------------------- one workload


def autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def train_step_fn(model, inputs, optimizer, device, dtype) -> Callable[[], None]:
    is_prior = not hasattr(model, "unets")

    def step() -> None:
        with autocast(device, dtype):
            loss = model(**inputs) if is_prior else model(inputs["image"], **{k: v for k, v in inputs.items()
                                                                            if k != "image"}, unet_number=1)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)

    return step


def sample_fn(model, inputs, size, device, dtype) -> Callable[[], None]:
    model.eval()
    if hasattr(model, "unets"):
        def run() -> None:
            with autocast(device, dtype), torch.no_grad():
                model.sample(image_embed=inputs["image_embed"], cond_scale=size["cond_scale"])
    else:
        cond = dict(text_embed=inputs["text_embed"], text_encodings=inputs["text_encodings"])
        shape = (size["batch"], size["embed"])

        def run() -> None:
            with autocast(device, dtype), torch.no_grad():
                model.p_sample_loop(shape, cond, cond_scale=size["cond_scale"], timesteps=size["steps"])
    return run


def profile_step(step: Callable[[], None], device: torch.device, title: str, path: str, rows: int = 30) -> None:
    """Appends a torch.profiler table (device self time, top `rows` kernels/ops) of 2 steps to `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n### {title} (2 steps)\n{table}\n")


def count_flops(step: Callable[[], None]) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            step()
        return float(counter.get_total_flops())
    except Exception as err:  # counting must never lose the timing
        print(f"flop counting failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return None


def run_workload(pkg: Any, side: str, cmd: dict, args: argparse.Namespace, device: torch.device) -> None:
    workload = cmd["workload"]
    size = SIZES[args.size][workload]
    deadline = cmd.get("deadline")
    base = {"side": side, "workload": workload, "device": device_name(device), "dtype": args.dtype,
            "batch": size["batch"], "torch": torch.__version__, "size": args.size}
    variants = cmd.get("variants") or ["eager"]
    if side == "reference":
        variants = ["reference"]
    model = inputs = None
    try:
        model, inputs = build(pkg, workload, size, device)
        base["params_m"] = round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1)
        flops = None
        train = workload in TRAIN_WORKLOADS
        for name in variants:
            if deadline is not None and time.time() > deadline:
                emit({**base, "variant": name, "skipped": "time budget used up before this variant"})
                continue
            flags = () if side == "reference" else parse_variant(name)
            result = {**base, "variant": name, "flags": list(flags)}
            try:
                if side == "ours":
                    apply_variant(model, flags, args)
                model.train(train)
                optimizer = make_optimizer(model, "fused" in flags) if train else None
                fn = (train_step_fn(model, inputs, optimizer, device, args.dtype) if train
                      else sample_fn(model, inputs, size, device, args.dtype))
                reset_peak(device)
                t0 = time.perf_counter()
                fn()  # first call: compilation, cuDNN autotuning, allocator warm-up
                sync(device)
                result["first_step_s"] = round(time.perf_counter() - t0, 2)
                for _ in range(max(args.warmup - 1, 0) if train else 0):  # a sampling run warms itself up
                    fn()
                sync(device)
                times = Timer(device).time(fn, args.repeats if train else args.sample_repeats)
                result.update(step_ms=statistics.median(times), step_ms_all=[round(t, 3) for t in times],
                              peak_gb=peak_gb(device))
                if train and cmd.get("profile_out") and name in (cmd.get("profile") or []):
                    profile_step(fn, device, f"{side} {workload} {name}", cmd["profile_out"])
                if train and flops is None and not ({"compile", "compile_model", "ckpt"} & set(flags)):
                    flops = count_flops(train_step_fn(model, inputs, None, device, args.dtype))
                if train and flops:
                    tflops = flops / (result["step_ms"] / 1e3) / 1e12
                    result.update(flops=flops, tflops=float(f"{tflops:.4g}"))
                    peak = args.peak_tflops * 1e12 if args.peak_tflops else PEAK_FLOPS.get(device.type)
                    if peak:
                        result["mfu"] = round(tflops * 1e12 / peak, 4)
                del optimizer, fn
            except Exception as err:  # one variant failing (OOM, compile error) must not stop the others
                result["error"] = f"{type(err).__name__}: {err}"[:2000]
                traceback.print_exc(file=sys.stderr)
            emit(result)
    except Exception as err:
        emit({**base, "variant": "build", "error": f"{type(err).__name__}: {err}"[:2000]})
        traceback.print_exc(file=sys.stderr)
    finally:
        del model, inputs
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=("ours", "reference"), required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--size", choices=tuple(SIZES), default="full")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--sample-repeats", type=int, default=2)
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak for MFU (default: 989, the H100/H200 dense bf16 peak, on CUDA; no MFU elsewhere)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    pkg, note = import_package(args.side)
    print(f"READY {json.dumps({'side': args.side, 'package': pkg.__file__, 'note': note})}", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        run_workload(pkg, args.side, cmd, args, device)
        print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
