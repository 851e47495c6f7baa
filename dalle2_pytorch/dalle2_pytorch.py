"""Compatibility module: the public classes of the reference's `dalle2_pytorch.dalle2_pytorch`
(where it defined every model), resolved lazily from this package's modules.

Reference users import the adapters that the package root does not export from here, e.g.
`from dalle2_pytorch.dalle2_pytorch import XClipAdapter, CoCaAdapter, NullVQGanVAE`. The
reference's internal building blocks and helper functions are not mirrored (see
`tests/test_reference_names.py` for each name left out and why).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "DALLE2": "dalle2_pytorch.dalle2",
    "DiffusionPrior": "dalle2_pytorch.prior",
    "DiffusionPriorNetwork": "dalle2_pytorch.prior",
    "Unet": "dalle2_pytorch.decoder",
    "Decoder": "dalle2_pytorch.decoder",
    "LowresConditioner": "dalle2_pytorch.decoder.lowres",
    "NoiseScheduler": "dalle2_pytorch.diffusion",
    "BaseClipAdapter": "dalle2_pytorch.clip_adapters",
    "XClipAdapter": "dalle2_pytorch.clip_adapters",
    "CoCaAdapter": "dalle2_pytorch.clip_adapters",
    "OpenAIClipAdapter": "dalle2_pytorch.clip_adapters",
    "OpenClipAdapter": "dalle2_pytorch.clip_adapters",
    "EmbeddedText": "dalle2_pytorch.clip_adapters",
    "EmbeddedImage": "dalle2_pytorch.clip_adapters",
    "VQGanVAE": "dalle2_pytorch.vqgan_vae",
    "NullVQGanVAE": "dalle2_pytorch.vqgan_vae",
    "tokenizer": "dalle2_pytorch.tokenizer",
    "CLIP": "x_clip",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'dalle2_pytorch.dalle2_pytorch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
