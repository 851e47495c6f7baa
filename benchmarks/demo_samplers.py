"""Decoder samplers on the demo's trained models: quality against the 1,000-step DDPM, and time.

    .venv/bin/python benchmarks/demo_samplers.py --model-dir demo_output --json /tmp/samplers.json

For the held-out prompts of the demo (colour-shape pairs never seen in training), the prior's image
embeddings are drawn once per seed (its own default sampler); then every decoder sampler in the list
decodes the same embeddings with the same seed, all three Unets with the named sampler, and with one
step count for all of them or one per Unet (``dpmpp_2m:trailing=20/5/5``).
Each row gives, as the mean over the seeds and (in brackets) the lowest-highest:

* colour / shape: the share of images whose colour / shape the model-independent judge
  (``dalle2_pytorch.demo.evaluate``) reads as the prompt's;
* CLIP: cosine similarity of the prompt's and the image's embeddings under the demo's CLIP;
* FD: Fréchet distance between the generated images and fresh ground-truth renders of the same
  prompts, in the demo CLIP's image-embedding space (Heusel et al. 2017, eq. 6, with CLIP in place
  of Inception; offline, nothing is downloaded). Lower is better; with 64-d embeddings and ~100
  images per side it has a sizeable positive bias, the same for every row;
* decoder s/img: wall time of ``Decoder.sample`` per image (batches of all prompts at once), and
  text -> image s/img with the prior's time added; speed-up: the 1,000-step DDPM's decoder time
  over the row's.

A row *reaches the 1,000-step quality* when none of its measures is worse than the DDPM row's by more
than the run-to-run noise measured here: its colour and shape rates and its CLIP similarity are at
most that noise below DDPM's (the noise: the larger of the two rows' spreads over the seeds, and at
least one image's worth, or 0.002 for CLIP), and its FD is no higher than the DDPM row's highest FD
over the seeds plus that row's spread. Being better than DDPM is allowed: the question is whether a
fast sampler gives anything up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROWS = (
    ("ddpm", 1000), ("ddim", 50),
    ("dpmpp_2m", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 25),
    ("dpmpp_2m:trailing", 10), ("dpmpp_2m:trailing", 20), ("dpmpp_2m:trailing", 25),
    ("unipc", 10), ("unipc", 20), ("unipc:trailing", 10), ("unipc:trailing", 20),
    ("euler_ancestral", 25), ("euler_ancestral:trailing", 25),
)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` (n, d) and ``b`` (m, d):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), the square root of the PSD matrix
    computed from its eigenvalues (the symmetric form of tr sqrt(S_a S_b))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_a @ s_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root)


def _summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)), "values": values}


def run(model_dir: Path, rows, seeds, per_prompt: int, gt_per_prompt: int, echo=print) -> dict:
    from dalle2_pytorch.cli import load_models
    from dalle2_pytorch.decoder.construction import per_stage
    from dalle2_pytorch.demo import report
    from dalle2_pytorch.demo.captions import prompt_for
    from dalle2_pytorch.demo.evaluate import analyse
    from dalle2_pytorch.demo.shapes import DEFAULT_HELDOUT, DatasetInfo

    prior, decoder, clip = load_models(model_dir=model_dir)
    # each row's steps per Unet, checked against the decoder before anything is sampled
    per_unet = [per_stage(steps, decoder.num_unets, f"row {sampler}={_steps_text(steps)}") for sampler, steps in rows]
    defaults = json.loads((model_dir / "dalle2.json").read_text()).get("defaults", {})
    cond_scale = float(defaults.get("cond_scale", 1.0))
    candidates = int(defaults.get("prior_candidates", 2))
    try:
        heldout = [tuple(p) for p in DatasetInfo.load(model_dir / "data").heldout]
    except FileNotFoundError:
        heldout = list(DEFAULT_HELDOUT)
    size = int(decoder.image_sizes[-1])
    gt_images, gt_prompts = report.ground_truth(heldout, gt_per_prompt, size, seed=12345)
    gt_embed = clip.embed_image(gt_images).image_embed.numpy()
    prompts = [prompt_for(c, s) for c, s in heldout for _ in range(per_prompt)]
    tokens = clip.tokenize(prompts)
    text = clip.embed_text(tokens)
    results: dict[str, dict] = {}
    prior_seconds = []
    embeds = {}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        with torch.no_grad():
            embeds[seed] = prior.sample(text_embed=text.text_embed, num_samples_per_batch=candidates, generator=generator)
        prior_seconds.append((time.perf_counter() - started) / len(prompts))
    for (sampler, steps), counts in zip(rows, per_unet):
        name = f"{sampler} {_steps_text(steps)}"
        per_seed = {"colour": [], "shape": [], "clip": [], "fd": [], "seconds": []}
        for seed in seeds:
            generator = torch.Generator().manual_seed(10_000 + seed)
            started = time.perf_counter()
            with torch.no_grad():
                images = decoder.sample(image_embed=embeds[seed], cond_scale=cond_scale, sampler=sampler, steps=steps,
                                        generator=generator).float().clamp(0, 1)
            per_seed["seconds"].append((time.perf_counter() - started) / len(prompts))
            preds = [analyse(im) for im in images]
            per_seed["colour"].append(float(np.mean([p.colour == c for p, (c, _) in zip(preds, _pairs(prompts))])))
            per_seed["shape"].append(float(np.mean([p.shape == s for p, (_, s) in zip(preds, _pairs(prompts))])))
            per_seed["clip"].append(float(report.clip_similarity(clip, images, prompts).mean()))
            per_seed["fd"].append(frechet_distance(clip.embed_image(images).image_embed.numpy(), gt_embed))
        results[name] = {"sampler": sampler, "steps": steps, "network_calls": sum(counts),
                         **{k: _summary(v) for k, v in per_seed.items()}}
        r = results[name]
        echo(f"[samplers] {name:28s} colour {r['colour']['mean']:.2f} shape {r['shape']['mean']:.2f} "
             f"CLIP {r['clip']['mean']:.3f} FD {r['fd']['mean']:.3f} decoder {r['seconds']['mean']:.3f} s/img")
    return {"model_dir": str(model_dir), "seeds": list(seeds), "images_per_seed": len(prompts),
            "heldout": [list(p) for p in heldout], "cond_scale": cond_scale, "prior_candidates": candidates,
            "prior_seconds_per_image": float(np.mean(prior_seconds)), "threads": torch.get_num_threads(),
            "gt_images": len(gt_prompts), "rows": results}


def _steps_text(steps) -> str:
    return "/".join(map(str, steps)) if isinstance(steps, (list, tuple)) else str(steps)


def parse_row(text: str) -> tuple[str, int | tuple[int, ...]]:
    """``sampler=steps``, the steps one count for every Unet or one per Unet joined by ``/``
    (``dpmpp_2m:trailing=20/8/8``)."""
    sampler, sep, steps = text.partition("=")
    try:
        counts = tuple(int(n) for n in steps.split("/"))
    except ValueError:
        counts = ()
    if not sep or not sampler or not counts or min(counts) < 1:
        raise ValueError(f"row {text!r}: expected sampler=steps, the steps a count >= 1 or one per Unet like 20/8/8")
    return sampler, counts[0] if len(counts) == 1 else counts


def _pairs(prompts):
    from dalle2_pytorch.demo.captions import parse_prompt

    return [parse_prompt(p) for p in prompts]


def reaches_reference(row: dict, ref: dict, images: int) -> bool:
    """No measure of the row is worse than the reference's by more than the run-to-run noise
    (module docstring); better is fine."""
    floor = 1.0 / images
    for key in ("colour", "shape", "clip"):
        noise = max(ref[key]["max"] - ref[key]["min"], row[key]["max"] - row[key]["min"], floor if key != "clip" else 0.002)
        if ref[key]["mean"] - row[key]["mean"] > noise:
            return False
    return row["fd"]["mean"] <= ref["fd"]["max"] + (ref["fd"]["max"] - ref["fd"]["min"])


def markdown(result: dict, reference: str | None = None) -> str:
    rows = result["rows"]
    reference = reference or next(iter(rows))
    ref = rows[reference]
    n = result["images_per_seed"]

    def cell(summary: dict, pct: bool = False, digits: int = 3) -> str:
        if pct:
            return f"{100 * summary['mean']:.0f}% ({100 * summary['min']:.0f}–{100 * summary['max']:.0f})"
        return f"{summary['mean']:.{digits}f} ({summary['min']:.{digits}f}–{summary['max']:.{digits}f})"

    lines = [
        f"Held-out prompts {', '.join(' '.join(p) for p in result['heldout'])}: {n} images per seed, seeds "
        f"{', '.join(map(str, result['seeds']))}; decoder guidance {result['cond_scale']}, prior {result['prior_candidates']} "
        f"candidates ({result['prior_seconds_per_image']:.3f} s/img); {result['threads']} CPU thread(s); FD against "
        f"{result['gt_images']} ground-truth renders.", "",
        "| sampler | steps per Unet | colour | shape | CLIP similarity | FD (CLIP space) | decoder s/img | text→image s/img "
        "| decoder speed-up | reaches 1,000-step quality |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        speed = ref["seconds"]["mean"] / row["seconds"]["mean"]
        ok = "reference" if name == reference else ("yes" if reaches_reference(row, ref, n) else "no")
        lines.append(f"| `{row['sampler']}` | {_steps_text(row['steps'])} | {cell(row['colour'], True)} | {cell(row['shape'], True)} | "
                     f"{cell(row['clip'])} | {cell(row['fd'], digits=3)} | {row['seconds']['mean']:.3f} | "
                     f"{row['seconds']['mean'] + result['prior_seconds_per_image']:.3f} | {speed:.{0 if speed >= 10 else 1}f}× | {ok} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="a finished `make demo` output folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--images-per-prompt", type=int, default=16)
    parser.add_argument("--gt-per-prompt", type=int, default=64, help="ground-truth renders per prompt for the FD")
    parser.add_argument("--rows", nargs="+", default=None, help="sampler=steps entries, steps one count or one per Unet "
                        "(dpmpp_2m:trailing=20/8/8); default: the issue-9 table")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    if not (model_dir / "dalle2.json").is_file():
        print(f"demo_samplers: error: {model_dir} is not a finished demo output (no dalle2.json)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = DEFAULT_ROWS if args.rows is None else [parse_row(r) for r in args.rows]
        result = run(model_dir, rows, args.seeds, args.images_per_prompt, args.gt_per_prompt)
    except ValueError as e:
        print(f"demo_samplers: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
