"""Image grids and progress bars for logging."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

__all__ = ["is_main_process", "make_image_grid", "progress"]


def is_main_process(accelerator: Any = None) -> bool:
    """accelerate's `is_main_process` (of `accelerator`, or of the process-wide `PartialState`)."""
    if accelerator is not None:
        return bool(accelerator.is_main_process)
    from accelerate import PartialState

    return bool(PartialState().is_main_process)


def make_image_grid(
    images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0
) -> Image.Image:
    """Tiles a batch of images into one RGB (or grayscale) PIL image.

    Args:
        images: (b, c, h, w) with values in [0, 1] (clamped), c in {1, 3}; a (c, h, w) image is
            accepted as a batch of one.
        nrow: images per row; default ceil(sqrt(b)).
        padding: pixels between images (and around the grid).
        pad_value: padding colour in [0, 1].
    """
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"make_image_grid expects (b, c, h, w) images with c in (1, 3), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if b == 0:
        raise ValueError("make_image_grid got an empty batch")
    nrow = nrow or math.ceil(math.sqrt(b))
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    ncol = math.ceil(b / nrow)
    grid = torch.full(
        (c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), float(pad_value), dtype=torch.float32
    )
    imgs = images.detach().float().cpu().clamp(0, 1)
    for i in range(b):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = imgs[i]
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if c == 1 else array)  # uint8: "L" or "RGB"


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str | None = None,
    accelerator: Any = None,
    disable: bool | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm progress bar shown on the main process only."""
    if disable is None:
        disable = not is_main_process(accelerator)
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, **kwargs)
