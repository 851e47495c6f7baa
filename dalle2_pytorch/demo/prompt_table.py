"""The demo report's per-prompt table: each held-out prompt over several sampling seeds, the sampler
and steps of each stage, the wall time per image; and the comparison of several demo runs' reports
(``python -m dalle2_pytorch.demo.prompt_table run1/report.json run2/report.json``: the spread across
training seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["POSITIONS_FOR_HELDOUT", "SAMPLING_SEEDS", "compare_reports", "generate_in_passes",
           "per_prompt_over_passes", "prompt_table_markdown", "sampling_settings"]

#: passes over the held-out prompts, each with its own seed (the per-prompt range is over these)
SAMPLING_SEEDS = 4
#: positions given to the held-out pairs in the "with a position" prompts, in order
POSITIONS_FOR_HELDOUT = ("top left", "bottom right", "top right", "bottom left", "top")


def generate_in_passes(generate: Callable[[list[str], int], torch.Tensor], prompts: Sequence[str], per_pass: int,
                       passes: int, seed: int) -> tuple[torch.Tensor, list[str], list[int], float]:
    """``passes`` rounds of ``per_pass`` images of each prompt, round ``s`` with seed ``seed * 100 + s``.

    Args:
        generate: ``(prompts, seed) -> (n, 3, s, s)`` images (the report's text -> image call).

    Returns:
        (images, their prompts, their pass index, wall seconds of the generation).
    """
    images, names, index = [], [], []
    started = time.perf_counter()
    for s in range(passes):
        batch = [p for p in prompts for _ in range(per_pass)]
        images.append(generate(batch, seed * 100 + s))
        names += batch
        index += [s] * len(batch)
    return torch.cat(images), names, index, time.perf_counter() - started


def per_prompt_over_passes(preds_ok: dict[str, Sequence[bool]], prompts: Sequence[str], passes: Sequence[int]) -> dict:
    """``{prompt: {metric: {"mean", "min", "max"}}}``: the rate of each metric (``preds_ok[metric][i]``
    says whether image ``i`` is right) per pass, summarised over the passes."""
    out: dict[str, dict] = {}
    for prompt in dict.fromkeys(prompts):
        rows = [i for i, p in enumerate(prompts) if p == prompt]
        entry = {}
        for metric, ok in preds_ok.items():
            rates = []
            for s in sorted(set(passes[i] for i in rows)):
                chosen = [bool(ok[i]) for i in rows if passes[i] == s and ok[i] is not None]
                if chosen:
                    rates.append(float(np.mean(chosen)))
            if rates:
                entry[metric] = {"mean": float(np.mean(rates)), "min": min(rates), "max": max(rates)}
        out[prompt] = entry
    return out


def sampling_settings(prior: Any, decoder: Any) -> dict:
    """The sampler and steps the report's (and ``dream``'s default) text -> image call uses, per model."""
    steps = prior.sample_timesteps or prior.noise_scheduler.num_timesteps
    from dalle2_pytorch.diffusion.steps import reference_sampler

    prior_sampler = prior.sampler or reference_sampler(steps, prior.noise_scheduler.num_timesteps)
    stages = []
    for stage in decoder.stages:
        name, n, _ = stage.resolve_sampling(None, None)
        stages.append({"unet": stage.unet_number, "size": stage.image_size, "sampler": name, "steps": n})
    return {"prior": {"sampler": prior_sampler, "steps": steps}, "decoder": stages}


def _rate(m: dict | None) -> str:
    if not m:
        return "–"
    return f"{100 * m['mean']:.0f}% ({100 * m['min']:.0f}–{100 * m['max']:.0f})"


def prompt_table_markdown(table: dict, settings: dict, seconds_per_image: float, images: int, passes: int,
                          threads: int | str = "?") -> list[str]:
    """Markdown lines: the sampling settings, the wall time per image, and one row per prompt."""
    stages = ", ".join(f"unet {s['unet']} ({s['size']} px) {s['sampler']} × {s['steps']}" for s in settings["decoder"])
    lines = [
        f"Sampling: prior {settings['prior']['sampler']} × {settings['prior']['steps']}; decoder {stages}. "
        f"Wall time {seconds_per_image:.2f} s per image of text -> image ({images} images in batches of up to 64, "
        f"{threads} CPU thread(s)).", "",
        f"Per prompt: the rate over all its images, and in brackets its lowest–highest over {passes} sampling seeds.", "",
        "| prompt | colour | shape | position | most often drawn |", "|---|---|---|---|---|",
    ]
    for prompt, row in table.items():
        lines.append(f"| {prompt} | {_rate(row.get('colour'))} | {_rate(row.get('shape'))} | "
                     f"{_rate(row.get('position'))} | {row.get('most_seen', '')} |")
    return lines


def compare_reports(paths: Sequence[str | Path]) -> str:
    """Markdown: each run's held-out colour / shape / position rates and per-prompt shape, with the
    mean and range over the runs (the spread across training seeds)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    seeds = [r["settings"]["seed"] for r in reports]
    lines = [f"Runs: {', '.join(f'seed {s}' for s in seeds)}", "",
             "| measure | " + " | ".join(f"seed {s}" for s in seeds) + " | mean (range) |",
             "|---|" + "---|" * (len(seeds) + 1)]

    def row(name: str, values: list[float | None]) -> None:
        got = [v for v in values if v is not None]
        summary = f"{100 * np.mean(got):.0f}% ({100 * min(got):.0f}–{100 * max(got):.0f})" if got else "–"
        lines.append(f"| {name} | " + " | ".join("–" if v is None else f"{100 * v:.0f}%" for v in values) + f" | {summary} |")

    for key, label in (("prior_decoder", "held-out"), ("positioned", "held-out with a position"),
                       ("decoder_alone", "decoder alone"), ("seen_prior_decoder", "seen")):
        for metric in ("colour_acc", "shape_acc", "position_acc"):
            values = [r["measures"].get(key, {}).get(metric) for r in reports]
            if any(v is not None for v in values):
                row(f"{label}: {metric.split('_')[0]}", values)
    prompts = list(dict.fromkeys(p for r in reports for p in r["measures"]["prior_decoder"]["per_prompt"]))
    for prompt in prompts:
        row(f"shape: {prompt}", [r["measures"]["prior_decoder"]["per_prompt"].get(prompt, {}).get("shape_acc") for r in reports])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dalle2_pytorch.demo.prompt_table",
                                     description="Compare the reports of demo runs (spread across training seeds).")
    parser.add_argument("reports", nargs="+", help="report.json files of demo runs")
    args = parser.parse_args(argv)
    missing = [p for p in args.reports if not Path(p).is_file()]
    if missing:
        print(f"prompt_table: error: no such report: {', '.join(missing)}")
        return 2
    print(compare_reports(args.reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
