"""`dream`: prompts -> images with a trained prior + decoder.

    dream "a red circle" "a small blue square" --model-dir demo_output/models --seed 0 --output out/
    dream --prompts-file prompts.txt --prior prior/latest.pth --prior-config prior_config.json \\
          --decoder decoder/v1.0.2/latest.pth --clip '{"make": "openai", "model": "ViT-L/14"}' --output out/
    dream --image photo.png --model-dir demo_output/models --output variations/   # image variations
    dream --serve --model-dir demo_output --port 7860     # the web page (`[web]` extra), prints its address
    dream "a red circle" --pretrained laion/dalle2 --output out/                   # LAION's release by name

Interpolations, text diffs, inpainting, negative prompts and replays from sidecars: see
`dalle2_pytorch.cli_modes`. Every image is written with a JSON sidecar of its settings.

A model folder holds `dalle2.json` (`{"prior": "prior", "decoder": "decoder", "clip": {...}}`, paths
relative to the folder, and optionally `"defaults"`: the sampling settings used unless a flag is given,
e.g. `{"cond_scale": 2.0, "prior_candidates": 16}`) or the subfolders `prior/`, `decoder/` (our
safetensors exports) and `clip/` (a saved small-CLIP or x-clip model). `--prior` / `--decoder` also
take reference or LAION checkpoint files.

Text -> image from a saved CLIP folder imports neither x-clip nor torchvision nor pydantic and does not
build the CLIP's image tower (it is built on first use, for `--image`): see docs/ARCHITECTURE.md.

Every failure is one line on stderr (`dream: error: ...`) and a non-zero exit status: 2 for bad
arguments or files (empty prompt, negative guidance scale, unknown or unavailable device, `--output`
naming a file, damaged or tampered checkpoint), 3 when generation fails (e.g. the model produces
NaN: no image is written from non-finite values). `--verbose` also prints the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from dalle2_pytorch.cli_outputs import GenerationError  # noqa: F401  (exit status 3; re-exported)
from dalle2_pytorch.command_line import ArgumentParser, UserError, check_device, exit_fast, run_command

__all__ = ["dream", "load_models", "main", "validate_args"]

logger = logging.getLogger("dalle2_pytorch.dream")

MODEL_INDEX = "dalle2.json"
#: built-in sampling defaults (a model folder's `dalle2.json` "defaults" come first)
_DEFAULTS = {"cond_scale": 1.0, "prior_cond_scale": 1.0, "prior_candidates": 2}


class DreamError(UserError):
    """A user-facing error: printed as one line without a traceback, exit status 2."""



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
    _check_sampler(args.sampler)
    _check_sampler(args.prior_sampler)


def _parse_clip_spec(spec: str | dict | None, base: Path | None) -> dict | None:
    """A CLIP spec: AdapterConfig JSON (inline or file), or a saved x-clip folder."""
    from dalle2_pytorch.compat.pretrained import parse_clip_spec

    try:
        return parse_clip_spec(spec, base)
    except ValueError as e:
        raise DreamError(f"--clip: {e}") from None


def _build_clip(spec: dict | None, device: str):
    from dalle2_pytorch.compat.pretrained import build_clip

    try:
        return build_clip(spec, device)
    except ValueError as e:
        raise DreamError(str(e)) from e


def _model_dir_sources(model_dir: Path) -> dict[str, Any]:
    from dalle2_pytorch.compat.pretrained import read_model_folder

    try:
        return read_model_folder(model_dir)
    except ValueError as e:
        raise DreamError(f"--model-dir: {e}") from None


def load_models(
    *,
    model_dir: str | Path | None = None,
    prior: str | Path | None = None,
    decoder: str | Path | None = None,
    prior_config: str | None = None,
    decoder_config: str | None = None,
    clip: str | dict | None = None,
    device: str = "cpu",
    pretrained: str | None = None,
):
    """Loads (prior, decoder, clip adapter) from a model folder, a pretrained name or checkpoint files."""
    from dalle2_pytorch.decoder import Decoder
    from dalle2_pytorch.prior import DiffusionPrior
    from dalle2_pytorch.serialization import CheckpointError

    if pretrained is not None:
        return _load_pretrained(pretrained, clip, device)
    sources: dict[str, Any] = {"prior": prior, "decoder": decoder, "clip": _parse_clip_spec(clip, None)}
    if model_dir is not None:
        found = _model_dir_sources(Path(model_dir))
        sources = {k: sources[k] if sources[k] is not None else v for k, v in found.items() if k in sources}
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


def _load_pretrained(name: str, clip: str | dict | None, device: str):
    """(prior, decoder, clip) of `DALLE2.from_pretrained(name)` (`--clip` replaces its CLIP)."""
    from dalle2_pytorch.dalle2 import DALLE2
    from dalle2_pytorch.serialization import CheckpointError

    try:
        chain = DALLE2.from_pretrained(name, clip=_build_clip(_parse_clip_spec(clip, None), device) if clip else "auto",
                                       map_location=device)
    except (CheckpointError, OSError) as e:
        raise DreamError(f"could not load the models: {e}") from e
    return chain.prior, chain.decoder, chain.clip


def model_defaults(model_dir: str | Path | None) -> dict[str, Any]:
    """Sampling defaults: the built-in ones updated with a model folder's `dalle2.json` "defaults"."""
    out = dict(_DEFAULTS)
    index = Path(model_dir) / MODEL_INDEX if model_dir is not None else None
    if index is not None and index.is_file():
        try:
            given = json.loads(index.read_text()).get("defaults") or {}
        except json.JSONDecodeError as e:
            raise DreamError(f"{index} is not valid JSON: {e}") from e
        out.update({k: v for k, v in given.items() if k in _DEFAULTS})
    return out


def apply_model_defaults(args: argparse.Namespace) -> None:
    """Fills the sampling settings not given on the command line from :func:`model_defaults`."""
    defaults = model_defaults(args.model_dir)
    for name in _DEFAULTS:
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])


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
    return prompts  # whether the mode needs prompts is checked by cli_modes.check_arguments


def generate(args) -> list[Path]:
    """Runs `dream` with parsed arguments; returns the written files."""
    from dalle2_pytorch import cli_modes

    apply_model_defaults(args)
    validate_args(args)
    prompts = _read_prompts(args)
    mode = cli_modes.check_arguments(args, prompts)
    for path in args.image or ():
        if not Path(path).is_file():
            raise DreamError(f"--image {path}: file not found")
    if mode == "replay":
        return cli_modes.replay(args, load_models)
    prior, decoder, _ = load_models(
        model_dir=args.model_dir, prior=args.prior, decoder=args.decoder, prior_config=args.prior_config,
        decoder_config=args.decoder_config, clip=args.clip, device=args.device, pretrained=args.pretrained,
    )
    return cli_modes.run(args, mode, prompts, prior, decoder)


def _sampler_names() -> list[str]:
    from dalle2_pytorch.diffusion import sampler_names

    return sampler_names()


def _check_sampler(name: str | None) -> str | None:
    from dalle2_pytorch.diffusion import parse_sampler

    if name is not None:
        try:
            parse_sampler(name)
        except ValueError as e:
            raise DreamError(str(e)) from None
    return name


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
    p.add_argument("--prior-cond-scale", type=float, default=None,
                   help="prior classifier-free guidance scale (default: the model folder's, else 1)")
    p.add_argument("--cond-scale", "--decoder-cond-scale", dest="cond_scale", type=float, default=None,
                   help="decoder classifier-free guidance scale (default: the model folder's, else 1)")
    p.add_argument("--sampler", "--decoder-sampler", dest="sampler", default=None,
                   help="decoder sampler: " + ", ".join(_sampler_names()) + ", optionally with a spacing after a colon "
                   "(dpmpp_2m:trailing, euler:karras); default: the model's own")
    p.add_argument("--prior-sampler", default=None, help="prior sampler (same names; default: the model's own)")
    p.add_argument("--prior-candidates", type=int, default=None,
                   help="prior samples per prompt, reranked by CLIP (default: the model folder's, else 2)")
    p.add_argument("--batch-size", type=int, default=8, help="images generated at once")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1, mps, ...")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show progress bars (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--verbose", "-v", action="store_true", help="log progress; print the traceback of an error")
    p.add_argument("--serve", action="store_true",
                   help="serve the web page (gradio, the [web] extra) instead of writing images; prints its address, "
                   "the flags above set the page's defaults")
    p.add_argument("--host", default="127.0.0.1", help="--serve: address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="--serve: port (0: any free port)")
    from dalle2_pytorch.cli_modes import add_arguments

    add_arguments(p)  # --interpolate, --text-diff, --inpaint, --negative-prompt, --pretrained, --replay, ...
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
    if args.serve:  # the page is an application above cli: imported by name, only when asked for
        apply_model_defaults(args)  # the page's defaults: the flags, else the model folder's, else built-in
        return importlib.import_module("dalle2_pytorch.app.server").serve_from_args(args)
    generate(args)  # validates the arguments first
    return 0


def dream() -> None:
    """Console entry point (exits without the interpreter's teardown, see `exit_fast`)."""
    exit_fast(main())


if __name__ == "__main__":
    # `python -m dalle2_pytorch.cli`: run the importable module, whose DreamError is the one that
    # dalle2_pytorch.app (imported by `--serve`) raises, not this __main__ copy's
    from dalle2_pytorch.cli import dream as _dream

    _dream()
