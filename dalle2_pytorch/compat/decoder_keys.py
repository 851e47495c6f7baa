"""Reference decoder checkpoints (state dicts of `dalle2-pytorch`'s `Decoder`) -> our module keys.

Two key generations are supported (see tests/fixtures/compat/README.md, "Key-naming generations"):

* "1.1.0" (LAION decoder v1.0.2 era): cross-attention under `...cross_attn.fn.*`; downsample is a
  4×4 stride-2 conv (`downs.S.0.weight` / `downs.S.4.weight`, shape [out, in, 4, 4]).
* "1.15.6": cross-attention under `...cross_attn.*`; downsample is pixel-unshuffle + 1×1 conv
  (`downs.S.0.1.weight` / `downs.S.4.1.weight`, shape [out, 4·in, 1, 1]).

The downsample difference is a different operation, not a name: build the Unet with the matching
`layout=` and only rename `cross_attn.fn.` -> `cross_attn.`. Older generations (0.15.x: LayerNorm
`gamma`/`beta`, transposed-conv upsample) are refused with a clear error.

Typical use::

    ckpt = safe_torch_load(path)
    layout = detect_decoder_layout(ckpt["model"])
    unet_state, schedules, other = convert_decoder_state_dict(ckpt["model"], layout)
    for i, state in split_unet_state_dicts(unet_state).items():
        load_unet_state_dict(unets[i], state, context=f"{path} unet {i + 1}")
"""

from __future__ import annotations

from collections.abc import Mapping
import re
from typing import Any

import torch

from dalle2_pytorch.compat.keys import StateDictMismatchError, check_state_dict, expected_shapes
from dalle2_pytorch.diffusion.noise_scheduler import SCHEDULE_BUFFER_NAMES

__all__ = [
    "DECODER_LAYOUTS",
    "SCHEDULE_BUFFER_NAMES",
    "convert_decoder_state_dict",
    "detect_decoder_layout",
    "detect_own_decoder_layout",
    "load_unet_state_dict",
    "split_unet_state_dicts",
]

DECODER_LAYOUTS = ("1.1.0", "1.15.6")


_UNET_KEY = re.compile(r"^unets\.(\d+)\.(.+)$")
_SCHEDULE_KEY = re.compile(
    r"^(?:noise_schedulers\.\d+|lowres_conds\.\d+\.noise_scheduler)\.(" + "|".join(SCHEDULE_BUFFER_NAMES) + r")$"
)
_OTHER_PREFIXES = ("clip.", "vaes.")
_OLD_DOWNSAMPLE = re.compile(r"^unets\.\d+\.downs\.\d+\.[04]\.weight$")
_NEW_DOWNSAMPLE = re.compile(r"^unets\.\d+\.downs\.\d+\.[04]\.1\.weight$")
_PRE_016 = re.compile(r"(\.gamma$|\.beta$|^unets\.\d+\.ups\.\d+\.3\.weight$)")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else ()


def _check_layout(layout: str) -> str:
    if layout not in DECODER_LAYOUTS:
        raise ValueError(f"unknown decoder layout {layout!r}; expected one of {DECODER_LAYOUTS}")
    return layout


def _refuse_pre_016(state_dict: Mapping[str, Any]) -> None:
    old = sorted(k for k in state_dict if k.startswith("unets.") and _PRE_016.search(k))
    if old:
        raise ValueError(
            "this decoder state dict is from a dalle2-pytorch generation older than 1.1.0 (LayerNorm "
            f"gamma/beta or transposed-conv upsample keys, e.g. {old[:3]}); only the 1.1.0 and 1.15.6 "
            "key generations are supported"
        )


def detect_decoder_layout(state_dict: Mapping[str, Any]) -> str:
    """Returns "1.1.0" or "1.15.6" for a reference Decoder state dict (keys `unets.{i}.*`, ...).

    Evidence: `cross_attn.fn.` keys or 4×4 downsample convs mean "1.1.0"; plain `cross_attn.`
    keys or pixel-unshuffle downsample convs mean "1.15.6".

    Raises:
        ValueError: no unet keys, evidence for both generations, no evidence at all (then pass
            the layout explicitly), or a pre-1.1.0 generation.
    """
    if not any(k.startswith("unets.") for k in state_dict):
        raise ValueError("not a decoder state dict: no 'unets.{i}.' keys found")
    _refuse_pre_016(state_dict)
    old, new = [], []
    for key, value in state_dict.items():
        if not key.startswith("unets."):
            continue
        if ".cross_attn.fn." in key:
            old.append(key)
        elif ".cross_attn." in key:
            new.append(key)
        elif _OLD_DOWNSAMPLE.match(key) and len(_shape(value)) == 4 and _shape(value)[-2:] == (4, 4):
            old.append(key)
        elif _NEW_DOWNSAMPLE.match(key):
            new.append(key)
    if old and new:
        raise ValueError(
            "decoder state dict mixes key generations: 1.1.0-style keys (e.g. "
            f"{old[0]}) and 1.15.6-style keys (e.g. {new[0]})"
        )
    if old:
        return "1.1.0"
    if new:
        return "1.15.6"
    raise ValueError(
        "cannot tell the decoder key generation (no cross-attention or downsample keys); "
        "pass layout='1.1.0' or '1.15.6' explicitly"
    )


def detect_own_decoder_layout(state_dict: Mapping[str, Any]) -> str:
    """The layout of a state dict saved by this package (exports, trainer checkpoints).

    Our Unets use one key naming in both layouts (cross-attention without the 1.1.0 `.fn.`), so only
    the downsample convolutions tell them apart: 4x4 strided convs mean "1.1.0".
    """
    for key, value in state_dict.items():
        if _OLD_DOWNSAMPLE.match(key) and len(_shape(value)) == 4 and _shape(value)[-2:] == (4, 4):
            return "1.1.0"
    return "1.15.6"


def convert_decoder_state_dict(
    state_dict: Mapping[str, torch.Tensor], layout: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Splits and renames a reference Decoder state dict.

    Args:
        state_dict: e.g. `checkpoint["model"]` of a reference decoder file.
        layout: "1.1.0" or "1.15.6" (see :func:`detect_decoder_layout`).

    Returns:
        `(unet_state, schedule_buffers, other)`:
        * unet_state: `unets.{i}.*` keys in our naming (1.1.0: `cross_attn.fn.` -> `cross_attn.`);
        * schedule_buffers: `noise_schedulers.{i}.*` and `lowres_conds.{i}.noise_scheduler.*`
          buffers, keys unchanged (our schedules are derived, non-persistent buffers: compare,
          don't load);
        * other: `clip.*` and `vaes.*` keys, unchanged.

    Raises:
        ValueError: unknown layout, keys of the other generation, or a pre-1.1.0 file.
        StateDictMismatchError: keys that belong to none of the groups above (listed).
    """
    _check_layout(layout)
    _refuse_pre_016(state_dict)
    unet_state: dict[str, torch.Tensor] = {}
    schedules: dict[str, torch.Tensor] = {}
    other: dict[str, torch.Tensor] = {}
    unrecognised: list[str] = []
    wrong_generation: list[str] = []
    for key, value in state_dict.items():
        if _UNET_KEY.match(key):
            if layout == "1.1.0":
                if ".cross_attn." in key and ".cross_attn.fn." not in key:
                    wrong_generation.append(key)
                key = key.replace(".cross_attn.fn.", ".cross_attn.")
            elif ".cross_attn.fn." in key:
                wrong_generation.append(key)
            unet_state[key] = value
        elif _SCHEDULE_KEY.match(key):
            schedules[key] = value
        elif key.startswith(_OTHER_PREFIXES):
            other[key] = value
        else:
            unrecognised.append(key)
    if wrong_generation:
        raise ValueError(
            f"decoder state dict does not look like layout {layout!r}: "
            f"{len(wrong_generation)} cross-attention keys of the other generation, e.g. {wrong_generation[0]}"
        )
    if unrecognised:
        raise StateDictMismatchError(f"decoder state dict (layout {layout})", [], sorted(unrecognised), [])
    return unet_state, schedules, other


def split_unet_state_dicts(unet_state: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """`{"unets.{i}.rest": t}` -> `{i: {"rest": t}}` (ready for `Unet.load_state_dict`)."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in unet_state.items():
        match = _UNET_KEY.match(key)
        if match is None:
            raise ValueError(f"not a unet key: {key!r}")
        out.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return dict(sorted(out.items()))


def load_unet_state_dict(unet: torch.nn.Module, state: Mapping[str, torch.Tensor], *, context: str) -> None:
    """Strictly loads one unet's converted state (keys without the `unets.{i}.` prefix).

    Raises:
        StateDictMismatchError: with every missing / unexpected key and shape mismatch listed
            (nothing is loaded in that case).
    """
    check_state_dict(expected_shapes(unet), state, context)
    unet.load_state_dict(dict(state), strict=True)
