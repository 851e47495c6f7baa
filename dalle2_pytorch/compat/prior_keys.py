"""Reference prior checkpoints -> `DiffusionPriorNetwork` state dicts.

A reference `DiffusionPrior` state dict has three groups of keys:

* `net.*`: the `DiffusionPriorNetwork`. Two generations exist and both load into our network
  unchanged, given the matching `layout`:
  - "1.1.0" (LAION's `prior/latest.pth`; reference 0.23.1 – 1.8.x): one `net.null_text_embed`
    (1, max_text_len, dim);
  - "1.15.6" (reference >= 1.9.0): `net.null_text_encodings`, `net.null_text_embeds`,
    `net.null_image_embed`.
  Older priors (no learned text padding, LayerNorm `gamma`/`beta`) computed a different function
  (key-padding masks) and are refused with a message saying so.
* `noise_scheduler.*`: 13 schedule buffers, derived from (beta_schedule, timesteps). Our
  `NoiseScheduler` does not persist them; the caller compares them with its own
  (:func:`dalle2_pytorch.compat.keys.check_tensors_close`) and drops them.
* `clip.*`: frozen CLIP weights, when the reference prior had CLIP attached.

Usage::

    conv = convert_prior_state_dict(checkpoint["model"])
    net = DiffusionPriorNetwork(**net_config, layout=conv.layout)
    check_prior_network_state(net, conv)          # readable diff on any mismatch
    net.load_state_dict(conv.network_state_dict())
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from dalle2_pytorch.compat.keys import StateDictMismatchError, check_state_dict
from dalle2_pytorch.diffusion.noise_scheduler import SCHEDULE_BUFFER_NAMES

__all__ = [
    "NOISE_SCHEDULER_BUFFERS",
    "PRIOR_LAYOUTS",
    "ConvertedPriorState",
    "UnsupportedPriorGenerationError",
    "check_prior_network_state",
    "convert_prior_state_dict",
    "detect_prior_layout",
    "split_prior_state_dict",
]

PRIOR_LAYOUTS = ("1.1.0", "1.15.6")

NOISE_SCHEDULER_BUFFERS = SCHEDULE_BUFFER_NAMES  # the 13 schedule tensors the reference stores

_NET = "net."
_SCHED = "noise_scheduler."
_CLIP = "clip."
_LAYOUT_MARKERS = {
    "1.1.0": ("null_text_embed",),
    "1.15.6": ("null_text_encodings", "null_text_embeds", "null_image_embed"),
}


class UnsupportedPriorGenerationError(ValueError):
    """The state dict is a prior generation this package cannot reproduce faithfully."""


@dataclass(frozen=True)
class ConvertedPriorState:
    """Result of :func:`convert_prior_state_dict`.

    Attributes:
        layout: "1.1.0" or "1.15.6": build `DiffusionPriorNetwork(..., layout=layout)`.
        net: `net.`-prefixed keys for our network inside a `DiffusionPrior` (tensors not copied).
        noise_scheduler: schedule buffers from the file, keyed by buffer name without prefix
            (e.g. "betas"); empty if the file had none.
        clip: `clip.`-prefixed keys as in the file (empty when CLIP was stripped).
    """

    layout: str
    net: dict[str, torch.Tensor]
    noise_scheduler: dict[str, torch.Tensor] = field(default_factory=dict)
    clip: dict[str, torch.Tensor] = field(default_factory=dict)

    def network_state_dict(self) -> dict[str, torch.Tensor]:
        """Keys without the `net.` prefix, for `DiffusionPriorNetwork.load_state_dict`."""
        return {k[len(_NET) :]: v for k, v in self.net.items()}


def _strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Removes a `module.` prefix (DataParallel/DDP saves) shared by every key."""
    sd = dict(state_dict)
    while sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def split_prior_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Splits a reference `DiffusionPrior` state dict into (net, noise_scheduler, clip).

    `net` and `clip` keep their prefixes; `noise_scheduler` is keyed by buffer name. A bare network
    state dict (keys like `learned_query`, `causal_transformer.*`) is accepted and given the `net.`
    prefix.

    Raises:
        StateDictMismatchError: keys outside these three groups (listed as unexpected).
    """
    sd = _strip_wrappers(state_dict)
    if sd and not any(k.startswith((_NET, _SCHED, _CLIP)) for k in sd) and "learned_query" in sd:
        sd = {_NET + k: v for k, v in sd.items()}
    net, sched, clip, other = {}, {}, {}, []
    for key, value in sd.items():
        if key.startswith(_NET):
            net[key] = value
        elif key.startswith(_SCHED):
            sched[key[len(_SCHED) :]] = value
        elif key.startswith(_CLIP):
            clip[key] = value
        else:
            other.append(key)
    if other:
        raise StateDictMismatchError(
            "reference prior state dict (expected only net.*, noise_scheduler.* and clip.* keys)",
            missing=[],
            unexpected=sorted(other),
            mismatched=[],
        )
    return net, sched, clip


def detect_prior_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Returns "1.1.0" or "1.15.6" from the null-embedding keys of a prior state dict.

    Accepts a full `DiffusionPrior` state dict (`net.*` keys) or a bare network one.

    Raises:
        UnsupportedPriorGenerationError: pre-0.23 priors (no learned text padding; `gamma`/`beta`
            LayerNorms before 0.16), or a mix of both generations' keys.
        ValueError: not a prior state dict at all.
    """
    sd = _strip_wrappers(state_dict)
    names = {k[len(_NET) :] if k.startswith(_NET) else k for k in sd}
    if "learned_query" not in names or not any(n.startswith("causal_transformer.") for n in names):
        raise ValueError(
            "not a diffusion prior state dict: no net.learned_query / net.causal_transformer.* keys "
            f"(first keys: {sorted(sd)[:5]})"
        )
    found = {layout for layout, markers in _LAYOUT_MARKERS.items() if any(m in names for m in markers)}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise UnsupportedPriorGenerationError(
            "prior state dict mixes generations: it has both net.null_text_embed (1.1.0 layout) and "
            "net.null_text_encodings/null_text_embeds/null_image_embed (1.15.6 layout)"
        )
    if any(n.endswith(".gamma") for n in names):
        era = "a pre-0.16 prior (LayerNorm `gamma`/`beta` keys)"
    else:
        era = "a pre-0.23 prior"
    raise UnsupportedPriorGenerationError(
        f"this is {era} without learned text padding (no net.null_text_embed / "
        "net.null_text_encodings): those priors masked text padding inside attention, which "
        f"DiffusionPriorNetwork does not reproduce. Supported layouts: {PRIOR_LAYOUTS}."
    )


def convert_prior_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    layout: str | None = None,
) -> ConvertedPriorState:
    """Converts a reference prior state dict (1.1.0 or 1.15.6 generation) for our modules.

    Args:
        state_dict: e.g. `safe_torch_load(path)["model"]`, or a trainer file's `["ema_model"]`.
        layout: expected layout; None = detect. A given layout that disagrees with the keys raises.

    Returns:
        :class:`ConvertedPriorState` (layout, `net.*` keys, schedule buffers, `clip.*` keys).

    Raises:
        UnsupportedPriorGenerationError, ValueError: see :func:`detect_prior_layout`; also a
            `layout` that is unknown or disagrees with the keys.
        StateDictMismatchError: keys outside net./noise_scheduler./clip.
    """
    if layout is not None and layout not in PRIOR_LAYOUTS:
        raise ValueError(f"unknown prior layout {layout!r}; expected one of {PRIOR_LAYOUTS}")
    net, sched, clip = split_prior_state_dict(state_dict)
    detected = detect_prior_layout(net)
    if layout is not None and layout != detected:
        raise ValueError(
            f"prior checkpoint has the {detected} key layout but layout={layout!r} was requested "
            f"(1.1.0: net.null_text_embed; 1.15.6: net.null_text_encodings + null_text_embeds + "
            "null_image_embed)"
        )
    unknown_buffers = sorted(set(sched) - set(NOISE_SCHEDULER_BUFFERS))
    if unknown_buffers:
        raise StateDictMismatchError(
            "reference prior noise_scheduler buffers",
            missing=[],
            unexpected=[_SCHED + k for k in unknown_buffers],
            mismatched=[],
        )
    return ConvertedPriorState(layout=detected, net=net, noise_scheduler=sched, clip=clip)


def check_prior_network_state(
    net: nn.Module,
    converted: ConvertedPriorState | Mapping[str, torch.Tensor],
    *,
    context: str = "prior checkpoint",
) -> None:
    """Raises a readable :class:`StateDictMismatchError` unless `converted` fits `net` exactly.

    Args:
        net: our `DiffusionPriorNetwork` (may live on the meta device).
        converted: a :class:`ConvertedPriorState` or a `net.`-prefixed mapping.
        context: start of the error message (e.g. the file name).
    """
    got = converted.net if isinstance(converted, ConvertedPriorState) else dict(converted)
    layout = getattr(net, "layout", None)
    if isinstance(converted, ConvertedPriorState) and layout is not None and layout != converted.layout:
        context = f"{context} (file layout {converted.layout}, network built with layout {layout})"
    expected = {_NET + k: tuple(v.shape) for k, v in net.state_dict().items()}
    check_state_dict(expected, got, context)
