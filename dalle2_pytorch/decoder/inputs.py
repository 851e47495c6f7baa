"""Checks of the decoder's image inputs, and the training-time random crop shared by image and condition."""

from __future__ import annotations

import torch

from dalle2_pytorch.rng import rand_tensor

__all__ = ["check_image", "check_inpaint", "random_crop"]


def check_image(image: torch.Tensor, channels: int, name: str = "image") -> None:
    """A (b, channels, s, s) tensor, or a ValueError naming the problem."""
    if not torch.is_tensor(image) or image.ndim != 4:
        raise ValueError(f"{name} must be a (batch, {channels}, height, width) tensor")
    if image.shape[1] != channels:
        raise ValueError(f"{name} has {image.shape[1]} channels, the decoder expects {channels}")
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"{name} must be square, got {tuple(image.shape[-2:])}")


def check_inpaint(inpaint_image: torch.Tensor | None, inpaint_mask: torch.Tensor | None, batch_size: int, channels: int) -> None:
    """RePaint inputs: images (b, c, h, w) in [0, 1] and a (b, h, w) bool mask (True = keep)."""
    if inpaint_image is None or inpaint_mask is None:
        raise ValueError("inpainting needs both inpaint_image and inpaint_mask")
    check_image(inpaint_image, channels, "inpaint_image")
    if inpaint_mask.ndim != 3 or inpaint_mask.shape != (inpaint_image.shape[0], *inpaint_image.shape[-2:]):
        raise ValueError(
            f"inpaint_mask must have shape {(inpaint_image.shape[0], *inpaint_image.shape[-2:])} "
            f"(batch, height, width) to match inpaint_image, got {tuple(inpaint_mask.shape)}"
        )
    if inpaint_image.shape[0] != batch_size:
        raise ValueError(f"inpaint_image batch ({inpaint_image.shape[0]}) != sampling batch ({batch_size})")


def random_crop(
    target: torch.Tensor, lowres: torch.Tensor | None, size: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same random `size` x `size` crop of a training target and its low-res condition."""
    h, w = target.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"random crop size {size} is larger than the stage's image {h}x{w}")
    top = int(rand_tensor((), generator=generator).item() * (h - size + 1))
    left = int(rand_tensor((), generator=generator).item() * (w - size + 1))

    def crop(x: torch.Tensor | None) -> torch.Tensor | None:
        return x if x is None else x[..., top : top + size, left : left + size]

    return crop(target), crop(lowres)
