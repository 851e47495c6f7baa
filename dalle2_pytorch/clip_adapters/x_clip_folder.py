"""The saved-folder format of small x-clip CLIPs (the demo's, the tiny test configs').

A folder holds::

    clip.safetensors   weights (x_clip.CLIP state dict)
    clip_config.json   {"model_kwargs", "tokenizer", ...}: the CLIP keyword arguments, the
                       WordTokenizer vocabulary, and whatever the writer adds (training settings,
                       metrics)

``model_kwargs["image_encoder"] = {"type": "conv", "widths": [w1, w2]}`` selects
:class:`ConvImageEncoder` (a small CNN with x-clip's vision-transformer interface) instead of
x-clip's ViT. ``load_clip(folder)`` returns ``(x_clip.CLIP, WordTokenizer)``; wrap them with
``XClipAdapter(clip, tokenizer=tokenizer)``. x-clip is imported only when a model is built.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from dalle2_pytorch._extras import import_optional
from dalle2_pytorch.clip_adapters.word_tokenizer import WordTokenizer

if TYPE_CHECKING:  # pragma: no cover
    from x_clip import CLIP

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "ConvImageEncoder", "build_clip", "is_clip_folder", "load_clip", "save_clip"]

CONFIG_FILE = "clip_config.json"
WEIGHTS_FILE = "clip.safetensors"
_INIT_LOG_TEMPERATURE = math.log(10.0)  # x-clip starts at log-scale 1 (logit scale e), slow to learn


def is_clip_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder in this format."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


class ConvImageEncoder(nn.Module):
    """Small CNN image encoder with x-clip's vision-transformer interface.

    (b, c, s, s) images -> (b, 1 + (s/4)^2, dim): a pooled token (mean of the feature map, then a
    linear layer) followed by one token per cell of the 4x-downsampled feature map.
    """

    def __init__(self, dim: int, image_size: int, channels: int = 3, widths: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        if len(widths) != 2 or any(int(w) % 8 for w in (*widths, dim)):
            raise ValueError(f"need two widths and a dim divisible by 8 (GroupNorm of 8), got {list(widths)}, {dim}")
        w1, w2 = (int(w) for w in widths)
        self.net = nn.Sequential(
            nn.Conv2d(channels, w1, 3, padding=1), nn.GroupNorm(8, w1), nn.GELU(),
            nn.Conv2d(w1, w2, 3, stride=2, padding=1), nn.GroupNorm(8, w2), nn.GELU(),
            nn.Conv2d(w2, w2, 3, padding=1), nn.GroupNorm(8, w2), nn.GELU(),
            nn.Conv2d(w2, dim, 3, stride=2, padding=1), nn.GroupNorm(8, dim), nn.GELU(),
        )
        self.to_pooled = nn.Linear(dim, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.net(images).flatten(2).transpose(1, 2)  # (b, n, dim)
        pooled = self.to_pooled(tokens.mean(dim=1, keepdim=True))  # (b, 1, dim)
        return torch.cat((pooled, tokens), dim=1)


def build_clip(model_kwargs: dict) -> "CLIP":
    """An ``x_clip.CLIP`` from ``model_kwargs`` with the logit scale initialised to 10.

    ``model_kwargs["image_encoder"] = {"type": "conv", "widths": [32, 64]}`` replaces the vision
    transformer by a ``ConvImageEncoder``.
    """
    CLIP = import_optional("x_clip", "clip", "x-clip CLIP folders").CLIP

    kwargs = dict(model_kwargs)
    spec = kwargs.pop("image_encoder", None)  # None: x-clip's vision transformer
    if spec is not None:
        if spec.get("type") != "conv":
            raise ValueError(f"unknown image_encoder type {spec.get('type')!r}")
        kwargs["image_encoder"] = ConvImageEncoder(
            kwargs["dim_image"], kwargs["visual_image_size"], kwargs.get("channels", 3), spec.get("widths", (32, 64))
        )
    clip = CLIP(**kwargs)
    with torch.no_grad():
        clip.temperature.fill_(_INIT_LOG_TEMPERATURE)
    return clip


def save_clip(clip: "CLIP", tokenizer: WordTokenizer, out_dir: str | os.PathLike, model_kwargs: dict, **extra) -> Path:
    """Writes ``clip.safetensors`` and ``clip_config.json`` (atomically) and returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in clip.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out / WEIGHTS_FILE)
    config = {"model_kwargs": model_kwargs, "tokenizer": tokenizer.to_dict(), **extra}
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, out / CONFIG_FILE)
    return out


def load_clip(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple["CLIP", WordTokenizer]:
    """Loads ``(x_clip.CLIP in eval mode, WordTokenizer)`` saved by ``save_clip`` / ``train_clip``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_FILE} + {WEIGHTS_FILE}: train the demo CLIP first")
    config = json.loads((folder / CONFIG_FILE).read_text())
    clip = build_clip(config["model_kwargs"])
    clip.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    return clip.to(device).eval(), WordTokenizer.from_dict(config["tokenizer"])
