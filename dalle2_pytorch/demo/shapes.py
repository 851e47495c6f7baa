"""Procedural "coloured shapes" dataset: attribute sampling, rendering and webdataset shards.

Each sample is one main shape (circle, square, triangle, star or cross) in one of six saturated
colours, small or large, at one of nine positions, rotated (by default uniformly within +-25
degrees), on one of four plain neutral backgrounds, with a few faint distractors ("clutter") that
never change the main colour or shape. Images are rendered with 4x supersampling and box-filter
downsampling, so a shape covers the same area at any resolution and stays recognisable at 32 px.

Everything is a pure function of a seed: the attributes of sample ``i`` of split ``s`` come from
``numpy.random.default_rng([seed, split_id, i])`` and the image is a pure function of the
attributes (``render``), so the same seed gives byte-identical shards.

Shards are written with ``webdataset.ShardWriter`` as ``{out_dir}/{split}/shapes-%06d.tar``
(``shapes-000000.tar``, ``shapes-000001.tar``, ...; the brace form for loaders is
``{out_dir}/{split}/shapes-{000000..NNNNNN}.tar``). A sample is ``{key}.png`` (or ``.jpg``),
``{key}.txt`` (caption) and ``{key}.json`` (attributes); keys are ``{split}-{index:07d}``.
Some (colour, shape) combinations are held out of every split and listed, with prompts, in
``{out_dir}/dataset_info.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from dalle2_pytorch.demo.captions import caption_for, prompt_for
from dalle2_pytorch.demo.vocabulary import (  # re-exported: the demo's vocabulary
    BACKGROUNDS,
    COLOURS,
    DEFAULT_HELDOUT,
    POSITIONS,
    SHAPES,
    SIZES,
)

# ----------------------------------------------------------------------------------------------
# rendering constants

_RADIUS = {"small": (0.17, 0.2), "large": (0.28, 0.33)}
_JITTER = 0.02
# circumradius of each shape, in units of the nominal radius
_SHAPE_SCALE = {"circle": 1.0, "square": 1.2, "triangle": 1.4, "star": 1.4, "cross": 1.15}
_STAR_INNER = 0.5  # inner / outer radius of the five-pointed star
_CROSS_HALF_WIDTH = 0.36  # half the arm width / arm length of the plus-shaped cross
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Clutter:
    """A faint distractor: ``kind`` in {"dot", "line", "ring"}, centre/extent as fractions of the side.

    ``tint`` is the colour it is blended towards and ``alpha`` in [0, 1] the blend weight against
    the background (kept small so it is never mistaken for the main shape).
    """

    kind: str
    x: float
    y: float
    extent: float
    angle: float
    tint: tuple[int, int, int]
    alpha: float


@dataclass(frozen=True)
class ShapeAttributes:
    """Everything needed to render one sample (``render`` is a pure function of this).

    ``x``/``y``/``radius`` are fractions of the image side; ``rotation`` is in degrees.
    """

    colour: str
    shape: str
    size: str
    position: str
    background: str
    x: float
    y: float
    radius: float
    rotation: float
    clutter: tuple[Clutter, ...] = ()

    def to_dict(self) -> dict:
        """JSON-friendly dict; ``from_dict`` inverts it exactly."""
        d = asdict(self)
        d["clutter"] = [{**c, "tint": list(c["tint"])} for c in d["clutter"]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeAttributes":
        clutter = tuple(Clutter(**{**c, "tint": tuple(c["tint"])}) for c in d.get("clutter", ()))
        return cls(**{**{k: v for k, v in d.items() if k != "clutter"}, "clutter": clutter})


def _check_choice(name: str, value: str, options: Iterable[str]) -> None:
    options = tuple(options)
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of {options}")


def allowed_combos(exclude: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """All (colour, shape) pairs not in ``exclude``, in a fixed order."""
    excluded = {tuple(c) for c in exclude}
    for colour, shape in excluded:
        _check_choice("colour", colour, COLOURS)
        _check_choice("shape", shape, SHAPES)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in excluded]


def sample_attributes(
    rng: np.random.Generator,
    exclude: Iterable[tuple[str, str]] = (),
    *,
    colour: str | None = None,
    shape: str | None = None,
    max_rotation: float = 25.0,
    max_clutter: int = 3,
) -> ShapeAttributes:
    """Draws one sample's attributes.

    Args:
        rng: numpy random generator (all randomness comes from it).
        exclude: (colour, shape) pairs that must not be drawn (held-out combinations).
        colour, shape: fix these attributes instead of sampling them (the pair must be allowed).
        max_rotation: rotation is uniform in [-max_rotation, max_rotation] degrees (0 for circles).
        max_clutter: number of faint distractors is uniform in {0, ..., max_clutter}.
    """
    combos = [
        (c, s) for c, s in allowed_combos(exclude)
        if (colour is None or c == colour) and (shape is None or s == shape)
    ]
    if not combos:
        raise ValueError(f"no allowed (colour, shape) pair matches colour={colour!r} shape={shape!r}")
    col, shp = combos[int(rng.integers(len(combos)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    position = list(POSITIONS)[int(rng.integers(len(POSITIONS)))] if size == "small" else "center"
    cx, cy = POSITIONS[position]
    x = cx + float(rng.uniform(-_JITTER, _JITTER))
    y = cy + float(rng.uniform(-_JITTER, _JITTER))
    radius = float(rng.uniform(*_RADIUS[size]))
    rotation = 0.0 if shp == "circle" else float(rng.uniform(-max_rotation, max_rotation))
    clutter = []
    for _ in range(int(rng.integers(max_clutter + 1))):
        kind = ("dot", "line", "ring")[int(rng.integers(3))]
        tint = list(COLOURS.values())[int(rng.integers(len(COLOURS)))]
        clutter.append(Clutter(
            kind=kind, x=float(rng.uniform(0.05, 0.95)), y=float(rng.uniform(0.05, 0.95)),
            extent=float(rng.uniform(0.02, 0.06)), angle=float(rng.uniform(0, 180)),
            tint=tint, alpha=float(rng.uniform(0.08, 0.16)),
        ))
    return ShapeAttributes(col, shp, size, position, background, x, y, radius, rotation, tuple(clutter))


# ----------------------------------------------------------------------------------------------
# rendering


def shape_polygon(shape: str) -> np.ndarray:
    """Vertices (n, 2) of ``shape`` around 0 with circumradius about 1 (circle: 64-gon), y pointing down."""
    _check_choice("shape", shape, SHAPES)
    if shape == "circle":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], -1)
    if shape == "square":
        t = np.deg2rad(45 + 90 * np.arange(4))
        return np.stack([np.cos(t), np.sin(t)], -1)
    if shape == "triangle":  # pointing up, bounding box centred at 0
        t = np.deg2rad(-90 + 120 * np.arange(3))
        return np.stack([np.cos(t), np.sin(t) + 0.25], -1)
    if shape == "star":
        t = np.deg2rad(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, _STAR_INNER)
        return np.stack([r * np.cos(t), r * np.sin(t)], -1)
    w = _CROSS_HALF_WIDTH  # plus sign: 12 vertices
    pts = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    return np.asarray(pts, dtype=np.float64)


def _place(poly: np.ndarray, cx: float, cy: float, radius: float, rotation_deg: float) -> list[tuple[float, float]]:
    a = math.radians(rotation_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = poly @ rot.T * radius + np.array([cx, cy])
    return [(float(px), float(py)) for px, py in pts]


def _blend(bg: tuple[int, int, int], tint: Sequence[int], alpha: float) -> tuple[int, int, int]:
    return tuple(int(round((1 - alpha) * b + alpha * t)) for b, t in zip(bg, tint))  # type: ignore[return-value]


def render(attrs: ShapeAttributes, image_size: int = 64) -> Image.Image:
    """Renders ``attrs`` as an RGB ``PIL.Image`` of side ``image_size`` (deterministic).

    Drawn at 4x resolution and box-downsampled, so edges are anti-aliased by exact area coverage.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    _check_choice("colour", attrs.colour, COLOURS)
    _check_choice("background", attrs.background, BACKGROUNDS)
    side = image_size * _SUPERSAMPLE
    bg = BACKGROUNDS[attrs.background]
    img = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(img)
    for c in attrs.clutter:  # drawn first, so the main shape covers them
        colour = _blend(bg, c.tint, c.alpha)
        cx, cy, e = c.x * side, c.y * side, max(c.extent * side, 1.5 * _SUPERSAMPLE)
        if c.kind == "dot":
            draw.ellipse([cx - e / 2, cy - e / 2, cx + e / 2, cy + e / 2], fill=colour)
        elif c.kind == "ring":
            draw.ellipse([cx - e, cy - e, cx + e, cy + e], outline=colour, width=_SUPERSAMPLE)
        else:
            dx, dy = e * math.cos(math.radians(c.angle)), e * math.sin(math.radians(c.angle))
            draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=colour, width=_SUPERSAMPLE)
    poly = _place(shape_polygon(attrs.shape), attrs.x * side, attrs.y * side,
                  attrs.radius * _SHAPE_SCALE[attrs.shape] * side, attrs.rotation)
    draw.polygon(poly, fill=COLOURS[attrs.colour])
    return img.resize((image_size, image_size), Image.Resampling.BOX)


# ----------------------------------------------------------------------------------------------
# dataset

_SPLIT_IDS = {"train": 0, "val": 1}
SHARD_PATTERN = "shapes-%06d.tar"
INFO_FILE = "dataset_info.json"


@dataclass
class DatasetInfo:
    """What ``generate_dataset`` wrote (also saved as ``{root}/dataset_info.json``).

    ``train_urls`` / ``val_urls`` are brace patterns for ``webdataset`` (``.../shapes-{000000..000004}.tar``).
    ``heldout`` lists the (colour, shape) pairs absent from every split and ``heldout_prompts`` one
    canonical prompt per pair; ``seen_prompts`` are prompts for pairs present in training.
    """

    root: str
    params: dict
    num_train: int
    num_val: int
    image_size: int
    image_key: str
    train_shards: list[str]
    val_shards: list[str]
    heldout: list[tuple[str, str]]
    heldout_prompts: list[str]
    seen_prompts: list[str]
    colours: list[str] = field(default_factory=lambda: list(COLOURS))
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    backgrounds: list[str] = field(default_factory=lambda: list(BACKGROUNDS))

    @property
    def train_urls(self) -> str:
        return _brace(self.root, "train", len(self.train_shards))

    @property
    def val_urls(self) -> str:
        """Brace pattern of the val shards ("" when there are none)."""
        return _brace(self.root, "val", len(self.val_shards)) if self.val_shards else ""

    def save(self) -> Path:
        path = Path(self.root) / INFO_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, root: str | os.PathLike) -> "DatasetInfo":
        """Reads ``{root}/dataset_info.json``."""
        path = Path(root) / INFO_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {INFO_FILE} in {root}: run generate_dataset first")
        d = json.loads(path.read_text())
        d["heldout"] = [tuple(p) for p in d["heldout"]]
        return cls(**d)


def _brace(root: str, split: str, n: int) -> str:
    return str(Path(root) / split / ("shapes-{000000..%06d}.tar" % max(n - 1, 0)))


def sample_heldout_attributes(
    rng: np.random.Generator, heldout: Sequence[tuple[str, str]] = DEFAULT_HELDOUT, **kwargs
) -> ShapeAttributes:
    """Attributes of a sample whose (colour, shape) is one of the ``heldout`` pairs (uniformly)."""
    if not heldout:
        raise ValueError("heldout must contain at least one (colour, shape) pair")
    colour, shape = heldout[int(rng.integers(len(heldout)))]
    return sample_attributes(rng, colour=colour, shape=shape, **kwargs)


def make_sample(
    split: str, index: int, *, seed: int, image_size: int, heldout: Sequence[tuple[str, str]],
    image_format: str = "png", max_rotation: float = 25.0, max_clutter: int = 3,
) -> dict:
    """The webdataset sample ``index`` of ``split``: ``{"__key__", image_format, "txt", "json"}``."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {tuple(_SPLIT_IDS)}, got {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    attrs = sample_attributes(rng, heldout, max_rotation=max_rotation, max_clutter=max_clutter)
    caption = caption_for(attrs, rng)
    buffer = io.BytesIO()
    if image_format == "png":
        render(attrs, image_size).save(buffer, format="PNG", compress_level=6)
    else:
        render(attrs, image_size).save(buffer, format="JPEG", quality=95)
    meta = {**attrs.to_dict(), "caption": caption}
    return {"__key__": f"{split}-{index:07d}", image_format: buffer.getvalue(),
            "txt": caption.encode("utf-8"), "json": json.dumps(meta, sort_keys=True).encode("utf-8")}


def _write_split(root: Path, split: str, num: int, samples_per_shard: int, **sample_kwargs) -> list[str]:
    import webdataset as wds

    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("shapes-*.tar"):
        old.unlink()
    pattern = str(folder / SHARD_PATTERN)
    # fixed mtime/user/group: identical bytes for identical seeds
    with wds.ShardWriter(pattern, maxcount=samples_per_shard, verbose=0, mtime=0.0, user="shapes", group="shapes") as sink:
        for i in range(num):
            sink.write(make_sample(split, i, **sample_kwargs))
    return [str(folder / (SHARD_PATTERN % k)) for k in range(max(1, math.ceil(num / samples_per_shard)))]


def generate_dataset(
    out_dir: str | os.PathLike,
    num_train: int,
    num_val: int,
    seed: int = 0,
    image_size: int = 64,
    samples_per_shard: int = 1000,
    *,
    heldout: Sequence[tuple[str, str]] = DEFAULT_HELDOUT,
    image_format: str = "png",
    max_rotation: float = 25.0,
    max_clutter: int = 3,
    overwrite: bool = False,
    verbose: bool = False,
) -> DatasetInfo:
    """Writes train/val webdataset shards of captioned shape images and returns their description.

    Layout: ``{out_dir}/train/shapes-000000.tar ...``, ``{out_dir}/val/shapes-000000.tar ...`` and
    ``{out_dir}/dataset_info.json``. If that file already describes a finished dataset with the same
    parameters (and its shards exist), nothing is regenerated unless ``overwrite`` is set.

    Args:
        out_dir: output folder (created).
        num_train, num_val: samples per split (num_val may be 0).
        seed: everything (attributes, captions, clutter) derives from it.
        image_size: side of the square RGB images.
        samples_per_shard: at most this many samples per tar file.
        heldout: (colour, shape) pairs never rendered in either split.
        image_format: "png" (lossless, default) or "jpg".
        max_rotation: degrees, main shape rotation is uniform in [-max_rotation, max_rotation].
        max_clutter: at most this many faint distractors per image.
        overwrite: regenerate even if a matching dataset exists.
        verbose: print progress and timing.
    """
    if num_train < 1 or num_val < 0:
        raise ValueError(f"need num_train >= 1 and num_val >= 0, got {num_train} and {num_val}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if image_format not in ("png", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
    heldout = [tuple(p) for p in heldout]
    if len(allowed_combos(heldout)) == 0:
        raise ValueError("heldout excludes every (colour, shape) pair")
    root = Path(out_dir).resolve()
    params = {"num_train": num_train, "num_val": num_val, "seed": seed, "image_size": image_size,
              "samples_per_shard": samples_per_shard, "heldout": [list(p) for p in heldout],
              "image_format": image_format, "max_rotation": max_rotation, "max_clutter": max_clutter}
    if not overwrite and (root / INFO_FILE).is_file():
        try:
            existing = DatasetInfo.load(root)
        except (TypeError, ValueError, KeyError):
            existing = None
        if existing is not None and existing.params == params and all(
            Path(p).is_file() for p in existing.train_shards + existing.val_shards
        ):
            if verbose:
                print(f"[shapes] reusing the dataset in {root}")
            return existing
    root.mkdir(parents=True, exist_ok=True)
    (root / INFO_FILE).unlink(missing_ok=True)  # written last: marks a finished dataset
    start = time.perf_counter()
    kwargs = dict(seed=seed, image_size=image_size, heldout=heldout, image_format=image_format,
                  max_rotation=max_rotation, max_clutter=max_clutter)
    train = _write_split(root, "train", num_train, samples_per_shard, **kwargs)
    val = _write_split(root, "val", num_val, samples_per_shard, **kwargs) if num_val else []
    seen = [prompt_for(c, s) for c, s in allowed_combos(heldout)]
    info = DatasetInfo(
        root=str(root), params=params, num_train=num_train, num_val=num_val, image_size=image_size,
        image_key=image_format, train_shards=train, val_shards=val, heldout=heldout,
        heldout_prompts=[prompt_for(c, s) for c, s in heldout], seen_prompts=seen,
    )
    info.save()
    if verbose:
        print(f"[shapes] wrote {num_train} train + {num_val} val samples ({len(train)} + {len(val)} shards) "
              f"to {root} in {time.perf_counter() - start:.1f}s")
    return info


def main(argv: Sequence[str] | None = None) -> DatasetInfo:
    """CLI: ``python -m dalle2_pytorch.demo.shapes --out DIR --num-train N [--num-val M] ...``."""
    parser = argparse.ArgumentParser(description="Generate the procedural coloured-shapes dataset (webdataset shards).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, required=True)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    parser.add_argument("--max-rotation", type=float, default=25.0)
    parser.add_argument("--max-clutter", type=int, default=3)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    return generate_dataset(
        args.out, args.num_train, args.num_val, seed=args.seed, image_size=args.image_size,
        samples_per_shard=args.samples_per_shard, image_format=args.format,
        max_rotation=args.max_rotation, max_clutter=args.max_clutter, overwrite=args.overwrite, verbose=True,
    )


if __name__ == "__main__":
    main()
