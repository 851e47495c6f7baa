"""Trains, saves and loads the demo's small CLIP (contrastive loss of Radford et al. 2021).

The model is a :class:`~dalle2_pytorch.clip_adapters.SmallCLIP` built from ``torch.nn`` parts
only: width 64, a 2-layer text transformer over a ~50-word vocabulary (``WordTokenizer``) and a
4-layer CNN on 32 px images whose embedding keeps the object's position (a 4x4 pooled map beside the
mean). Training: AdamW, batch 64, linear warm-up and cosine decay; about 2 minutes for the demo's
steps on one CPU core. (Earlier demos used x-clip's ``CLIP`` with a mean-pooled CNN; its folders
still load, see :mod:`dalle2_pytorch.clip_adapters.clip_folder`.)

Output folder: the small-CLIP folder format of :mod:`dalle2_pytorch.clip_adapters.clip_folder`
(``clip.safetensors`` + ``clip_config.json`` with "train", "data", "metrics", "finished" added).
``load_clip(folder)`` returns ``(SmallCLIP, WordTokenizer)``; ``load_clip_folder(folder)`` gives the
adapter the rest of the package uses. A folder that already holds a finished model trained with
the same settings on the same data is reused instead of retrained.

CLI: ``python -m dalle2_pytorch.demo.train_clip --data DATA_DIR --out OUT_DIR --steps 1500``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from dalle2_pytorch.clip_adapters.base import resize_image
from dalle2_pytorch.clip_adapters.clip_folder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_small_clip,
    save_small_clip,
)
from dalle2_pytorch.clip_adapters.small_clip import DEFAULT_SMALL_CLIP_KWARGS, SmallCLIP
from dalle2_pytorch.demo.captions import caption_for, prompt_for
from dalle2_pytorch.demo.shapes import (
    COLOURS, POSITIONS, SHAPES, DatasetInfo, ShapeAttributes, render, sample_attributes, sample_heldout_attributes,
)
from dalle2_pytorch.demo.text_tokenizer import WordTokenizer

__all__ = [
    "DEFAULT_CLIP_KWARGS", "ClipTrainResult", "build_clip", "encode_images", "encode_texts", "evaluate_clip",
    "load_clip", "load_split", "save_clip", "train_clip",
]


#: ``SmallCLIP`` keyword arguments of the demo model (``num_text_tokens`` comes from the tokenizer).
DEFAULT_CLIP_KWARGS: dict = {**DEFAULT_SMALL_CLIP_KWARGS, "image_widths": [32, 64], "text_seq_len": 16}
_MAX_LOG_TEMPERATURE = math.log(100.0)  # clamp as in CLIP


@dataclass
class ClipTrainResult:
    """``clip`` (eval mode) and ``tokenizer``; ``metrics`` from ``evaluate_clip``; ``reused`` if not retrained."""

    clip: SmallCLIP
    tokenizer: WordTokenizer
    out_dir: Path
    metrics: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    reused: bool = False


# ----------------------------------------------------------------------------------------------
# data


def load_split(shards: Sequence[str], image_size: int) -> tuple[torch.Tensor, list[str], list[dict]]:
    """Reads webdataset shards into memory.

    Returns:
        images (n, 3, image_size, image_size) uint8 (antialiased bicubic resize, as the adapter does),
        captions (n,), attribute dicts (n,).
    """
    import webdataset as wds

    if not shards:
        raise ValueError("no shards to read")
    images, captions, attrs = [], [], []
    for sample in wds.WebDataset(list(shards), shardshuffle=False, empty_check=False):
        key = "png" if "png" in sample else "jpg"
        pil = Image.open(io.BytesIO(sample[key])).convert("RGB")
        images.append(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
        captions.append(sample["txt"].decode("utf-8"))
        attrs.append(json.loads(sample["json"]))
    batch = torch.stack(images)
    resized = torch.cat([
        (resize_image(chunk.float() / 255, (image_size, image_size)).clamp(0, 1) * 255).round().to(torch.uint8)
        for chunk in batch.split(1024)
    ])
    return resized, captions, attrs


# ----------------------------------------------------------------------------------------------
# model


def build_clip(model_kwargs: dict) -> SmallCLIP:
    """A fresh ``SmallCLIP`` from ``model_kwargs`` (``DEFAULT_CLIP_KWARGS`` plus ``num_text_tokens``)."""
    return SmallCLIP(**model_kwargs)


def encode_texts(clip: SmallCLIP, tokens: torch.Tensor) -> torch.Tensor:
    """(b, n) token ids -> (b, dim_latent) l2-normalised text latents."""
    return clip.encode_text(tokens)[0]


def encode_images(clip: SmallCLIP, images: torch.Tensor) -> torch.Tensor:
    """(b, 3, s, s) images in [0, 1] at the CLIP size -> (b, dim_latent) l2-normalised image latents."""
    return clip.encode_image(images)[0]


def save_clip(clip: SmallCLIP, tokenizer: WordTokenizer, out_dir: str | os.PathLike, model_kwargs: dict, **extra) -> Path:
    """Writes the small-CLIP folder (``clip_adapters.clip_folder.save_small_clip``)."""
    return save_small_clip(clip, tokenizer, out_dir, model_kwargs, **extra)


def load_clip(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SmallCLIP, WordTokenizer]:
    """``(SmallCLIP in eval mode, WordTokenizer)`` saved by ``train_clip``."""
    clip, tokenizer, _ = load_small_clip(folder, device)
    return clip, tokenizer


# ----------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate_clip(
    clip: SmallCLIP,
    tokenizer: WordTokenizer,
    info: DatasetInfo,
    *,
    val: tuple[torch.Tensor, list[str], list[dict]] | None = None,
    num_renders: int = 500,
    seed: int = 1234,
    chunk: int = 64,
) -> dict[str, float]:
    """Retrieval and zero-shot metrics of a trained demo CLIP.

    * ``val_t2i_top1``: text -> image retrieval among ``chunk`` same-batch val candidates (chance
      1/chunk); ``val_t2i_top1_attr``: the retrieved image at least has the caption's colour and shape.
    * ``{heldout,seen}_colour_acc`` / ``_shape_acc`` / ``_both_acc``: zero-shot classification of fresh
      renders of held-out (never trained) / seen (colour, shape) pairs, by the best of all
      ``"a {colour} {shape}"`` prompts.
    * ``heldout_colour_contrast``: fraction of held-out renders whose own prompt beats the same
      prompt with each other colour (all of them).
    * ``seen_position_acc``: small shapes of seen pairs, classified among the nine
      ``"a {colour} {shape} {position}"`` prompts of their own colour and shape (chance 1/9).
    """
    was_training = clip.training
    clip.eval()
    device = next(clip.parameters()).device
    size = clip.image_size
    metrics: dict[str, float] = {}
    if val is None and info.val_shards:
        val = load_split(info.val_shards, size)
    if val is not None and len(val[1]) >= chunk:
        images, captions, attrs = val
        hits, attr_hits, total = 0, 0, 0
        for start in range(0, len(captions) - chunk + 1, chunk):
            img = encode_images(clip, images[start : start + chunk].to(device).float() / 255)
            txt = encode_texts(clip, tokenizer(captions[start : start + chunk]).to(device))
            best = (txt @ img.T).argmax(-1).cpu()
            for i, j in enumerate(best.tolist()):
                a, b = attrs[start + i], attrs[start + j]
                hits += int(i == j)
                attr_hits += int(a["colour"] == b["colour"] and a["shape"] == b["shape"])
            total += chunk
        metrics.update(val_t2i_top1=hits / total, val_t2i_top1_attr=attr_hits / total, val_chance=1 / chunk)

    combos = [(c, s) for c in COLOURS for s in SHAPES]
    prompt_latents = encode_texts(clip, tokenizer([prompt_for(c, s) for c, s in combos]).to(device))
    rng = np.random.default_rng(seed)
    for name, sampler in (
        ("heldout", lambda: sample_heldout_attributes(rng, info.heldout)),
        ("seen", lambda: sample_attributes(rng, info.heldout)),
    ):
        attrs_list: list[ShapeAttributes] = [sampler() for _ in range(num_renders)]
        pixels = torch.stack([
            torch.from_numpy(np.asarray(render(a, info.image_size)).copy()).permute(2, 0, 1) for a in attrs_list
        ]).float() / 255
        img = encode_images(clip, resize_image(pixels, (size, size)).clamp(0, 1).to(device))
        pred = (img @ prompt_latents.T).argmax(-1).cpu().tolist()
        colour_ok = [combos[p][0] == a.colour for p, a in zip(pred, attrs_list)]
        shape_ok = [combos[p][1] == a.shape for p, a in zip(pred, attrs_list)]
        metrics[f"{name}_colour_acc"] = float(np.mean(colour_ok))
        metrics[f"{name}_shape_acc"] = float(np.mean(shape_ok))
        metrics[f"{name}_both_acc"] = float(np.mean([c and s for c, s in zip(colour_ok, shape_ok)]))
        if name == "heldout":
            sims = img @ prompt_latents.T  # (n, combos)
            wins = []
            for row, a in enumerate(attrs_list):
                own = sims[row, combos.index((a.colour, a.shape))]
                others = [sims[row, combos.index((c, a.shape))] for c in COLOURS if c != a.colour]
                wins.append(bool(all(own > o for o in others)))
            metrics["heldout_colour_contrast"] = float(np.mean(wins))
    hits = []
    for _ in range(num_renders // 5):
        a = sample_attributes(rng, info.heldout)
        while a.size != "small":
            a = sample_attributes(rng, info.heldout)
        pixels = torch.from_numpy(np.asarray(render(a, info.image_size)).copy()).permute(2, 0, 1)[None].float() / 255
        img = encode_images(clip, resize_image(pixels, (size, size)).clamp(0, 1).to(device))
        names = list(POSITIONS)
        txt = encode_texts(clip, tokenizer([prompt_for(a.colour, a.shape, position=p) for p in names]).to(device))
        hits.append(names[int((img @ txt.T).argmax())] == a.position)
    metrics["seen_position_acc"] = float(np.mean(hits))
    clip.train(was_training)
    return metrics


# ----------------------------------------------------------------------------------------------
# training


def _decay_groups(clip: SmallCLIP, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in clip.named_parameters():
        (decay if p.ndim >= 2 and "emb" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _batch_indices(attrs: list[dict], batch_size: int, colours_per_batch: int, generator: torch.Generator):
    """Endless batches of sample indices.

    ``colours_per_batch = 0``: shuffled epochs. Otherwise each batch is drawn from the samples of
    ``colours_per_batch`` random colours, so it holds many same-colour pairs that differ only in
    shape, position, size or background: hard negatives that make the contrastive loss learn shape
    instead of stopping at colour.
    """
    if colours_per_batch <= 0:
        while True:
            order = torch.randperm(len(attrs), generator=generator)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                yield order[start : start + batch_size].tolist()
    by_colour: dict[str, list[int]] = {}
    for i, a in enumerate(attrs):
        by_colour.setdefault(a["colour"], []).append(i)
    names = sorted(by_colour)
    k = min(colours_per_batch, len(names))
    while True:
        chosen = torch.randperm(len(names), generator=generator)[:k].tolist()
        pool = torch.tensor([i for c in chosen for i in by_colour[names[c]]])
        if len(pool) < batch_size:  # tiny datasets: fall back to all samples
            pool = torch.arange(len(attrs))
        yield pool[torch.randperm(len(pool), generator=generator)[:batch_size]].tolist()


def train_clip(
    data: str | os.PathLike | DatasetInfo,
    out_dir: str | os.PathLike,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_steps: int = 30,
    recaption_prob: float = 0.5,
    colours_per_batch: int = 0,
    seed: int = 0,
    model_kwargs: dict | None = None,
    evaluate: bool = True,
    force: bool = False,
    log_every: int = 50,
    verbose: bool = True,
    device: str | torch.device = "cpu",
    on_progress: Callable[[float], None] | None = None,
) -> ClipTrainResult:
    """Trains the demo CLIP on ``data`` (a dataset folder or its ``DatasetInfo``) and saves it to ``out_dir``.

    Args:
        steps, batch_size, lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine
            decay to 10% of ``lr``; gradient norm clipped at 1.
        recaption_prob: probability of replacing a caption by a fresh one drawn from its attributes
            (text augmentation: more phrasings per image).
        colours_per_batch: draw each batch from this many colours (hard negatives, see
            ``_batch_indices``); 0 for plain shuffling.
        seed: seeds initialisation, batch order and recaptioning.
        model_kwargs: overrides of ``DEFAULT_CLIP_KWARGS``.
        evaluate: compute ``evaluate_clip`` metrics after training (saved in the config).
        force: retrain even if ``out_dir`` holds a finished model with identical settings.
        log_every: progress line every this many steps (if ``verbose``).
        on_progress: called with the share of the steps done, every ``log_every`` steps.
    """
    if steps < 1 or batch_size < 2:
        raise ValueError(f"need steps >= 1 and batch_size >= 2, got {steps} and {batch_size}")
    info = data if isinstance(data, DatasetInfo) else DatasetInfo.load(data)
    tokenizer = WordTokenizer.for_captions(context_length=(model_kwargs or {}).get("text_seq_len", DEFAULT_CLIP_KWARGS["text_seq_len"]))
    kwargs = {**DEFAULT_CLIP_KWARGS, **(model_kwargs or {}), "num_text_tokens": tokenizer.vocab_size}
    kwargs = json.loads(json.dumps(kwargs))  # as saved (tuples become lists), so a reuse check compares like with like
    train_params = dict(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, recaption_prob=recaption_prob,
                        colours_per_batch=colours_per_batch, seed=seed)
    out = Path(out_dir)
    if not force and (out / CONFIG_FILE).is_file() and (out / WEIGHTS_FILE).is_file():
        saved = json.loads((out / CONFIG_FILE).read_text())
        if (saved.get("finished") and saved.get("model_kwargs") == kwargs and saved.get("train") == train_params
                and saved.get("data") == info.params and saved.get("tokenizer") == tokenizer.to_dict()):
            clip, tok = load_clip(out, device)
            if verbose:
                print(f"[clip] reusing the trained CLIP in {out}")
            return ClipTrainResult(clip, tok, out, saved.get("metrics", {}), saved.get("train_seconds", 0.0), True)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    images, captions, attrs = load_split(info.train_shards, kwargs["image_size"])
    if len(captions) < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(captions)} training samples")
    if verbose:
        print(f"[clip] {len(captions)} training samples loaded in {time.perf_counter() - start:.1f}s")
    clip = build_clip(kwargs).to(device).train()
    opt = torch.optim.AdamW(_decay_groups(clip, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    batches, losses = _batch_indices(attrs, batch_size, colours_per_batch, generator), []
    for step in range(steps):
        idx = next(batches)
        texts = [
            caption_for(ShapeAttributes.from_dict({k: v for k, v in attrs[i].items() if k != "caption"}), rng)
            if rng.random() < recaption_prob else captions[i]
            for i in idx
        ]
        batch = images[idx].to(device).float() / 255
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = clip(tokenizer(texts).to(device), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            clip.temperature.clamp_(max=_MAX_LOG_TEMPERATURE)
        losses.append(loss.item())
        if on_progress is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            on_progress((step + 1) / steps)
        if verbose and ((step + 1) % log_every == 0 or step + 1 == steps):
            elapsed = time.perf_counter() - start
            print(f"[clip] step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.3f} "
                  f"logit-scale {clip.temperature.exp().item():.1f} {elapsed:.0f}s "
                  f"(eta {elapsed / (step + 1) * (steps - step - 1):.0f}s)", flush=True)
    train_seconds = time.perf_counter() - start
    clip.eval()
    metrics = {"final_loss": float(np.mean(losses[-log_every:]))}
    if evaluate:
        metrics.update(evaluate_clip(clip, tokenizer, info))
        if verbose:
            print("[clip] " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    save_clip(clip, tokenizer, out, kwargs, train=train_params, data=info.params, metrics=metrics,
              train_seconds=train_seconds, finished=True)
    return ClipTrainResult(clip, tokenizer, out, metrics, train_seconds, False)


def main(argv: Sequence[str] | None = None) -> ClipTrainResult:
    """CLI: ``python -m dalle2_pytorch.demo.train_clip --data DIR --out DIR [--steps N] ...``."""
    parser = argparse.ArgumentParser(description="Train the small demo CLIP on the shapes shards.")
    parser.add_argument("--data", required=True, help="dataset folder written by dalle2_pytorch.demo.shapes")
    parser.add_argument("--out", required=True, help="output folder for clip.safetensors + clip_config.json")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-eval", action="store_true", help="skip the retrieval / zero-shot evaluation")
    parser.add_argument("--force", action="store_true", help="retrain even if a matching model exists")
    args = parser.parse_args(argv)
    return train_clip(args.data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, evaluate=not args.no_eval, force=args.force, device=args.device)


if __name__ == "__main__":
    main()
