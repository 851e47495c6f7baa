"""What `dream` reads and writes: input images and masks, PNGs with their JSON sidecars, strips, GIFs.

Every image `NAME.png` gets `NAME.json` beside it, holding what regenerates it (`dream --replay
NAME.json` writes the same bytes on the same device): the mode, the inputs, the seed, the sampling
settings and the model sources. Files are written atomically and never replace an existing file:
a name that is taken gets the next free number (text-to-image, variations, inpainting) or a run
suffix `-2`, `-3`, ... for a whole set of frames (interpolations, text diffs).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Sequence

import torch

from dalle2_pytorch.command_line import EXIT_FAILED, UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "SIDECAR_FORMAT",
    "ModeError",
    "free_index",
    "free_suffix",
    "load_image",
    "load_mask",
    "read_sidecar",
    "slug",
    "write_gif",
    "write_grid",
    "write_image",
    "write_strip",
]

SIDECAR_FORMAT = "dalle2_pytorch.dream"
SIDECAR_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ModeError(UserError, ValueError):
    """A user-facing `dream` error (one line on stderr, exit status 2)."""


class GenerationError(ModeError):
    """Generation produced unusable output (non-finite values): nothing is written; exit status 3."""

    exit_status = EXIT_FAILED


def check_finite_images(images: torch.Tensor, what: str) -> torch.Tensor:
    """`images`, or GenerationError when any value is NaN/inf (no image is ever written from them)."""
    if not bool(torch.isfinite(images).all()):
        raise GenerationError(
            f"the models produced non-finite values (NaN/inf) for {what}: no image was written "
            "(the weights or the guidance scale are unusable)"
        )
    return images


def slug(text: str, max_len: int = 48) -> str:
    """A file-name-safe lower-case slug of a prompt or file stem ('image' if nothing is left)."""
    out = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return out[:max_len].strip("_") or "image"


def _open_image(path: str | os.PathLike, what: str, mode: str, size: int, resample: str):
    """The file as a PIL image in `mode`, resized to (size, size); ModeError naming the file otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert(mode).resize((size, size), getattr(Image.Resampling, resample))
    except FileNotFoundError:
        raise ModeError(f"{what} not found: {path}") from None
    except (OSError, UnidentifiedImageError) as e:
        raise ModeError(f"could not read {what} {path}: {e}") from None


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """(3, size, size) float in [0, 1]: an image file, converted to RGB and resized to a square."""
    import numpy as np

    img = _open_image(path, "image", "RGB", size, "BILINEAR")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def load_mask(path: str | os.PathLike, size: int) -> torch.Tensor:
    """(size, size) bool, True where the image is kept: a mask image whose white (luminance >= 128)
    marks the region to paint and black the region to keep (the usual inpainting convention)."""
    import numpy as np

    keep = torch.from_numpy(np.asarray(_open_image(path, "mask", "L", size, "NEAREST")) < 128)
    if bool(keep.all()):
        raise ModeError(f"the mask {path} marks nothing to paint: paint the region to fill in white")
    if not bool(keep.any()):
        raise ModeError(f"the mask {path} is white everywhere: nothing of the image would be kept")
    return keep


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _taken(folder: Path, stem: str) -> bool:
    return any((folder / f"{stem}{ext}").exists() for ext in (".png", ".json", ".gif"))


def free_index(folder: Path, prefix: str, start: int = 0) -> int:
    """The first index i >= start with no `{prefix}{i}.png` / `.json` in `folder`."""
    i = start
    while _taken(folder, f"{prefix}{i}"):
        i += 1
    return i


def free_suffix(folder: Path, stems: Sequence[str]) -> str:
    """'' or the first '-N' (N >= 2) for which none of the stems (plus the suffix) exists in `folder`."""
    n = 1
    while any(_taken(folder, f"{s}{'' if n == 1 else f'-{n}'}") for s in stems):
        n += 1
    return "" if n == 1 else f"-{n}"


def write_image(image, path: Path, sidecar: dict | None) -> Path:
    """Saves a PIL image as PNG and its sidecar JSON (`path` with `.json`), both atomically."""
    _atomic_write(path, lambda p: image.save(p, format="PNG"))
    if sidecar is not None:
        record = {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, **sidecar, "image": path.name}
        _atomic_write(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))
    return path


def write_strip(images: Sequence, path: Path) -> Path:
    """The images side by side in one PNG (left to right)."""
    return write_grid([images], path)


def write_grid(rows: Sequence[Sequence], path: Path) -> Path:
    """Rows of images (each row left to right, rows top to bottom) in one PNG."""
    from PIL import Image

    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            grid.paste(im.convert("RGB"), (x * w, y * h))
    _atomic_write(path, lambda p: grid.save(p, format="PNG"))
    return path


def write_gif(images: Sequence, path: Path, frame_ms: int = 150) -> Path:
    """An animated GIF of the images (looping, there and back again)."""
    frames = [im.convert("RGB") for im in images]
    frames = frames + frames[-2:0:-1]
    _atomic_write(path, lambda p: frames[0].save(p, format="GIF", save_all=True, append_images=frames[1:],
                                                 duration=frame_ms, loop=0))
    return path


def read_sidecar(path: str | os.PathLike) -> dict:
    """A sidecar written by `dream`, checked; ModeError naming the problem otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModeError(f"sidecar not found: {path}")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModeError(f"{path} is not a JSON sidecar written by dream: {e}") from None
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        raise ModeError(f"{path} is not a sidecar written by dream (no \"format\": \"{SIDECAR_FORMAT}\")")
    if record.get("format_version") != SIDECAR_VERSION:
        raise ModeError(f"{path} has sidecar format version {record.get('format_version')!r}; this dream reads {SIDECAR_VERSION}")
    for key in ("mode", "render", "row", "settings", "models"):
        if key not in record:
            raise ModeError(f"{path} lacks {key!r}: not a complete dream sidecar")
    return record


def describe(value: Any) -> Any:
    """JSON-able form of a path (absolute) or other value."""
    if isinstance(value, os.PathLike):
        return str(Path(value).resolve())
    return value
