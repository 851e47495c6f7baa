"""The demo's images and quality measure: ``grid.png``, ``report.md`` and ``report.json``.

For prompts naming (colour, shape) pairs that never occur in training (``DatasetInfo.heldout``),
three sources of images are judged the same way:

* **ground truth** — fresh renders of the prompt (the ceiling of the measure);
* **decoder alone** — the decoder fed the true CLIP image embeddings of those renders;
* **prior + decoder** — text → prior → decoder, the whole system.

Each is scored by the model-independent analysis of :mod:`dalle2_pytorch.demo.evaluate` (how
often the dominant colour and the shape match the prompt, and the position where the prompt names
one) and by the trained CLIP's cosine similarity between the prompt's text embedding and the
image's embedding, and by the CLIP score ``100 * max(cos, 0)`` of
:mod:`dalle2_pytorch.clip_adapters.score` (Hessel et al. 2021; the decoder training script's
``eval/CLIP_SCORE``). Prompts seen in training are measured too (prior + decoder), for comparison, and
held-out pairs with a position ("a red star in the top left"). The held-out prompts are generated
in :data:`SAMPLING_SEEDS` passes with different seeds; the per-prompt table
(:mod:`dalle2_pytorch.demo.prompt_table`) gives each prompt's rates with their range over the passes,
the sampler and steps of each stage and the wall time per image.

Images come from the demo's model folder through :func:`dalle2_pytorch.cli.load_models`, the loader
of ``dream``, so the report checks the files ``dream --model-dir`` uses.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from dalle2_pytorch.clip_adapters.score import clip_cosine, clip_score_from_cosine
from dalle2_pytorch.demo.captions import parse_position, parse_prompt, prompt_for
from dalle2_pytorch.demo.evaluate import analyse
from dalle2_pytorch.demo.prompt_table import (
    POSITIONS_FOR_HELDOUT,
    SAMPLING_SEEDS,
    generate_in_passes,
    per_prompt_over_passes,
    prompt_table_markdown,
    sampling_settings,
)
from dalle2_pytorch.demo.shapes import SIZES, render, sample_attributes

__all__ = ["FREE_FORM_PROMPTS", "clip_similarity", "generate", "ground_truth", "ground_truth_with_sizes", "make_grid",
           "measure", "run_report", "shape_rate_by_size", "write_json", "write_report"]

#: prompts in other phrasings than the canonical "a {colour} {shape}" (shown in the grid, and measured)
FREE_FORM_PROMPTS = (
    "a green square",
    "a small blue circle",
    "a big orange triangle on a black background",
    "there is a purple star in the top left",
)
_SEEN_IN_GRID = 3


@torch.no_grad()
def generate(
    prior: Any,
    decoder: Any,
    clip: Any,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    candidates: int = 2,
    prior_cond_scale: float = 1.0,
    cond_scale: float = 1.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Text → prior → decoder, the ``dream`` procedure, in batches with per-batch seeds.

    Returns:
        (len(prompts), 3, s, s) images in [0, 1].
    """
    out = []
    for i, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = list(prompts[start : start + batch_size])
        generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
        text = clip.embed_text(clip.tokenize(chunk))
        image_embed = prior.sample(
            text_embed=text.text_embed,
            text_encodings=text.text_encodings if prior.condition_on_text_encodings else None,
            num_samples_per_batch=candidates, cond_scale=prior_cond_scale, generator=generator,
        )
        encodings = text.text_encodings if decoder.condition_on_text_encodings else None
        out.append(decoder.sample(image_embed=image_embed, text_encodings=encodings, cond_scale=cond_scale,
                                  generator=generator))
    return torch.cat(out).float().clamp(0, 1)


@torch.no_grad()
def decode_embeddings(decoder: Any, image_embed: torch.Tensor, *, text_encodings: torch.Tensor | None = None,
                      seed: int = 0, cond_scale: float = 1.0, batch_size: int = 64) -> torch.Tensor:
    """The decoder alone on given (b, d) CLIP image embeddings → (b, 3, s, s) images in [0, 1].

    ``text_encodings`` (b, n, d_text): the prompts' per-token CLIP encodings, for a decoder that
    conditions on text (ignored by one that does not)."""
    out = []
    if not decoder.condition_on_text_encodings:
        text_encodings = None
    for i, start in enumerate(range(0, image_embed.shape[0], batch_size)):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 500_009 + i)
        encodings = None if text_encodings is None else text_encodings[start : start + batch_size]
        out.append(decoder.sample(image_embed=image_embed[start : start + batch_size], text_encodings=encodings,
                                  cond_scale=cond_scale, generator=generator))
    return torch.cat(out).float().clamp(0, 1)


@torch.no_grad()
def clip_similarity(clip: Any, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
    """Cosine similarity between each (3, s, s) image and its prompt under ``clip`` → (b,)."""
    return clip_cosine(clip, images, list(prompts))


def measure(images: torch.Tensor, prompts: Sequence[str], clip: Any,
            sizes: Sequence[str] | None = None) -> dict[str, Any]:
    """Colour / shape match rates (``evaluate.analyse``), mean CLIP similarity and mean CLIP score
    (``100 * max(cos, 0)``, :mod:`dalle2_pytorch.clip_adapters.score`) of images vs prompts.

    Returns:
        ``{"n", "colour_acc", "shape_acc", "both_acc", "clip_similarity", "clip_score", "per_prompt"}``; per prompt
        the same rates and the most frequent analysed (colour, shape); with ``sizes`` (each image's
        shape size word) also ``"by_size"``, as :func:`shape_rate_by_size` gives it.
    """
    if images.shape[0] != len(prompts) or not prompts:
        raise ValueError(f"need one prompt per image, got {images.shape[0]} images and {len(prompts)} prompts")
    preds = [analyse(im) for im in images]
    intents = [parse_prompt(p) for p in prompts]
    colour_ok = np.array([p.colour == i[0] for p, i in zip(preds, intents)])
    shape_ok = np.array([p.shape == i[1] for p, i in zip(preds, intents)])
    places = [parse_position(p) for p in prompts]
    position_ok = np.array([pl is None or p.position == pl for p, pl in zip(preds, places)])
    cosines = clip_similarity(clip, images, prompts)
    sims, scores = cosines.cpu().numpy(), clip_score_from_cosine(cosines).cpu().numpy()
    per_prompt = {}
    for prompt in dict.fromkeys(prompts):
        idx = [k for k, p in enumerate(prompts) if p == prompt]
        seen = [f"{preds[k].colour} {preds[k].shape}" for k in idx]
        per_prompt[prompt] = {
            "n": len(idx), "colour_acc": float(colour_ok[idx].mean()), "shape_acc": float(shape_ok[idx].mean()),
            "most_seen": max(set(seen), key=seen.count), "clip_similarity": float(sims[idx].mean()),
        }
        if places[idx[0]] is not None:
            per_prompt[prompt]["position_acc"] = float(position_ok[idx].mean())
    out = {
        "n": len(prompts), "colour_acc": float(colour_ok.mean()), "shape_acc": float(shape_ok.mean()),
        "both_acc": float((colour_ok & shape_ok).mean()), "clip_similarity": float(sims.mean()),
        "clip_score": float(scores.mean()),
        "per_prompt": per_prompt,
    }
    if sizes is not None:
        out["by_size"] = _rates_by_size(shape_ok, sizes)
    if any(pl is not None for pl in places):
        out["position_acc"] = float(np.mean([ok for ok, pl in zip(position_ok, places) if pl is not None]))
    return out


def ground_truth(pairs: Sequence[tuple[str, str]], per_pair: int, image_size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Fresh renders of each (colour, shape) pair → ((n, 3, s, s) in [0, 1], canonical prompts)."""
    images, prompts, _ = ground_truth_with_sizes(pairs, per_pair, image_size, seed)
    return images, prompts


def ground_truth_with_sizes(pairs: Sequence[tuple[str, str]], per_pair: int, image_size: int,
                            seed: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """``ground_truth`` and the size word (``"small"`` / ``"large"``) of each render's shape."""
    rng = np.random.default_rng([seed, 77])
    images, prompts, sizes = [], [], []
    for colour, shape in pairs:
        for _ in range(per_pair):
            attrs = sample_attributes(rng, colour=colour, shape=shape)
            images.append(torch.from_numpy(np.asarray(render(attrs, image_size)).copy()).permute(2, 0, 1))
            prompts.append(prompt_for(colour, shape))
            sizes.append(attrs.size)
    return torch.stack(images).float() / 255, prompts, sizes


def shape_rate_by_size(images: torch.Tensor, prompts: Sequence[str], sizes: Sequence[str]) -> dict[str, dict]:
    """How often the analysed shape matches the prompt, for small and for large shapes apart →
    ``{"small": {"n", "shape_acc"}, "large": {...}}`` (sizes with no image left out)."""
    return _rates_by_size([analyse(im).shape == parse_prompt(q)[1] for im, q in zip(images, prompts)], sizes)


def _rates_by_size(shape_ok: Sequence[bool], sizes: Sequence[str]) -> dict[str, dict]:
    out = {}
    for size in SIZES:
        hits = [bool(k) for k, s in zip(shape_ok, sizes) if s == size]
        if hits:
            out[size] = {"n": len(hits), "shape_acc": float(np.mean(hits))}
    return out


def make_grid(rows: Sequence[tuple[str, torch.Tensor]], path: str | os.PathLike, *, cell: int = 96,
              label_width: int = 330, pad: int = 2) -> Path:
    """A labelled PNG: one row per (label, (k, 3, s, s) images in [0, 1]); images scaled to ``cell`` px."""
    columns = max(images.shape[0] for _, images in rows)
    width = label_width + columns * (cell + pad) + pad
    height = len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        y = pad + r * (cell + pad)
        draw.text((8, y + cell // 2 - 6), label, fill=(0, 0, 0))
        for c, image in enumerate(images):
            array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(array).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_width + pad + c * (cell + pad), y))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Writes ``data`` as indented JSON (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# DALL·E 2 demo report", "",
        f"Preset `{s['preset']}`: {s['num_train']} training images, held-out (colour, shape) pairs "
        f"{', '.join(' '.join(p) for p in s['heldout'])} never seen in training. Images are "
        f"{s['image_size']}×{s['image_size']} px. Sampling: {s['prior_candidates']} prior candidates reranked by CLIP, "
        f"prior guidance {s['prior_cond_scale']}, decoder guidance {s['decoder_cond_scale']}, "
        f"{s.get('prior_steps', '?')} prior / {s.get('decoder_steps', '?')} decoder steps (samplers below), seed {s['seed']}.", "",
        "## Quality on held-out prompts", "",
        "Colour / shape: how often the dominant colour / the shape read by a model-independent image analysis "
        "(`dalle2_pytorch.demo.evaluate`) matches the prompt (chance: 17% / 20%). CLIP similarity: cosine similarity "
        "between the prompt's and the image's embeddings under the demo CLIP; CLIP score: 100 × max(cosine, 0) "
        "(Hessel et al. 2021), the decoder training script's `eval/CLIP_SCORE`.", "",
        "| images | n | colour | shape | both | CLIP similarity | CLIP score |", "|---|---|---|---|---|---|---|",
    ]
    for key, name in (("ground_truth", "ground-truth renders (ceiling)"), ("decoder_alone", "decoder on true CLIP image embeddings"),
                      ("prior_decoder", "**prior + decoder (text → image)**"),
                      ("positioned", "prior + decoder, held-out prompts with a position"),
                      ("seen_prior_decoder", "prior + decoder, prompts seen in training")):
        m = result["measures"].get(key)
        if m is None:
            continue
        lines.append(f"| {name} | {m['n']} | {_pct(m['colour_acc'])} | {_pct(m['shape_acc'])} | "
                     f"{_pct(m['both_acc'])} | {m['clip_similarity']:.3f} | {m['clip_score']:.1f} |")
    by_size = result["measures"].get("decoder_alone", {}).get("by_size")
    if by_size:
        lines += ["", "Decoder on true embeddings, shape by the shape's size: " + ", ".join(
            f"{size} {_pct(v['shape_acc'])} (n={v['n']})" for size, v in by_size.items()) + "."]
    if "position_acc" in result["measures"].get("positioned", {}):
        lines += ["", f"Position (held-out prompts that name one): {_pct(result['measures']['positioned']['position_acc'])} "
                      "in the named grid cell (chance 11%)."]
    if "per_prompt" in result:
        lines += ["", "## Per prompt", ""]
        lines += prompt_table_markdown(result["per_prompt"], s["sampling"], s["seconds_per_image"],
                                       result["measures"]["prior_decoder"]["n"] + result["measures"].get("positioned", {}).get("n", 0),
                                       s.get("sampling_seeds", 1), s.get("threads", "?"))
    lines += ["", "## Samples", "", "![grid](grid.png)", "",
              "Rows: held-out prompts, held-out prompts with a position, prompts seen in training, free-form prompts; "
              "columns: samples.", "",
              "## Stages", "", f"Total {result.get('total_seconds', float('nan')) / 60:.1f} min with "
              f"{result.get('threads', '?')} CPU threads.", "", "| stage | seconds | |", "|---|---|---|"]
    for name, t in result.get("timings", {}).items():
        note = "reused" + (f" (originally {t['original_seconds']:.0f}s)" if t.get("original_seconds") else "") if t["reused"] else ""
        lines.append(f"| {name} | {t['seconds']:.1f} | {note} |")
    lines += ["", "Generate more:", "", "```bash",
              f"dream \"a red star in the top left\" --model-dir {result['output']} --seed 0 --output dream_output",
              "```", "", "(`dream` takes the report's sampling settings from the model folder's `dalle2.json`.)", ""]
    return "\n".join(lines)


def write_report(out: Path, result: dict) -> tuple[Path, Path]:
    """Writes ``report.md`` and ``report.json`` of a ``run_report`` result (timings added by the caller)."""
    md = out / "report.md"
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(_markdown(result), encoding="utf-8")
    os.replace(tmp, md)
    return md, write_json(out / "report.json", result)


def run_report(out: Path, info: Any, preset: Any, *, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    """Loads the demo models from ``out``, generates and measures images, writes ``grid.png``,
    ``report.md`` and ``report.json``; returns the report dict."""
    from dalle2_pytorch.cli import load_models

    prior, decoder, clip = load_models(model_dir=out)
    size = int(decoder.image_sizes[-1])
    n = preset.images_per_prompt
    passes = max(1, min(SAMPLING_SEEDS, n))
    per_pass = max(1, n // passes)
    kwargs = dict(candidates=preset.prior_candidates, prior_cond_scale=preset.prior_cond_scale,
                  cond_scale=preset.decoder_cond_scale)
    heldout = [tuple(p) for p in info.heldout]
    seen_pairs = [parse_prompt(p) for p in info.seen_prompts]
    seen_pairs = [seen_pairs[k] for k in np.linspace(0, len(seen_pairs) - 1, min(5, len(seen_pairs))).astype(int)]

    def text_to_image(prompts: list[str], pass_seed: int) -> torch.Tensor:
        return generate(prior, decoder, clip, prompts, seed=pass_seed, **kwargs)

    gt_images, gt_prompts, gt_sizes = ground_truth_with_sizes(heldout, n, size, seed)
    echo(f"[report] decoder alone on {len(gt_prompts)} true CLIP image embeddings")
    gt_embed = clip.embed_image(gt_images).image_embed
    gt_text = clip.embed_text(clip.tokenize(gt_prompts)).text_encodings if decoder.condition_on_text_encodings else None
    alone = decode_embeddings(decoder, gt_embed, text_encodings=gt_text, seed=seed, cond_scale=preset.decoder_cond_scale)
    heldout_names = [prompt_for(c, s) for c, s in heldout]
    echo(f"[report] prior + decoder on {len(heldout_names)} held-out prompts: {passes} seeds x {per_pass} images")
    full, heldout_prompts, heldout_pass, seconds = generate_in_passes(text_to_image, heldout_names, per_pass, passes, seed)
    placed_names = [prompt_for(c, s, position=POSITIONS_FOR_HELDOUT[i % len(POSITIONS_FOR_HELDOUT)])
                    for i, (c, s) in enumerate(heldout)]
    echo(f"[report] prior + decoder on {len(placed_names)} held-out prompts with a position")
    placed, placed_prompts, placed_pass, placed_seconds = generate_in_passes(
        text_to_image, placed_names, max(1, per_pass // 2), passes, seed + 7)
    seen_prompts = [prompt_for(c, s) for c, s in seen_pairs for _ in range(max(1, n // 2))]
    extra_prompts = [p for p in FREE_FORM_PROMPTS for _ in range(preset.grid_columns)]
    echo(f"[report] prior + decoder on {len(seen_prompts)} seen and {len(extra_prompts)} free-form prompts")
    seen = generate(prior, decoder, clip, seen_prompts + extra_prompts, seed=seed + 1, **kwargs)
    seen_imgs, extra_imgs = seen[: len(seen_prompts)], seen[len(seen_prompts) :]

    measures = {
        "ground_truth": measure(gt_images, gt_prompts, clip),
        "decoder_alone": measure(alone, gt_prompts, clip, sizes=gt_sizes),
        "prior_decoder": measure(full, heldout_prompts, clip),
        "positioned": measure(placed, placed_prompts, clip),
        "seen_prior_decoder": measure(seen_imgs, seen_prompts, clip),
        "free_form": measure(extra_imgs, extra_prompts, clip),
    }
    table = _per_prompt_table(full, heldout_prompts, heldout_pass)
    table.update(_per_prompt_table(placed, placed_prompts, placed_pass))
    k = preset.grid_columns
    rows = [(f"{p}  (held out)", full[[i for i, q in enumerate(heldout_prompts) if q == p][:k]]) for p in heldout_names]
    rows += [(f"{p}  (held out)", placed[[i for i, q in enumerate(placed_prompts) if q == p][:k]]) for p in placed_names]
    per_seen = max(1, n // 2)
    rows += [(prompt_for(c, s), seen_imgs[i * per_seen : i * per_seen + k]) for i, (c, s) in enumerate(seen_pairs[:_SEEN_IN_GRID])]
    rows += [(p, extra_imgs[i * k : (i + 1) * k]) for i, p in enumerate(FREE_FORM_PROMPTS)]
    make_grid(rows, out / "grid.png")
    settings = sampling_settings(prior, decoder)
    timed = len(heldout_prompts) + len(placed_prompts)
    result = {
        "output": str(out),
        "settings": {
            "preset": preset.name, "num_train": info.num_train, "image_size": size, "heldout": [list(p) for p in heldout],
            "images_per_prompt": n, "sampling_seeds": passes, "prior_candidates": preset.prior_candidates,
            "prior_cond_scale": preset.prior_cond_scale, "decoder_cond_scale": preset.decoder_cond_scale, "seed": seed,
            "prior_steps": settings["prior"]["steps"], "decoder_steps": [st["steps"] for st in settings["decoder"]],
            "sampling": settings, "threads": torch.get_num_threads(),
            "seconds_per_image": round((seconds + placed_seconds) / max(1, timed), 4),
        },
        "measures": measures,
        "per_prompt": table,
        "targets": {"colour_acc": 0.95, "shape_acc": 0.85},
    }
    m = measures["prior_decoder"]
    result["targets_met"] = bool(m["colour_acc"] >= 0.95 and m["shape_acc"] >= 0.85)
    write_report(out, result)
    for key in ("ground_truth", "decoder_alone", "prior_decoder", "positioned", "seen_prior_decoder"):
        mm = measures[key]
        where = f"  position {_pct(mm['position_acc']):>4s}" if "position_acc" in mm else ""
        echo(f"[report] {key:18s} colour {_pct(mm['colour_acc']):>4s}  shape {_pct(mm['shape_acc']):>4s}{where}  "
             f"CLIP sim {mm['clip_similarity']:.3f}  CLIP score {mm['clip_score']:5.1f}  (n={mm['n']})")
    echo("[report] decoder alone by size     " + "  ".join(
        f"{kind} shape {_pct(v['shape_acc'])} (n={v['n']})" for kind, v in measures["decoder_alone"]["by_size"].items()))
    echo(f"[report] {result['settings']['seconds_per_image']:.2f} s per image (text -> {size} px image)")
    return result


def _per_prompt_table(images: torch.Tensor, prompts: Sequence[str], passes: Sequence[int]) -> dict:
    """Per-prompt colour / shape / position rates over the sampling passes (see ``prompt_table``)."""
    preds = [analyse(im) for im in images]
    intents = [parse_prompt(p) for p in prompts]
    places = [parse_position(p) for p in prompts]
    table = per_prompt_over_passes({
        "colour": [p.colour == i[0] for p, i in zip(preds, intents)],
        "shape": [p.shape == i[1] for p, i in zip(preds, intents)],
        "position": [None if pl is None else p.position == pl for p, pl in zip(preds, places)],
    }, prompts, passes)
    for prompt, row in table.items():
        seen = [f"{preds[k].colour} {preds[k].shape}" for k, q in enumerate(prompts) if q == prompt]
        row["most_seen"] = max(set(seen), key=seen.count)
    return table
