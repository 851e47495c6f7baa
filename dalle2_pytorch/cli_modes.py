"""`dream`'s modes: text-to-image, variations, interpolations, text diffs, inpainting, and replays.

    dream "a red circle" --model-dir M                                   # text -> images
    dream --image a.png b.png -n 4 --model-dir M                         # variations (fixed noise per column)
    dream --interpolate "a red circle" b.png --frames 8 --gif --model-dir M
    dream --image a.png --text-diff "a red circle" "a blue square" --amounts 0 0.25 0.5 --model-dir M
    dream "a blue square" --inpaint a.png --mask mask.png --model-dir M   # white in the mask = paint
    dream "a red circle" --negative-prompt "a green star" --prior-cond-scale 4 --model-dir M
    dream --replay out/a_red_circle_seed0_0.json --output again/         # the same image, byte for byte

Each mode turns the arguments into *renders*: a JSON-able spec that determines a batch of images
given the models and the sampling settings, and the output names of its rows. Every PNG is written
with a JSON sidecar holding its render spec, row, settings and model sources, which is what
``--replay`` runs again (:mod:`dalle2_pytorch.cli_outputs`). Seeds: text-to-image batch j uses
``seed + j``; variation k of every image, every interpolation frame and every text-diff amount use
fixed decoder noise (``DALLE2.decode(noise_seed=)``: seed + k for variations, the seed for frames),
so those images are each reproducible alone and comparable across inputs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dalle2_pytorch.cli_outputs import (
    check_finite_images,
    IMAGE_SUFFIXES,
    ModeError,
    describe,
    free_index,
    free_suffix,
    load_image,
    load_mask,
    read_sidecar,
    slug,
    write_gif,
    write_grid,
    write_image,
    write_strip,
)
from dalle2_pytorch.version import __version__

__all__ = ["ModeError", "add_arguments", "check_arguments", "replay", "run"]

_SETTINGS = ("seed", "cond_scale", "prior_cond_scale", "prior_steps", "decoder_steps", "sampler", "prior_sampler",
             "prior_candidates", "negative_prompt")
_MODELS = ("pretrained", "model_dir", "prior", "prior_config", "decoder", "decoder_config", "clip")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The mode flags of `dream` (the text-to-image flags and `--image` are cli.py's)."""
    g = p.add_argument_group("modes")
    g.add_argument("--interpolate", nargs=2, metavar=("A", "B"),
                   help="interpolate between A and B (each a prompt or an image file) with fixed decoder noise")
    g.add_argument("--frames", type=int, default=None, help="interpolation frames, both ends included (default 8)")
    g.add_argument("--gif", action="store_true", help="also write an animated GIF of the frames / amounts")
    g.add_argument("--text-diff", nargs=2, metavar=("FROM", "TO"),
                   help="move each --image from caption FROM toward caption TO (unCLIP text diffs)")
    g.add_argument("--amounts", type=float, nargs="+", default=None,
                   help="text-diff amounts in [0, 1] (default 0 0.25 0.5; 0 = the plain variation)")
    g.add_argument("--inpaint", metavar="IMAGE", help="repaint the white part of --mask in IMAGE (RePaint), "
                   "guided by the prompt (or, without one, by the image itself)")
    g.add_argument("--mask", help="inpainting mask image: white = paint, black = keep")
    g.add_argument("--negative-prompt", default=None,
                   help="text the prior steers away from (replaces its unconditional guidance branch; "
                   "needs --prior-cond-scale other than 1)")
    g.add_argument("--pretrained", default=None,
                   help="models by name (laion/dalle2), model folder, or Hub repo id of our exports")
    g.add_argument("--replay", metavar="SIDECAR", help="regenerate the image of a JSON sidecar written by dream")


def _mode(args) -> str:
    chosen = [name for name, flag in (("interpolate", args.interpolate), ("text_diff", args.text_diff),
                                      ("inpaint", args.inpaint)) if flag]
    if len(chosen) > 1:
        raise ModeError(f"choose one mode: --{' and --'.join(c.replace('_', '-') for c in chosen)} were both given")
    if chosen:
        return chosen[0]
    return "variations" if args.image else "text"


def _endpoint(text: str) -> dict:
    """An interpolation endpoint: an existing image file, else a prompt."""
    if not isinstance(text, str) or not text.strip():
        raise ModeError("--interpolate endpoints must be non-empty prompts or image files")
    path = Path(text)
    if path.is_file():
        return {"image": str(path.resolve())}
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise ModeError(f"image not found: {text}")
    return {"prompt": text}


def check_arguments(args, prompts: list[str]) -> str:
    """Validates the mode flags before any model is loaded; returns the mode."""
    if args.replay:
        given = [f"--{k.replace('_', '-')}" for k in ("interpolate", "text_diff", "inpaint", "image") if getattr(args, k)]
        if prompts or given:
            raise ModeError(f"--replay regenerates one sidecar's image: give no prompts or {', '.join(given) or 'mode flags'}")
        return "replay"
    mode = _mode(args)
    if args.pretrained and args.model_dir:
        raise ModeError("give either --pretrained or --model-dir, not both")
    if args.mask and not args.inpaint:
        raise ModeError("--mask is the mask of --inpaint IMAGE")
    if args.inpaint and not args.mask:
        raise ModeError("--inpaint needs --mask (white = the region to paint)")
    if args.frames is not None and mode != "interpolate":
        raise ModeError("--frames goes with --interpolate")
    if args.frames is not None and args.frames < 2:
        raise ModeError(f"--frames must be >= 2 (both ends are frames), got {args.frames}")
    if args.amounts is not None and mode != "text_diff":
        raise ModeError("--amounts goes with --text-diff")
    for amount in args.amounts or ():
        if not 0.0 <= amount <= 1.0:
            raise ModeError(f"--amounts must be in [0, 1], got {amount}")
    if args.gif and mode not in ("interpolate", "text_diff"):
        raise ModeError("--gif goes with --interpolate or --text-diff")
    if mode == "text_diff" and not args.image:
        raise ModeError("--text-diff needs --image (the images to move toward the new caption)")
    if mode == "text_diff" and any(not t.strip() for t in args.text_diff):
        raise ModeError("--text-diff captions must be non-empty")
    if mode == "interpolate" and args.image:
        raise ModeError("--interpolate takes its images as endpoints: --interpolate a.png \"a prompt\"")
    if mode == "inpaint" and args.image:
        raise ModeError("--inpaint takes one image: --inpaint IMAGE --mask MASK")
    if mode in ("interpolate", "text_diff", "variations") and prompts:
        raise ModeError(f"prompts are not used by {'--image variations' if mode == 'variations' else '--' + mode.replace('_', '-')}: "
                        f"remove {prompts[0]!r}")
    if mode == "interpolate":
        for text in args.interpolate:
            _endpoint(text)
    if mode == "text" and not prompts:
        raise ModeError("give at least one prompt (arguments or --prompts-file)")
    if args.negative_prompt is not None:
        if not args.negative_prompt.strip():
            raise ModeError("--negative-prompt must be non-empty")
        if mode in ("variations", "text_diff"):
            raise ModeError("--negative-prompt steers the prior, which image variations and text diffs do not use")
        if args.prior_cond_scale == 1:
            raise ModeError("--negative-prompt replaces the prior's unconditional guidance branch and has no effect at "
                            "--prior-cond-scale 1: give e.g. --prior-cond-scale 4")
    return mode


# ------------------------------------------------------------------------------------------ renders
@dataclass
class Render:
    """A batch of images fixed by `spec`, with the output stem and sidecar fields of each row.

    `row_specs[i]` (optional) regenerates row i alone (its row is then 0)."""

    spec: dict
    stems: list[str]
    fields: list[dict]
    row_specs: list[dict] | None = None
    strip: str | None = None  # stem of a strip PNG of all rows (and of the GIF)
    extra: dict = field(default_factory=dict)


def _settings(args) -> dict:
    return {k: getattr(args, k) for k in _SETTINGS}


def _is_path(value: object) -> bool:
    """Whether a model argument names an existing file or folder (inline JSON and names do not)."""
    if not isinstance(value, str) or value.lstrip().startswith("{"):
        return False
    try:
        return Path(value).exists()
    except OSError:  # e.g. a name too long to be a path
        return False


def _models(args) -> dict:
    out = {}
    for k in _MODELS:
        v = getattr(args, k)
        out[k] = describe(Path(v)) if k != "pretrained" and _is_path(v) else v
    return out


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _caption(path: str) -> str:
    """The caption a text-conditioned decoder gets for an image: its file name (as dalle2-laion does)."""
    return Path(path).stem.replace("_", " ")


def _plan(args, mode: str, prompts: list[str]) -> list[Render]:
    seed, n = args.seed, args.num_images
    if mode == "text":
        jobs = [p for p in prompts for _ in range(n)]
        renders = []
        for j, start in enumerate(range(0, len(jobs), args.batch_size)):
            batch = jobs[start : start + args.batch_size]
            spec = {"mode": "text", "prompts": batch, "seed": seed + j}
            renders.append(Render(spec, [f"{slug(p)}_seed{seed}_" for p in batch], [{"prompt": p} for p in batch]))
        return renders
    if mode == "variations":
        renders = []
        for path in args.image:
            img = str(Path(path).resolve())
            spec = {"mode": "variations", "image": img, "caption": _caption(path), "seed": seed, "n": n}
            rows = [{**spec, "seed": seed + k, "n": 1} for k in range(n)]
            renders.append(Render(spec, [f"{slug(Path(path).stem)}_seed{seed}_"] * n,
                                  [{"input_image": img, "variation": k} for k in range(n)], rows))
        return renders
    if mode == "interpolate":
        a, b = (_endpoint(t) for t in args.interpolate)
        frames = args.frames or 8
        positions = [i / (frames - 1) for i in range(frames)]
        spec = {"mode": "interpolate", "a": a, "b": b, "positions": positions, "seed": seed}
        names = [slug(Path(t).stem if "image" in e else t, 24) for t, e in zip(args.interpolate, (a, b))]
        base = f"interp_{names[0]}_to_{names[1]}_seed{seed}"
        return [Render(spec, [f"{base}_{k:02d}" for k in range(frames)],
                       [{"a": a, "b": b, "frame": k, "position": t} for k, t in enumerate(positions)],
                       [{**spec, "positions": [t]} for t in positions], strip=f"{base}_strip")]
    if mode == "text_diff":
        amounts = list(args.amounts) if args.amounts is not None else [0.0, 0.25, 0.5]
        src, dst = args.text_diff
        renders = []
        for path in args.image:
            img = str(Path(path).resolve())
            spec = {"mode": "text_diff", "image": img, "from": src, "to": dst, "amounts": amounts,
                    "caption": _caption(path), "seed": seed}
            base = f"textdiff_{slug(Path(path).stem, 24)}_to_{slug(dst, 24)}_seed{seed}"
            renders.append(Render(spec, [f"{base}_{k:02d}" for k in range(len(amounts))],
                                  [{"input_image": img, "from": src, "to": dst, "amount": a} for a in amounts],
                                  [{**spec, "amounts": [a]} for a in amounts], strip=f"{base}_strip"))
        return renders
    # inpaint
    img, mask = str(Path(args.inpaint).resolve()), str(Path(args.mask).resolve())
    renders = []
    for j, prompt in enumerate(prompts or [None]):
        spec = {"mode": "inpaint", "image": img, "mask": mask, "prompt": prompt, "n": n, "seed": seed + j}
        name = f"inpaint_{slug(Path(args.inpaint).stem, 24)}_{slug(prompt or 'itself', 24)}_seed{seed}_"
        renders.append(Render(spec, [name] * n, [{"input_image": img, "mask": mask, "prompt": prompt}] * n))
    return renders


def _require(what: Any, message: str) -> Any:
    if what is None:
        raise ModeError(message)
    return what


def _render(chain, spec: dict, settings: dict, progress: bool | None) -> torch.Tensor:
    """The images (b, c, s, s) of a render spec."""
    mode, seed = spec["mode"], spec["seed"]
    prior_kw = dict(prior_cond_scale=settings["prior_cond_scale"], prior_steps=settings["prior_steps"],
                    negative_prompt=settings["negative_prompt"])
    dec_kw = dict(cond_scale=settings["cond_scale"], decoder_steps=settings["decoder_steps"], progress=progress)
    need_clip = "image and mask inputs need a CLIP to embed them (--clip, or a model folder with one)"
    need_prior = "text prompts need a prior (--prior, or a model folder with one)"
    if mode == "text":
        _require(chain.prior, need_prior)
        return chain(spec["prompts"], generator=_gen(seed), **prior_kw, **dec_kw)
    if mode == "variations":
        clip = _require(chain.clip, need_clip)
        image = load_image(spec["image"], clip.image_size)[None]
        return chain.variations(image, spec["n"], captions=[spec["caption"]], decoder_noise_seed=seed, **dec_kw)
    if mode == "interpolate":
        ends = []
        for end in (spec["a"], spec["b"]):
            if "prompt" in end:
                _require(chain.prior, need_prior)
                ends.append(end["prompt"])
            else:
                ends.append(load_image(end["image"], _require(chain.clip, need_clip).image_size))
        return chain.interpolate(ends[0], ends[1], spec["positions"], generator=_gen(seed), decoder_noise_seed=seed,
                                 **prior_kw, **dec_kw)
    if mode == "text_diff":
        clip = _require(chain.clip, need_clip)
        image = load_image(spec["image"], clip.image_size)
        return chain.text_diff(image, spec["from"], spec["to"], spec["amounts"], decoder_noise_seed=seed,
                               caption=spec["caption"], **dec_kw)
    if mode == "inpaint":
        size = chain.decoder.image_size
        image, keep = load_image(spec["image"], size), load_mask(spec["mask"], size)
        if spec["prompt"] is not None:
            _require(chain.prior, need_prior)
        else:
            _require(chain.clip, need_clip)
        return chain.inpaint(image, keep, spec["prompt"], spec["n"], generator=_gen(seed), **prior_kw, **dec_kw)
    raise ModeError(f"unknown mode {mode!r} in the sidecar")


def _chain(prior, decoder, settings: dict):
    from dalle2_pytorch.dalle2 import DALLE2

    return DALLE2(prior=prior, decoder=decoder, prior_num_samples=settings["prior_candidates"],
                  prior_sampler=settings["prior_sampler"], decoder_sampler=settings["sampler"])


def effective_sampling(chain, settings: dict) -> dict:
    """The samplers and steps the settings resolve to with these models (None = the model's own)."""
    from dalle2_pytorch.diffusion.steps import reference_sampler

    out: dict[str, Any] = {}
    if chain.prior is not None:
        T = chain.prior.noise_scheduler.num_timesteps
        steps = settings["prior_steps"] or chain.prior.sample_timesteps or T
        out["prior"] = {"sampler": settings["prior_sampler"] or chain.prior.sampler or reference_sampler(steps, T),
                        "steps": steps}
    out["decoder"] = []
    for stage in chain.decoder.stages:
        name, steps, _ = stage.resolve_sampling(settings["sampler"], settings["decoder_steps"])
        out["decoder"].append({"unet": stage.unet_number, "sampler": name, "steps": steps})
    return out


def _sidecar(mode: str, fields: dict, settings: dict, models: dict, spec: dict, row: int, effective: dict) -> dict:
    return {"dalle2_pytorch": __version__, "mode": mode, **fields, "seed": spec["seed"], "settings": settings,
            "sampling": effective, "models": models, "render": spec, "row": row}


def _write(out: Path, render: Render, images: torch.Tensor, mode: str, settings: dict, models: dict,
           gif: bool, effective: dict) -> list[Path]:
    from dalle2_pytorch.dalle2 import to_pil_images

    pils = to_pil_images(images)
    written: list[Path] = []
    if render.strip is not None:  # a set of frames: one run suffix for all its files
        suffix = free_suffix(out, [*render.stems, render.strip])
        stems = [s + suffix for s in render.stems]
    else:  # numbered names: the next free number
        stems, used = [], set()
        for prefix in render.stems:
            i = free_index(out, prefix)
            while f"{prefix}{i}" in used:
                i = free_index(out, prefix, i + 1)
            used.add(f"{prefix}{i}")
            stems.append(f"{prefix}{i}")
    for i, (stem, pil) in enumerate(zip(stems, pils)):
        spec, row = (render.row_specs[i], 0) if render.row_specs is not None else (render.spec, i)
        written.append(write_image(pil, out / f"{stem}.png", _sidecar(mode, render.fields[i], settings, models, spec, row, effective)))
    if render.strip is not None:
        written.append(write_strip(pils, out / f"{render.strip}{suffix}.png"))
        if gif:
            written.append(write_gif(pils, out / f"{render.strip}{suffix}.gif"))
    return written


def run(args, mode: str, prompts: list[str], prior, decoder) -> list[Path]:
    """Runs a mode with loaded models; writes and returns the files (PNGs, strips, GIFs)."""
    settings, models = _settings(args), _models(args)
    chain = _chain(prior, decoder, settings)
    effective = effective_sampling(chain, settings)
    renders = _plan(args, mode, prompts)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    grid_rows = []
    for render in renders:
        images = check_finite_images(_render(chain, render.spec, settings, args.progress), render.spec.get("mode", "the images"))
        for path in _write(out, render, images, mode, settings, models, args.gif, effective):
            print(path)
            written.append(path)
        if mode == "variations":  # the input, then its variations
            grid_rows.append(torch.cat([load_image(render.spec["image"], images.shape[-1])[None], images.cpu()]))
    if grid_rows:
        from dalle2_pytorch.dalle2 import to_pil_images

        stem = f"variations_seed{args.seed}_grid"
        path = write_grid([to_pil_images(row) for row in grid_rows], out / f"{stem}{free_suffix(out, [stem])}.png")
        print(path)
        written.append(path)
    return written


def replay(args, load_models: Callable[..., tuple]) -> list[Path]:
    """Regenerates the image of a sidecar (models from the sidecar unless model flags are given)."""
    record = read_sidecar(args.replay)
    models = dict(record["models"])
    given = {k: getattr(args, k) for k in _MODELS if getattr(args, k) is not None}
    if given:
        models = {k: None for k in _MODELS} | given
    prior, decoder, _ = load_models(**models, device=args.device)
    settings = {k: record["settings"].get(k) for k in _SETTINGS}
    images = check_finite_images(_render(_chain(prior, decoder, settings), record["render"], settings, args.progress), args.replay)
    row = int(record["row"])
    if not 0 <= row < images.shape[0]:
        raise ModeError(f"{args.replay}: row {row} is outside the {images.shape[0]} images of its render")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(record["image"]).stem
    path = out / f"{stem}{free_suffix(out, [stem])}.png"
    fields = {k: v for k, v in record.items() if k not in ("format", "format_version", "image")}
    from dalle2_pytorch.dalle2 import to_pil_images

    write_image(to_pil_images(images[row : row + 1])[0], path, {**fields, "replayed_from": str(Path(args.replay).resolve())})
    print(path)
    return [path]
