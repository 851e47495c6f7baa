"""Frozen CLIP adapters: the only way the prior, decoder and data pipeline talk to CLIP.

* :class:`XClipAdapter` wraps an `x_clip.CLIP` (trainable CLIP, `dalle2_pytorch.CLIP`);
* :class:`OpenClipAdapter` wraps any open_clip text-transformer CLIP (LAION weights);
* :class:`OpenAIClipAdapter` builds OpenAI's CLIPs through open_clip (no `clip-anytorch`);
* :class:`CoCaAdapter` wraps open_clip's CoCa models (`coca_ViT-B-32`, ...).
* :class:`SmallClipAdapter` wraps a :class:`SmallCLIP` (torch-only small CLIP, the demo's), saved as
  a folder (:mod:`.clip_folder`; `load_clip_folder` also reads older x-clip folders).

`build_clip_adapter(make, model, ...)` maps the reference config's `make` values to adapters.
"""

from __future__ import annotations

import os
from typing import Any

from dalle2_pytorch._extras import import_optional
from dalle2_pytorch.clip_adapters.base import BaseClipAdapter, EmbeddedImage, EmbeddedText
from dalle2_pytorch.clip_adapters.coca_adapter import CoCaAdapter
from dalle2_pytorch.clip_adapters.clip_folder import load_clip_folder, load_small_clip, save_small_clip
from dalle2_pytorch.clip_adapters.open_clip_adapter import (
    OpenClipAdapter,
    load_clip_state_dict,
    open_clip_model_name,
)
from dalle2_pytorch.clip_adapters.openai_adapter import OpenAIClipAdapter
from dalle2_pytorch.clip_adapters.small_clip import SmallCLIP, SmallClipAdapter
from dalle2_pytorch.clip_adapters.tokenizer import SimpleTokenizer
from dalle2_pytorch.clip_adapters.word_tokenizer import WordTokenizer
from dalle2_pytorch.clip_adapters.wrap import wrap_clip
from dalle2_pytorch.clip_adapters.x_clip_adapter import XClipAdapter
from dalle2_pytorch.clip_adapters.x_clip_folder import is_clip_folder, load_clip, save_clip

__all__ = [
    "CLIP_ADAPTER_MAKES",
    "BaseClipAdapter",
    "CoCaAdapter",
    "EmbeddedImage",
    "EmbeddedText",
    "OpenAIClipAdapter",
    "OpenClipAdapter",
    "SimpleTokenizer",
    "SmallCLIP",
    "SmallClipAdapter",
    "WordTokenizer",
    "XClipAdapter",
    "build_clip_adapter",
    "is_clip_folder",
    "load_clip",
    "load_clip_folder",
    "load_clip_state_dict",
    "load_small_clip",
    "save_clip",
    "save_small_clip",
    "wrap_clip",
]

CLIP_ADAPTER_MAKES = ("openai", "open_clip", "x-clip", "small-clip", "coca")


def _default_open_clip_tag(arch: str) -> str:
    """The reference config's choice: the last tag open_clip lists for the architecture."""
    open_clip = import_optional("open_clip", "clip", "open_clip CLIP adapters")

    tags = dict(open_clip.list_pretrained())
    if arch not in tags:
        raise ValueError(f"open_clip has no pretrained weights for {arch}; pass pretrained=None or a file")
    return tags[arch]


def build_clip_adapter(
    make: str,
    model: str | None = None,
    pretrained: bool | str | os.PathLike | None = True,
    base_model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> BaseClipAdapter:
    """Builds an adapter from the reference `AdapterConfig` fields.

    Args:
        make: 'openai', 'open_clip', 'x-clip' (also 'x_clip'), 'small-clip' (extension: a saved
            :class:`SmallCLIP` folder in `model`) or 'coca'.
        model: architecture name for 'openai' (default 'ViT-L/14'), 'open_clip' (required) and
            'coca' (an open_clip CoCa model, default 'coca_ViT-B-32'); for 'openai' also a path to
            an OpenAI CLIP file.
        pretrained: True = default weights ('openai': OpenAI's; 'open_clip': the last tag open_clip
            lists for the architecture, as the reference config did); False/None = random weights;
            a tag (open_clip) or a local weights file. For 'x-clip' only a file path loads weights.
        base_model_kwargs: x-clip `CLIP(**kwargs)` arguments; open_clip config overrides for
            'openai'/'open_clip'/'coca'.
            For 'x-clip', `model` may instead name a folder saved by
            :func:`~dalle2_pytorch.clip_adapters.x_clip_folder.save_clip` (`clip_config.json` +
            `clip.safetensors`, tokenizer included), which is loaded whole; a small-CLIP folder
            named there is loaded as 'small-clip'.
        **kwargs: forwarded to the adapter constructor (e.g. `device`, `precision`).

    Raises:
        ValueError: unknown `make`, missing `model`, unknown tag.
    """
    make_key = make.lower().replace("_", "-") if isinstance(make, str) else make
    if make_key == "openai":
        return OpenAIClipAdapter(
            model or "ViT-L/14", pretrained=pretrained, model_kwargs=base_model_kwargs, **kwargs
        )
    if make_key == "open-clip":
        if not model:
            raise ValueError("make='open_clip' needs a model name, e.g. 'ViT-H-14'")
        if pretrained is True:
            pretrained = _default_open_clip_tag(open_clip_model_name(model))
        return OpenClipAdapter(
            model, pretrained=pretrained or None, model_kwargs=base_model_kwargs, **kwargs
        )
    if make_key in ("small-clip", "smallclip"):
        if not model or not os.path.isdir(os.fspath(model)):
            raise ValueError(f"make='small-clip' needs a saved small-CLIP folder in `model`, got {model!r}")
        return load_clip_folder(model, **kwargs)
    if make_key in ("x-clip", "xclip"):
        if model and os.path.isdir(os.fspath(model)):
            return load_clip_folder(model, **kwargs)

        CLIP = import_optional("x_clip", "clip", "x-clip CLIP adapters").CLIP

        from dalle2_pytorch.clip_adapters.open_clip_adapter import load_weights_into

        clip = CLIP(**(base_model_kwargs or {}))
        if isinstance(pretrained, (str, os.PathLike)):
            load_weights_into(clip, load_clip_state_dict(pretrained), source=os.fspath(pretrained))
        return XClipAdapter(clip, **kwargs)
    if make_key == "coca":
        name = model if model and model != "ViT-L/14" else "coca_ViT-B-32"  # ViT-L/14: the schema's default
        if pretrained is True:
            pretrained = _default_open_clip_tag(open_clip_model_name(name))
        return CoCaAdapter(name, pretrained=pretrained or None, model_kwargs=base_model_kwargs, **kwargs)
    raise ValueError(f"unknown CLIP adapter make {make!r}; expected one of {list(CLIP_ADAPTER_MAKES)}")
