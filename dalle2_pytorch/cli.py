"""`dream`: prompts -> images with a trained prior + decoder.

    dream "a red circle" "a small blue square" --model-dir demo_output/models --seed 0 --output out/
    dream --prompts-file prompts.txt --prior prior/latest.pth --prior-config prior_config.json \\
          --decoder decoder/v1.0.2/latest.pth --clip '{"make": "openai", "model": "ViT-L/14"}' --output out/
    dream --image photo.png --model-dir demo_output/models --output variations/   # image variations

A model folder holds `dalle2.json` (`{"prior": "prior", "decoder": "decoder", "clip": {...}}`, paths
relative to the folder, and optionally `"defaults"`: the sampling settings used unless a flag is given,
e.g. `{"cond_scale": 2.0, "prior_candidates": 16}`) or the subfolders `prior/`, `decoder/` (our
safetensors exports) and `clip/` (a saved small-CLIP or x-clip model). `--prior` / `--decoder` also
take reference or LAION checkpoint files.

Text -> image from a saved CLIP folder imports neither x-clip nor torchvision nor pydantic and does not
build the CLIP's image tower (it is built on first use, for `--image`): see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["dream", "load_models", "main"]

logger = logging.getLogger("dalle2_pytorch.dream")

MODEL_INDEX = "dalle2.json"
_FOLDER_MAKES = ("x-clip", "x_clip", "small-clip")
#: built-in sampling defaults (a model folder's `dalle2.json` "defaults" come first)
_DEFAULTS = {"cond_scale": 1.0, "prior_cond_scale": 1.0, "prior_candidates": 2}


class DreamError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


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
    if base is not None and cfg.get("make") in _FOLDER_MAKES and model and not Path(model).is_absolute():
        cfg["model"] = str(base / model)
    return cfg


def _build_clip(spec: dict | None, device: str):
    if spec is None:
        return None
    model = spec.get("model")
    if spec.get("make") in _FOLDER_MAKES and model and (Path(model) / "clip_config.json").is_file() and set(spec) <= {"make", "model"}:
        # a saved CLIP folder: loaded directly (no pydantic), the image tower only when an image is embedded
        from dalle2_pytorch.clip_adapters.clip_folder import load_clip_folder

        try:
            return load_clip_folder(model, image_tower="lazy", device=device)
        except (OSError, ValueError) as e:
            raise DreamError(f"could not load the CLIP folder {model}: {e}") from e
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


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompts)
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise DreamError(f"prompts file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            prompts += [str(p) for p in json.loads(text)]
        else:
            prompts += [line.strip() for line in text.splitlines() if line.strip()]
    return prompts


def _load_image(path: str, size: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError) as e:
        raise DreamError(f"could not read image {path}: {e}") from e
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def generate(args) -> list[Path]:
    """Runs `dream` with parsed arguments; returns the written files."""
    from dalle2_pytorch.dalle2 import DALLE2, to_pil_images

    if args.num_images < 1 or args.batch_size < 1:
        raise DreamError("--num-images and --batch-size must be >= 1")
    for flag, value in (("--steps", args.steps), ("--prior-steps", args.prior_steps), ("--decoder-steps", args.decoder_steps)):
        if value is not None and value < 1:
            raise DreamError(f"{flag} must be >= 1, got {value}")
    _check_sampler(args.sampler)
    _check_sampler(args.prior_sampler)
    defaults = model_defaults(args.model_dir)
    for name in _DEFAULTS:
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
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
        if not prompts:
            raise DreamError("give at least one prompt (arguments or --prompts-file)")
        if prior is None:
            raise DreamError("text prompts need a prior (--prior or a model folder with one)")
        jobs = [(p, p) for p in prompts for _ in range(args.num_images)]

    chain = DALLE2(prior=prior, decoder=decoder, prior_num_samples=args.prior_candidates,
                   prior_sampler=args.prior_sampler, decoder_sampler=args.sampler)
    written: list[Path] = []
    counters: dict[str, int] = {}
    for start in range(0, len(jobs), args.batch_size):
        batch = jobs[start : start + args.batch_size]
        if args.image:
            images = torch.stack([_load_image(src, clip.image_size) for _, src in batch]).to(args.device)
            # a text-conditioned decoder also gets a caption: the file name (as dalle2-laion does)
            images = chain.variations(
                images, captions=[name.replace("_", " ") for name, _ in batch], cond_scale=args.cond_scale,
                decoder_steps=args.decoder_steps, generator=generator, progress=args.progress,
            )
        else:
            images = chain(
                [src for _, src in batch], cond_scale=args.cond_scale, prior_cond_scale=args.prior_cond_scale,
                prior_steps=args.prior_steps, decoder_steps=args.decoder_steps, generator=generator,
                progress=args.progress,
            )
        for (name, _), pil in zip(batch, to_pil_images(images)):
            slug = _slug(name)
            index = counters.get(slug, 0)
            counters[slug] = index + 1
            path = out_dir / f"{slug}_seed{args.seed}_{index}.png"
            pil.save(path)
            written.append(path)
            print(path)
    return written


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
    p = argparse.ArgumentParser(prog="dream", description="Generate images from text prompts with a trained DALL-E 2.")
    p.add_argument("prompts", nargs="*", help="text prompts")
    p.add_argument("--prompts-file", help="a .txt file (one prompt per line) or a .json list")
    p.add_argument("--model-dir", help="a demo/training output folder (dalle2.json or prior/ + decoder/ + clip/)")
    p.add_argument("--prior", help="prior checkpoint: our export folder, a reference or LAION .pth file")
    p.add_argument("--prior-config", help="config of a reference prior file (e.g. LAION's prior_config.json)")
    p.add_argument("--decoder", help="decoder checkpoint: our export folder, a reference or LAION .pth file")
    p.add_argument("--decoder-config", help="config for a decoder file that carries none")
    p.add_argument("--clip", help="CLIP: a saved x-clip folder, AdapterConfig JSON file, or inline JSON")
    p.add_argument("--image", nargs="+", help="image variations: embed these images with CLIP instead of the prior")
    p.add_argument("--output", "-o", default="dream_output", help="output folder (created)")
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
    p.add_argument("--verbose", "-v", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    args.prior_steps = args.prior_steps if args.prior_steps is not None else args.steps
    args.decoder_steps = args.decoder_steps if args.decoder_steps is not None else args.steps
    try:
        generate(args)
    except (DreamError, ValueError) as e:
        print(f"dream: error: {e}", file=sys.stderr)
        return 2
    return 0


def dream() -> None:
    """Console entry point."""
    sys.exit(main())


if __name__ == "__main__":
    dream()
