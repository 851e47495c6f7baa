"""Builds the CLIP adapter a training script needs from the config's `clip` section.

Besides everything `AdapterConfig.create()` / `build_clip_adapter` accept (OpenAI / open_clip
names and tags, weights files, random x-clip models), an x-clip `model` (the convention shared with
`build_clip_adapter`) or `pretrained` value may name a **folder**:

* a folder saved by the demo (`dalle2_pytorch.demo.train_clip`, the small-CLIP format of
  `clip_adapters.clip_folder`, or the older x-clip one): `clip.safetensors` + `clip_config.json`
  holding the model arguments and the tokenizer; both are taken from the folder
  (`base_model_kwargs` is then only informative); `make: "small-clip"` names such a folder too;
* any other folder holding `clip.safetensors` or `model.safetensors`: the weights are loaded into
  `x_clip.CLIP(**base_model_kwargs)`.

The adapter is kept outside the trained model (never in checkpoints, never copied into the EMA),
frozen and in eval mode.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from dalle2_pytorch.training.scripts.cli import ConfigError

__all__ = ["DEMO_CLIP_CONFIG", "build_clip", "resolve_clip_weights"]

logger = logging.getLogger("dalle2_pytorch.scripts")

DEMO_CLIP_CONFIG = "clip_config.json"
_WEIGHT_FILES = ("clip.safetensors", "model.safetensors")
_ARCH_NAME = re.compile(r"(ViT|RN|convnext|coca)[\w.-]*(/\d+)?(@\d+px)?", re.IGNORECASE)  # "ViT-L/14" is no path


def resolve_clip_weights(folder: Path) -> Path:
    """The weights file inside an x-clip folder.

    Raises:
        FileNotFoundError: none of `clip.safetensors` / `model.safetensors` is there.
    """
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"x-clip folder {folder} holds none of {list(_WEIGHT_FILES)}")


def build_clip(adapter_config: Any, device: torch.device | str | None = None) -> Any:
    """A frozen CLIP adapter for `adapter_config` (an `AdapterConfig`), or None when it is None.

    Raises:
        ConfigError: a configured local weights file / folder does not exist.
    """
    if adapter_config is None:
        return None
    make = adapter_config.make.replace("_", "-")
    folder = _x_clip_folder(adapter_config) if make in ("x-clip", "small-clip") else None
    if folder is not None:
        if (folder / DEMO_CLIP_CONFIG).is_file():
            adapter = _load_demo_folder(folder)
        elif make == "small-clip":
            raise ConfigError(f"clip.model = {str(folder)!r} holds no {DEMO_CLIP_CONFIG}: not a saved small-CLIP folder")
        else:
            weights = resolve_clip_weights(folder)
            adapter = adapter_config.model_copy(update={"pretrained": str(weights), "model": "x-clip"}).create()
    else:
        for name in ("pretrained", "model") if make in ("x-clip", "small-clip") else ("pretrained",):
            value = getattr(adapter_config, name)
            missing = isinstance(value, str) and _looks_like_path(value) and not Path(value).exists()
            if missing and not _ARCH_NAME.fullmatch(value):
                raise ConfigError(f"clip.{name} = {value!r} does not exist (a CLIP weights file or saved folder)")
        adapter = adapter_config.create()
    adapter.requires_grad_(False)
    adapter.eval()
    if device is not None:
        adapter = adapter.to(device)
    return adapter


def _x_clip_folder(adapter_config: Any) -> Path | None:
    for value in (adapter_config.model, adapter_config.pretrained):
        if isinstance(value, (str, os.PathLike)) and Path(value).is_dir():
            return Path(value)
    return None


def _looks_like_path(value: str) -> bool:
    return "/" in value or os.sep in value or value.endswith((".safetensors", ".pt", ".pth", ".bin"))


def _load_demo_folder(folder: Path) -> Any:
    from dalle2_pytorch.clip_adapters.clip_folder import folder_architecture, load_clip_folder

    adapter = load_clip_folder(folder)
    logger.info("loaded a %s CLIP and its tokenizer from %s", folder_architecture(folder), folder)
    return adapter
