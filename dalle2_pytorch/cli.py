"""`dream`: prompts -> images with a trained prior + decoder.

    dream "a red circle" "a small blue square" --model-dir demo_output/models --seed 0 --output out/
    dream --prompts-file prompts.txt --prior prior/latest.pth --prior-config prior_config.json \\
          --decoder decoder/v1.0.2/latest.pth --clip '{"make": "openai", "model": "ViT-L/14"}' --output out/
    dream --image photo.png --model-dir demo_output/models --output variations/   # image variations

A model folder holds `dalle2.json` (`{"prior": "prior", "decoder": "decoder", "clip": {...}}`, paths
relative to the folder) or the subfolders `prior/`, `decoder/` (our safetensors exports) and `clip/` (a
saved x-clip model). `--prior` / `--decoder` also take reference or LAION checkpoint files.

Every failure is one line on stderr (`dream: error: ...`) and a non-zero exit status: 2 for bad
arguments or files (empty prompt, negative guidance scale, unknown or unavailable device, `--output`
naming a file, damaged or tampered checkpoint), 3 when generation fails (e.g. the model produces
NaN: no image is written from non-finite values). `--verbose` also prints the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from dalle2_pytorch.command_line import ArgumentParser, UserError, check_device, run_command

__all__ = ["dream", "load_models", "main", "validate_args"]

logger = logging.getLogger("dalle2_pytorch.dream")

MODEL_INDEX = "dalle2.json"


class DreamError(UserError):
    """A user-facing error: printed as one line without a traceback, exit status 2."""


class GenerationError(DreamError):
    """Generation produced unusable output (non-finite values); exit status 3."""

    exit_status = 3


MAX_NUM_IMAGES = 10_000  # per prompt: a larger count is a typo, not a request (it would run for days)
MAX_PRIOR_CANDIDATES = 1024  # prior samples per image, all in one batch


def validate_args(args: argparse.Namespace) -> None:
    """Checks every argument before any model is loaded or file written.

    Raises:
        DreamError: naming the first bad argument.
    """
    if args.num_images < 1 or args.batch_size < 1:
        raise DreamError("--num-images and --batch-size must be >= 1")
    if args.num_images > MAX_NUM_IMAGES:
        raise DreamError(f"--num-images {args.num_images} is more than {MAX_NUM_IMAGES} images per prompt")
    for name in ("steps", "prior_steps", "decoder_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise DreamError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not 1 <= args.prior_candidates <= MAX_PRIOR_CANDIDATES:
        raise DreamError(f"--prior-candidates must be between 1 and {MAX_PRIOR_CANDIDATES}, got {args.prior_candidates}")
    for flag, value in (("--cond-scale", args.cond_scale), ("--prior-cond-scale", args.prior_cond_scale)):
        if not math.isfinite(value) or value < 0:
            raise DreamError(f"{flag} must be a finite number >= 0 (1: no guidance), got {value}")
    if not 0 <= args.seed < 2**64:
        raise DreamError(f"--seed must be between 0 and 2**64 - 1, got {args.seed}")
    check_device(args.device)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise DreamError(f"--output {out} is an existing file; give a folder (created if missing) for the images")
    if args.image:
        if args.prompts or args.prompts_file:
            raise DreamError("give text prompts or --image (image variations), not both")
        for path in args.image:
            if not Path(path).is_file():
                raise DreamError(f"--image {path}: file not found")
    else:
        _read_prompts(args)


def _slug(text: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug[:max_len] or "image"


def _parse_clip_spec(spec: str | dict | None, base: Path | None) -> dict | None:
    """A CLIP spec: AdapterConfig JSON (inline or file), or a saved x-clip folder."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        cfg = dict(spec)
    else:
        p = Path(spec)
        if p.is_dir():
            cfg = {"make": "x-clip", "model": str(p)}
        elif p.is_file():
            cfg = json.loads(p.read_text())
        else:
            try:
                cfg = json.loads(spec)
            except json.JSONDecodeError:
                raise DreamError(f"--clip {spec!r} is neither a folder, a JSON file nor inline JSON") from None
    model = cfg.get("model")
    if base is not None and cfg.get("make") in ("x-clip", "x_clip") and model and not Path(model).is_absolute():
        cfg["model"] = str(base / model)
    return cfg


def _build_clip(spec: dict | None, device: str):
    if spec is None:
        return None
    from dalle2_pytorch.config.clip import AdapterConfig

    try:
        return AdapterConfig.model_validate(spec).create().to(device)
    except (OSError, ValueError) as e:
        raise DreamError(f"could not build the CLIP adapter from {spec}: {e}") from e


def _model_dir_sources(model_dir: Path) -> dict[str, Any]:
    if not model_dir.exists():
        raise DreamError(f"model folder not found: {model_dir}")
    if not model_dir.is_dir():
        raise DreamError(f"--model-dir must be a folder, got a file: {model_dir}")
    index = model_dir / MODEL_INDEX
    if index.exists():
        try:
            meta = json.loads(index.read_text())
        except json.JSONDecodeError as e:
            raise DreamError(f"{index} is not valid JSON: {e}") from e
        return {
            "prior": model_dir / meta.get("prior", "prior"),
            "decoder": model_dir / meta.get("decoder", "decoder"),
            "clip": _parse_clip_spec(meta.get("clip"), model_dir),
        }
    found = {name: model_dir / name for name in ("prior", "decoder", "clip") if (model_dir / name).exists()}
    if "prior" not in found or "decoder" not in found:
        raise DreamError(
            f"{model_dir} holds no {MODEL_INDEX} and no prior/ + decoder/ subfolders; "
            "point --model-dir at a demo or training output folder"
        )
    return {"prior": found["prior"], "decoder": found["decoder"],
            "clip": _parse_clip_spec(str(found["clip"]), None) if "clip" in found else None}


def load_models(
    *,
    model_dir: str | Path | None = None,
    prior: str | Path | None = None,
    decoder: str | Path | None = None,
    prior_config: str | None = None,
    decoder_config: str | None = None,
    clip: str | dict | None = None,
    device: str = "cpu",
):
    """Loads (prior, decoder, clip adapter) from a model folder or explicit checkpoint files."""
    from dalle2_pytorch.decoder import Decoder
    from dalle2_pytorch.prior import DiffusionPrior
    from dalle2_pytorch.serialization import CheckpointError

    sources: dict[str, Any] = {"prior": prior, "decoder": decoder, "clip": _parse_clip_spec(clip, None)}
    if model_dir is not None:
        found = _model_dir_sources(Path(model_dir))
        sources = {k: sources[k] if sources[k] is not None else v for k, v in found.items()}
    if sources["decoder"] is None:
        raise DreamError("no decoder given: use --model-dir or --decoder")
    for name in ("prior", "decoder"):
        if sources[name] is not None and not Path(sources[name]).exists():
            raise DreamError(f"{name} checkpoint not found: {sources[name]}")
    adapter = _build_clip(sources["clip"], device)
    try:
        prior_model = None
        if sources["prior"] is not None:
            prior_model = DiffusionPrior.from_checkpoint(sources["prior"], prior_config, clip=adapter)
        decoder_model = Decoder.from_checkpoint(sources["decoder"], decoder_config, clip=adapter)
    except (CheckpointError, ValueError, OSError) as e:
        raise DreamError(f"could not load the models: {e}") from e
    if prior_model is not None and prior_model.clip is None:
        raise DreamError("the prior needs a CLIP to embed the prompts: give --clip (or a model folder with one)")
    return (None if prior_model is None else prior_model.to(device)), decoder_model.to(device), adapter


def _read_prompts(args) -> list[str]:
    """The prompts of the arguments and `--prompts-file`; empty or blank prompts are errors."""
    prompts = list(args.prompts)
    for i, prompt in enumerate(prompts, 1):
        if not prompt.strip():
            raise DreamError(f"prompt {i} is empty; give some text (or use --image for image variations)")
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise DreamError(f"prompts file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DreamError(f"could not read prompts file {path}: {e}") from e
        if path.suffix == ".json":
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise DreamError(f"prompts file {path} is not valid JSON: {e}") from e
            if not isinstance(items, list) or not all(isinstance(p, str) and p.strip() for p in items):
                raise DreamError(f"prompts file {path} must hold a JSON list of non-empty strings")
            prompts += items
        else:
            prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise DreamError("give at least one prompt (arguments or --prompts-file)")
    return prompts


def _load_image(path: str, size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    import torchvision.transforms.functional as TF

    try:
        img = Image.open(path).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DreamError(f"could not read image {path}: {e}") from e
    return TF.to_tensor(TF.resize(img, [size, size], antialias=True))


def generate(args) -> list[Path]:
    """Runs `dream` with parsed arguments; returns the written files."""
    from dalle2_pytorch.dalle2 import to_pil_images

    validate_args(args)
    prior, decoder, clip = load_models(
        model_dir=args.model_dir, prior=args.prior, decoder=args.decoder, prior_config=args.prior_config,
        decoder_config=args.decoder_config, clip=args.clip, device=args.device,
    )
    clip = clip or (prior.clip if prior is not None else None)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    jobs: list[tuple[str, Any]] = []
    if args.image:
        if clip is None:
            raise DreamError("image variations need a CLIP to embed the image (--clip or a model folder with one)")
        for path in args.image:
            jobs += [(Path(path).stem, path)] * args.num_images
    else:
        prompts = _read_prompts(args)
        if prior is None:
            raise DreamError("text prompts need a prior (--prior or a model folder with one)")
        jobs = [(p, p) for p in prompts for _ in range(args.num_images)]

    written: list[Path] = []
    counters: dict[str, int] = {}
    for start in range(0, len(jobs), args.batch_size):
        batch = jobs[start : start + args.batch_size]
        with torch.no_grad():
            if args.image:
                images = torch.stack([_load_image(src, clip.image_size) for _, src in batch]).to(args.device)
                image_embed = clip.embed_image(images).image_embed
                # a text-conditioned decoder also gets a caption: the file name (as dalle2-laion does)
                tokens = clip.tokenize([name.replace("_", " ") for name, _ in batch]).to(args.device)
            else:
                tokens = clip.tokenize([src for _, src in batch]).to(args.device)
                text_embed, text_enc = clip.embed_text(tokens)
                image_embed = prior.sample(
                    text_embed=text_embed, text_encodings=text_enc if prior.condition_on_text_encodings else None,
                    num_samples_per_batch=args.prior_candidates, cond_scale=args.prior_cond_scale,
                    timesteps=args.prior_steps, generator=generator,
                )
            text_encodings = None
            if decoder.condition_on_text_encodings:
                text_encodings = clip.embed_text(tokens).text_encodings
            images = decoder.sample(image_embed=image_embed, text_encodings=text_encodings, cond_scale=args.cond_scale,
                                    timesteps=args.decoder_steps, generator=generator)
        if not bool(torch.isfinite(images).all()):
            names = ", ".join(sorted({repr(name) for name, _ in batch}))
            raise GenerationError(
                f"the models produced non-finite values (NaN/inf) for {names}: no image was written for them "
                "(the weights or the guidance scale are unusable)"
            )
        for (name, _), pil in zip(batch, to_pil_images(images)):
            slug = _slug(name)
            index = counters.get(slug, 0)
            counters[slug] = index + 1
            path = out_dir / f"{slug}_seed{args.seed}_{index}.png"
            tmp = path.with_name(f".{path.name}.tmp")
            pil.save(tmp, format="PNG")  # complete files only: written aside, then renamed
            os.replace(tmp, path)
            written.append(path)
            print(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="dream", description="Generate images from text prompts with a trained DALL-E 2.")
    p.add_argument("prompts", nargs="*", help="text prompts")
    p.add_argument("--prompts-file", help="a .txt file (one prompt per line) or a .json list")
    p.add_argument("--model-dir", help="a demo/training output folder (dalle2.json or prior/ + decoder/ + clip/)")
    p.add_argument("--prior", help="prior checkpoint: our export folder, a reference or LAION .pth file")
    p.add_argument("--prior-config", help="config of a reference prior file (e.g. LAION's prior_config.json)")
    p.add_argument("--decoder", help="decoder checkpoint: our export folder, a reference or LAION .pth file")
    p.add_argument("--decoder-config", help="config for a decoder file that carries none")
    p.add_argument("--clip", help="CLIP: a saved x-clip folder, AdapterConfig JSON file, or inline JSON")
    p.add_argument("--image", nargs="+", help="image variations: embed these images with CLIP instead of the prior")
    p.add_argument("--output", "-o", default="dream_output", help="output folder (created; must not be a file)")
    p.add_argument("--num-images", "-n", type=int, default=1, help="images per prompt")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps for prior and decoder (default: the models')")
    p.add_argument("--prior-steps", type=int, default=None, help="prior sampler steps (overrides --steps)")
    p.add_argument("--decoder-steps", type=int, default=None, help="decoder sampler steps per stage (overrides --steps)")
    p.add_argument("--prior-cond-scale", type=float, default=1.0, help="prior classifier-free guidance scale")
    p.add_argument("--cond-scale", "--decoder-cond-scale", dest="cond_scale", type=float, default=1.0,
                   help="decoder classifier-free guidance scale")
    p.add_argument("--prior-candidates", type=int, default=2, help="prior samples per prompt, reranked by CLIP")
    p.add_argument("--batch-size", type=int, default=8, help="images generated at once")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1, mps, ...")
    p.add_argument("--verbose", "-v", action="store_true", help="log progress; print the traceback of an error")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `dream`; returns the exit status (every error is one line on stderr, see
    :mod:`dalle2_pytorch.command_line`)."""
    return run_command("dream", _main, argv)


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    args.prior_steps = args.prior_steps if args.prior_steps is not None else args.steps
    args.decoder_steps = args.decoder_steps if args.decoder_steps is not None else args.steps
    generate(args)  # validates the arguments first
    return 0


def dream() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    dream()
