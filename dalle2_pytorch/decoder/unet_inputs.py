"""Validation of the decoder Unet's forward inputs and its conditioning-dropout masks.

Kept apart from :mod:`dalle2_pytorch.decoder.unet` so the network file stays about the network.
Every check raises ValueError/TypeError naming the offending argument.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from dalle2_pytorch.rng import rand_tensor

__all__ = ["UnetInputs", "keep_mask", "prepare_unet_inputs", "resolve_noise_level"]


@dataclass
class UnetInputs:
    """Validated forward inputs (batch b first everywhere; unused conditioning set to None)."""

    x: torch.Tensor  # (b, channels, h, w)
    time: torch.Tensor  # (b,)
    image_embed: torch.Tensor | None  # (b, image_embed_dim)
    text_encodings: torch.Tensor | None  # (b, n, text_embed_dim)
    lowres_cond_img: torch.Tensor | None  # (b, channels, h, w)
    lowres_noise_level: torch.Tensor | None  # (b,)
    self_cond: torch.Tensor | None  # (b, channels, h, w)

    def doubled(self) -> "UnetInputs":
        """The same inputs stacked twice along the batch (for batched guidance)."""
        return replace(self, **{
            f.name: torch.cat((v, v), dim=0) for f in fields(self) if (v := getattr(self, f.name)) is not None
        })


def resolve_noise_level(level: Any, alias: Any) -> Any:
    """`lowres_noise_times` is an alias of `lowres_noise_level`; at most one may be given."""
    if level is not None and alias is not None:
        raise TypeError("pass only one of lowres_noise_level and lowres_noise_times (an alias)")
    return level if level is not None else alias


def keep_mask(
    b: int, drop_prob: float, generator: torch.Generator | None, device: torch.device, name: str
) -> torch.Tensor:
    """(b,) bool: True keeps the conditioning; each row is dropped with probability `drop_prob`
    (exactly none at 0 and all at 1). Draws `torch.rand(b, generator=generator)` otherwise."""
    drop_prob = float(drop_prob)
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {drop_prob}")
    if drop_prob == 0.0:
        return torch.ones(b, dtype=torch.bool, device=device)
    if drop_prob == 1.0:
        return torch.zeros(b, dtype=torch.bool, device=device)
    return rand_tensor((b,), generator=generator, device=device) < (1.0 - drop_prob)


def _per_sample(value: Any, b: int, device: torch.device, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, device=device)
    if t.ndim == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"{name} must be a scalar or have shape ({b},), got {tuple(t.shape)}")
    return t


def _check_image(x: torch.Tensor, name: str, value: torch.Tensor | None, wanted: bool, flag: str):
    if not wanted:
        if value is not None:
            raise ValueError(f"{name} was given but this Unet has {flag}=False")
        return None
    if value is not None and value.shape != x.shape:
        raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(value.shape)}")
    return value


def prepare_unet_inputs(
    unet: Any,
    x: torch.Tensor,
    time: Any,
    image_embed: torch.Tensor | None,
    text_encodings: torch.Tensor | None,
    lowres_cond_img: torch.Tensor | None,
    lowres_noise_level: Any,
    self_cond: torch.Tensor | None,
) -> UnetInputs:
    """Checks the inputs against `unet`'s options and normalises them (scalar times broadcast,
    ignored conditioning dropped, missing self-conditioning replaced by zeros)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (b, c, h, w) tensor, got {getattr(x, 'shape', type(x))}")
    b, c, h, w = x.shape
    if c != unet.channels:
        raise ValueError(f"x has {c} channels but this Unet expects channels={unet.channels}")
    f = unet.downsample_factor
    if h % f or w % f:
        raise ValueError(
            f"x spatial size {h}x{w} must be divisible by {f} (2^{f.bit_length() - 1} for "
            f"{unet.num_stages} stages{', memory_efficient' if unet.memory_efficient else ''})"
        )
    time = _per_sample(time, b, x.device, "time")
    if not unet.cond_on_image_embeds:
        image_embed = None  # ignored, as in the reference (upsamplers are passed it too)
    elif image_embed is None:
        raise ValueError("image_embed is required: this Unet has cond_on_image_embeds=True")
    elif image_embed.shape != (b, unet.image_embed_dim):
        raise ValueError(f"image_embed must have shape ({b}, {unet.image_embed_dim}), got {tuple(image_embed.shape)}")
    if not unet.cond_on_text_encodings:
        text_encodings = None  # ignored, as in the reference
    elif text_encodings is not None and (
        text_encodings.ndim != 3 or text_encodings.shape[0] != b or text_encodings.shape[2] != unet.text_embed_dim
    ):
        raise ValueError(
            f"text_encodings must have shape ({b}, n, {unet.text_embed_dim}), got {tuple(text_encodings.shape)}"
        )
    lowres_cond_img = _check_image(x, "lowres_cond_img", lowres_cond_img, unet.lowres_cond, "lowres_cond")
    if unet.lowres_cond and lowres_cond_img is None:
        raise ValueError("lowres_cond_img is required: this Unet has lowres_cond=True")
    if unet.lowres_noise_cond:
        if lowres_noise_level is None:
            raise ValueError("lowres_noise_level is required: this Unet has lowres_noise_cond=True")
        lowres_noise_level = _per_sample(lowres_noise_level, b, x.device, "lowres_noise_level")
    elif lowres_noise_level is not None:
        raise ValueError("lowres_noise_level was given but this Unet has lowres_noise_cond=False")
    self_cond = _check_image(x, "self_cond", self_cond, unet.self_cond, "self_cond")
    if unet.self_cond and self_cond is None:
        self_cond = torch.zeros_like(x)
    return UnetInputs(x, time, image_embed, text_encodings, lowres_cond_img, lowres_noise_level, self_cond)
