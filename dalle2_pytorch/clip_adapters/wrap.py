"""`wrap_clip`: what the prior and the decoder accept as `clip=`."""

from __future__ import annotations

from typing import Any

from dalle2_pytorch.clip_adapters.base import BaseClipAdapter

__all__ = ["wrap_clip"]


def wrap_clip(clip: Any, overrides: dict | None = None) -> BaseClipAdapter | None:
    """A CLIP adapter, an `x_clip.CLIP` (wrapped in :class:`XClipAdapter` with `overrides`), or None."""
    if clip is None or isinstance(clip, BaseClipAdapter):
        return clip
    try:
        from x_clip import CLIP as XCLIP
    except ImportError:  # pragma: no cover
        XCLIP = ()
    if isinstance(clip, XCLIP):
        from dalle2_pytorch.clip_adapters.x_clip_adapter import XClipAdapter

        return XClipAdapter(clip, **(overrides or {}))
    raise TypeError(f"clip must be a dalle2_pytorch CLIP adapter or an x_clip.CLIP, got {type(clip).__name__}")
