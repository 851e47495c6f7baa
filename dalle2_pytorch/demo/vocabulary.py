"""The words of the demo's world: colours, backgrounds, shapes, sizes, positions, held-out pairs.

Shared by the renderer (`demo/shapes.py`) and the captions (`demo/captions.py`).
"""

from __future__ import annotations

#: Main-shape colours (RGB). Far apart in RGB so the nearest-palette rule of the evaluator is safe.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "orange": (255, 130, 0),
    "yellow": (250, 225, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 225),
    "purple": (135, 45, 185),
}

#: Plain background colours (RGB); none of them is a main-shape colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "beige": (225, 210, 170),
}

#: Shapes that the evaluator tells apart at 32 px (a hexagon was too close to a circle).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

SIZES: tuple[str, ...] = ("small", "large")

#: Position name -> centre (x, y) as fractions of the image side (y grows downwards).
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.3, 0.3),
    "top": (0.5, 0.3),
    "top right": (0.7, 0.3),
    "left": (0.3, 0.5),
    "center": (0.5, 0.5),
    "right": (0.7, 0.5),
    "bottom left": (0.3, 0.7),
    "bottom": (0.5, 0.7),
    "bottom right": (0.7, 0.7),
}

#: (colour, shape) pairs never rendered in any split: one per shape, each with a different colour.
DEFAULT_HELDOUT: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("blue", "triangle"),
    ("green", "cross"),
    ("yellow", "circle"),
    ("purple", "square"),
)

# nominal radius (fraction of image side) ranges per size; shapes are scaled so that they look
# about as big as a circle of that radius
