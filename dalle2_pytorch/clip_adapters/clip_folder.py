"""Saved small-CLIP folders: the torch-only :class:`SmallCLIP` format, and dispatch to x-clip folders.

A folder holds::

    clip.safetensors   weights (the model's state dict)
    clip_config.json   {"architecture": "small-clip", "model_kwargs", "tokenizer", ...}: the
                       constructor arguments, the WordTokenizer vocabulary, and whatever the writer
                       adds (training settings, metrics)

A ``clip_config.json`` without ``"architecture"`` (or with ``"x-clip"``) is the older x-clip
format of :mod:`.x_clip_folder` (demo folders written before the small CLIP); :func:`load_clip_folder`
reads both and returns an adapter. Only the small-CLIP path avoids importing x-clip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch

from dalle2_pytorch.clip_adapters.base import BaseClipAdapter
from dalle2_pytorch.clip_adapters.small_clip import ImageTower, SmallCLIP, SmallClipAdapter
from dalle2_pytorch.clip_adapters.word_tokenizer import WordTokenizer

__all__ = ["CONFIG_FILE", "SMALL_CLIP", "WEIGHTS_FILE", "folder_architecture", "load_clip_folder", "load_small_clip",
           "save_small_clip"]

CONFIG_FILE = "clip_config.json"
WEIGHTS_FILE = "clip.safetensors"
SMALL_CLIP = "small-clip"
_IMAGE_PREFIX = "image_tower."

ImageTowerMode = Literal["load", "lazy", "none"]


def _read_config(folder: Path) -> dict:
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE} + {WEIGHTS_FILE}: not a saved CLIP folder "
                                "(train the demo CLIP first)")
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as e:
        raise ValueError(f"{folder / CONFIG_FILE} is not valid JSON: {e}") from None


def folder_architecture(folder: str | os.PathLike) -> str:
    """``"small-clip"`` or ``"x-clip"``: which model a saved CLIP folder holds."""
    return str(_read_config(Path(folder)).get("architecture", "x-clip"))


def save_small_clip(clip: SmallCLIP, tokenizer: WordTokenizer, out_dir: str | os.PathLike, model_kwargs: dict,
                    **extra: Any) -> Path:
    """Writes ``clip.safetensors`` and ``clip_config.json`` (each atomically); returns the folder.

    Args:
        clip: the model (with its image tower).
        tokenizer: its word tokenizer.
        model_kwargs: the ``SmallCLIP`` constructor arguments (JSON-able).
        **extra: more JSON entries (training settings, metrics, "finished", ...).
    """
    from safetensors.torch import save_file

    if clip.image_tower is None:
        raise ValueError("save_small_clip needs the whole model (this one has no image tower)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in clip.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out / WEIGHTS_FILE)
    config = {"architecture": SMALL_CLIP, "model_kwargs": model_kwargs, "tokenizer": tokenizer.to_dict(), **extra}
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out / CONFIG_FILE)
    return out


def _load_tensors(path: Path, keep: Any) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose key passes ``keep`` (others are never read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"could not read {path}: {e}") from None


def load_small_clip(
    folder: str | os.PathLike, device: str | torch.device = "cpu", *, image_tower: ImageTowerMode = "load",
) -> tuple[SmallCLIP, WordTokenizer, Any]:
    """Loads a small-CLIP folder.

    Args:
        folder: written by :func:`save_small_clip`.
        device: where the model goes.
        image_tower: ``"load"`` the whole model; ``"lazy"`` only the text side, with a loader of the
            image tower returned; ``"none"`` only the text side.

    Returns:
        ``(SmallCLIP in eval mode, WordTokenizer, image-tower loader or None)``.

    Raises:
        FileNotFoundError: not a CLIP folder. ValueError: not a small-CLIP folder, unreadable
        weights, or weights that do not match the config.
    """
    folder = Path(folder)
    config = _read_config(folder)
    if config.get("architecture") != SMALL_CLIP:
        raise ValueError(f"{folder} holds a {config.get('architecture', 'x-clip')} CLIP, not a {SMALL_CLIP}")
    tokenizer = WordTokenizer.from_dict(config["tokenizer"])
    kwargs = dict(config["model_kwargs"])
    with_tower = image_tower == "load"
    clip = SmallCLIP(**kwargs, image_tower=with_tower)
    weights = folder / WEIGHTS_FILE
    state = _load_tensors(weights, lambda k: with_tower or not k.startswith(_IMAGE_PREFIX))
    try:
        clip.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{weights} does not match {folder / CONFIG_FILE}: {e}") from None
    clip = clip.to(device).eval()

    def load_image_tower() -> ImageTower:
        tower = clip.build_image_tower()
        part = _load_tensors(weights, lambda k: k.startswith(_IMAGE_PREFIX))
        tower.load_state_dict({k[len(_IMAGE_PREFIX) :]: v for k, v in part.items()}, strict=True)
        return tower.eval()

    return clip, tokenizer, (load_image_tower if image_tower == "lazy" else None)


def load_clip_folder(folder: str | os.PathLike, *, image_tower: ImageTowerMode = "load",
                     device: str | torch.device | None = None, **adapter_kwargs: Any) -> BaseClipAdapter:
    """A frozen adapter for any saved CLIP folder (small-CLIP, or the older x-clip format).

    Args:
        folder: the saved folder.
        image_tower: for small-CLIP folders, see :func:`load_small_clip` (``"lazy"`` for text -> image:
            the image tower is built on the first ``embed_image``). x-clip folders load whole.
        device: where the model goes (default: the CPU).
        **adapter_kwargs: forwarded to ``XClipAdapter`` (x-clip folders only).
    """
    folder = Path(folder)
    if folder_architecture(folder) == SMALL_CLIP:
        if adapter_kwargs:
            raise TypeError(f"unexpected arguments for a small-CLIP folder: {sorted(adapter_kwargs)}")
        clip, tokenizer, loader = load_small_clip(folder, device or "cpu", image_tower=image_tower)
        return SmallClipAdapter(clip, tokenizer, image_tower_loader=loader)
    from dalle2_pytorch.clip_adapters.x_clip_adapter import XClipAdapter
    from dalle2_pytorch.clip_adapters.x_clip_folder import load_clip

    clip, tokenizer = load_clip(folder, device or "cpu")
    return XClipAdapter(clip, tokenizer=tokenizer, **adapter_kwargs)
