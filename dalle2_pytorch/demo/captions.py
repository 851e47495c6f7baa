"""Captions for the shapes dataset, and parsing of free-form prompts back into attributes.

``caption_for`` turns attributes into one of a dozen natural phrasings ("a small red triangle in
the top left", "blue circle on a white background", "there is a purple star near the bottom"),
choosing template, synonyms and optional parts with the caller's ``numpy`` generator.
``parse_prompt`` recovers the intended (colour, shape) from any such text.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from dalle2_pytorch.demo.vocabulary import BACKGROUNDS, COLOURS, SHAPES, SIZES

if TYPE_CHECKING:  # only for annotations (shapes imports this module)
    from dalle2_pytorch.demo.shapes import ShapeAttributes

_SIZE_WORDS = {"small": ("small", "little", "small"), "large": ("large", "big", "large")}

_POSITION_PHRASES = {
    "top left": ("in the top left", "in the top left corner", "near the top left", "at the top left"),
    "top right": ("in the top right", "in the top right corner", "near the top right", "at the top right"),
    "bottom left": ("in the bottom left", "in the bottom left corner", "near the bottom left", "at the bottom left"),
    "bottom right": ("in the bottom right", "in the bottom right corner", "near the bottom right", "at the bottom right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "left": ("on the left", "on the left side", "near the left"),
    "right": ("on the right", "on the right side", "near the right"),
    "center": ("in the center", "in the middle", "in the centre"),
}

_BACKGROUND_PHRASES = ("on a {bg} background", "against a {bg} background", "on {bg}", "with a {bg} background")

# {np}: "a small red triangle"; {bare}: "small red triangle"; {pos}; {bg}
_TEMPLATES = (
    "{np}",
    "{np} {pos}",
    "{np} {bg}",
    "{np} {pos} {bg}",
    "there is {np} {pos}",
    "a picture of {np}",
    "an image of {np} {bg}",
    "{bare} {bg}",
    "{pos}, {np}",
    "the {shape} {pos} is {colour}",
    "a drawing of {np} {pos}",
    "{np}, {bgname} background",
)

_VOWEL = re.compile(r"^[aeiou]")


def _article(phrase: str) -> str:
    return ("an " if _VOWEL.match(phrase) else "a ") + phrase


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def caption_for(attrs: "ShapeAttributes", rng: np.random.Generator) -> str:
    """One caption for ``attrs``; always names its colour and shape, sometimes size/position/background."""
    size = _pick(rng, _SIZE_WORDS[attrs.size]) + " " if rng.random() < 0.6 else ""
    bare = f"{size}{attrs.colour} {attrs.shape}"
    fields = {
        "np": _article(bare),
        "bare": bare,
        "pos": _pick(rng, _POSITION_PHRASES[attrs.position]),
        "bg": _pick(rng, _BACKGROUND_PHRASES).format(bg=attrs.background),
        "bgname": attrs.background,
        "shape": attrs.shape,
        "colour": attrs.colour,
    }
    return _pick(rng, _TEMPLATES).format(**fields)


def position_phrase(position: str) -> str:
    """The canonical phrase of a position name: ``"top left"`` -> ``"in the top left"``."""
    if position not in _POSITION_PHRASES:
        raise ValueError(f"unknown position {position!r}; expected one of {tuple(_POSITION_PHRASES)}")
    return _POSITION_PHRASES[position][0]


def prompt_for(colour: str, shape: str, size: str | None = None, position: str | None = None) -> str:
    """The canonical prompt for an attribute pair, e.g. ``"a red star"``, ``"a small red star"`` or
    ``"a red star in the top left"``."""
    text = _article(f"{size + ' ' if size else ''}{colour} {shape}")
    return f"{text} {position_phrase(position)}" if position else text


# ----------------------------------------------------------------------------------------------
# parsing

_COLOUR_SYNONYMS = {"violet": "purple", "magenta": "purple"}
_SHAPE_SYNONYMS = {
    "circles": "circle", "disc": "circle", "disk": "circle", "dot": "circle", "round": "circle",
    "squares": "square", "box": "square", "rectangle": "square",
    "triangles": "triangle", "stars": "star", "crosses": "cross", "plus": "cross",
}
_BACKGROUND_CLAUSE = re.compile(r"\b(?:on|against|with)?\s*(?:a|an|the)?\s*([a-z]+)\s+background\b")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def parse_position(text: str) -> str | None:
    """The position a prompt names (``"... in the top left corner"`` -> ``"top left"``), or None.

    Two-word positions are matched before one-word ones; "middle" / "centre" mean ``"center"``.
    """
    words = " ".join(_words(text))
    for name in sorted(_POSITION_PHRASES, key=len, reverse=True):
        if any(f" {' '.join(_words(p))} " in f" {words} " for p in _POSITION_PHRASES[name]):
            return name
    return None


def parse_prompt(text: str) -> tuple[str | None, str | None]:
    """Extracts the intended (colour, shape) of the main object from a free-form prompt.

    The colour is the colour word nearest before the shape word ("a small blue circle"), else the
    nearest one after it ("the circle is blue"); colours inside a "... X background" clause are
    ignored. Missing attributes are ``None``.

    Examples:
        >>> parse_prompt("blue circle on a yellow background")
        ('blue', 'circle')
        >>> parse_prompt("there is a purple star near the bottom")
        ('purple', 'star')
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    words = _words(_BACKGROUND_CLAUSE.sub(" ", text.lower()))
    colours = [(i, _COLOUR_SYNONYMS.get(w, w)) for i, w in enumerate(words) if _COLOUR_SYNONYMS.get(w, w) in COLOURS]
    shapes = [(i, _SHAPE_SYNONYMS.get(w, w)) for i, w in enumerate(words) if _SHAPE_SYNONYMS.get(w, w) in SHAPES]
    shape_idx, shape = shapes[0] if shapes else (len(words), None)
    before = [c for c in colours if c[0] < shape_idx]
    after = [c for c in colours if c[0] > shape_idx]
    colour = before[-1][1] if before else (after[0][1] if after else None)
    return colour, shape


def caption_vocabulary() -> list[str]:
    """Every word a caption or canonical prompt can contain, sorted (the demo CLIP's vocabulary)."""
    text = " ".join([
        *_TEMPLATES, *_BACKGROUND_PHRASES, *(p for ps in _POSITION_PHRASES.values() for p in ps),
        *(w for ws in _SIZE_WORDS.values() for w in ws), *COLOURS, *SHAPES, *SIZES, *BACKGROUNDS,
        "a an the background",
    ])
    return sorted(set(_words(re.sub(r"\{[a-z]+\}", " ", text))))
