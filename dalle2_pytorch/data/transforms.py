"""Image preprocessing built from the `preprocessing` dict of a decoder data config.

The reference's `DecoderDataConfig.preprocessing` maps torchvision transform names to their
arguments, e.g. `{"RandomResizedCrop": {"size": [224, 224], "scale": [0.75, 1.0], "ratio":
[1.0, 1.0]}, "ToTensor": true}`, applied in the dict's order. The reference supported three names
and silently put `None` into the `Compose` for any other; here an unknown name is a `ValueError`.

Value conventions: a dict is passed as keyword arguments; `True` builds the transform with its
defaults; `False`/`None` leaves it out; a number or list is the `size` argument of the
size-taking transforms (`Resize`, `CenterCrop`, `RandomResizedCrop`, `RandomCrop`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from PIL import Image
from torchvision import transforms as T

__all__ = ["SUPPORTED_TRANSFORMS", "build_image_preprocessing", "clip_image_transform", "pil_to_tensor"]

SUPPORTED_TRANSFORMS: dict[str, type] = {
    "RandomResizedCrop": T.RandomResizedCrop,
    "RandomHorizontalFlip": T.RandomHorizontalFlip,
    "ToTensor": T.ToTensor,
    "Resize": T.Resize,
    "CenterCrop": T.CenterCrop,
    "RandomCrop": T.RandomCrop,
}
_SIZE_FIRST = {"RandomResizedCrop", "Resize", "CenterCrop", "RandomCrop"}


def build_image_preprocessing(preprocessing: Mapping[str, Any] | None) -> T.Compose:
    """Builds the torchvision pipeline described by `preprocessing` (see the module docstring).

    Args:
        preprocessing: `{transform name: arguments}`; None or empty means `ToTensor` only.

    Returns:
        A `Compose` taking a PIL image. If the dict has no `ToTensor`, one is appended so the
        output is always a (c, h, w) float tensor in [0, 1].

    Raises:
        ValueError: unknown transform name or unusable arguments (message names the transform).
        TypeError: `preprocessing` is not a mapping.
    """
    if preprocessing is None:
        preprocessing = {}
    if not isinstance(preprocessing, Mapping):
        raise TypeError(f"preprocessing must be a dict of transform name -> arguments, got {type(preprocessing).__name__}")
    steps: list[Callable] = []
    has_to_tensor = False
    for name, value in preprocessing.items():
        if name not in SUPPORTED_TRANSFORMS:
            raise ValueError(
                f"unknown preprocessing transform {name!r}; supported: {', '.join(SUPPORTED_TRANSFORMS)}"
            )
        if value is None or value is False:
            continue
        cls = SUPPORTED_TRANSFORMS[name]
        try:
            if value is True:
                step = cls()
            elif isinstance(value, Mapping):
                kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in value.items()}
                step = cls(**kwargs)
            elif name in _SIZE_FIRST and isinstance(value, (int, list, tuple)):
                step = cls(tuple(value) if isinstance(value, list) else value)
            else:
                raise ValueError(f"expected true/false, a dict of arguments or a size, got {value!r}")
        except (TypeError, ValueError) as error:
            raise ValueError(f"bad arguments for preprocessing transform {name!r}: {error}") from error
        has_to_tensor = has_to_tensor or name == "ToTensor"
        steps.append(step)
    if not has_to_tensor:
        steps.append(T.ToTensor())
    return T.Compose(steps)


def clip_image_transform(image_size: int) -> T.Compose:
    """Shorter side resized to `image_size` (bicubic, antialiased), centre crop, tensor in [0, 1].

    The crop CLIP models are evaluated with; used when precomputing image embeddings.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(image_size),
            T.ToTensor(),
        ]
    )


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> (c, h, w) float tensor in [0, 1]."""
    return T.functional.to_tensor(image)
