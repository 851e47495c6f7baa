"""Paths through CLIP's embedding sphere: the maths of unCLIP's latent manipulations.

Ramesh et al. 2022 ("Hierarchical Text-Conditional Image Generation with CLIP Latents"):

* sec. 3.2, interpolations: z_θ = slerp(z_1, z_2, θ) between two CLIP image embeddings, each decoded
  with the same decoder noise (:func:`slerp`);
* sec. 3.3, text diffs: z_d = norm(z_t - z_t0), the normalised difference between the CLIP text
  embeddings of a new caption and of a caption describing the image, then z_θ = slerp(z_i, z_d, θ)
  (:func:`text_diff_direction`, :func:`slerp`).

Weighted mixes of more than two embeddings (:func:`weighted_mix`) follow Kandinsky 2.x's prior
``interpolate(images_and_prompts, weights)`` (a weighted sum of embeddings), renormalised here
because the decoders were trained on unit-norm CLIP image embeddings.

CLIP embeddings are unit vectors (the adapters l2-normalise them); the functions accept any norm.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["check_fractions", "slerp", "text_diff_direction", "weighted_mix"]


def check_fractions(values: Sequence[float] | torch.Tensor, name: str) -> list[float]:
    """Validates interpolation positions / amounts: a non-empty sequence of finite numbers in [0, 1]."""
    values = values.tolist() if torch.is_tensor(values) else list(values)
    if not values:
        raise ValueError(f"{name} must hold at least one value in [0, 1]")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must be numbers in [0, 1], got {v!r}")
        out.append(float(v))
    return out


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | Sequence[float] | torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985) between embeddings, as in unCLIP sec. 3.2.

    slerp(a, b, t) = sin((1 - t) Ω) / sin Ω · a + sin(t Ω) / sin Ω · b, with Ω the angle between a
    and b. The weights multiply the vectors as given, so t = 0 returns `a` and t = 1 returns `b`
    exactly (bit for bit); for unit vectors every point lies on the unit sphere. Nearly parallel
    or opposite vectors (|sin Ω| < eps), where the great circle is ill-defined, fall back to linear
    interpolation.

    Args:
        a, b: (d,) or (n, d) embeddings (broadcast against each other).
        t: one position or k positions in [0, 1].

    Returns:
        (..., d) for a scalar t; (k, ..., d) for k positions (frame-major).
    """
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"slerp needs embeddings of one width, got {tuple(a.shape)} and {tuple(b.shape)}")
    scalar = not torch.is_tensor(t) and isinstance(t, (int, float))
    ts = torch.as_tensor([t] if scalar else list(t.tolist() if torch.is_tensor(t) else t), dtype=torch.float64)
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    cos = (F.normalize(a64, dim=-1) * F.normalize(b64, dim=-1)).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)  # (..., 1)
    sin = torch.sin(omega)
    shape = (-1,) + (1,) * max(a.ndim, b.ndim)
    tt = ts.reshape(shape).to(a.device)
    linear = sin.abs() < eps
    safe_sin = torch.where(linear, torch.ones_like(sin), sin)
    wa = torch.where(linear, 1.0 - tt, torch.sin((1.0 - tt) * omega) / safe_sin)
    wb = torch.where(linear, tt, torch.sin(tt * omega) / safe_sin)
    out = wa * a64 + wb * b64
    # exact endpoints, whatever the rounding of sin(Ω) / sin(Ω)
    out = torch.where(tt == 0, a64.expand_as(out), torch.where(tt == 1, b64.expand_as(out), out))
    out = out.to(torch.promote_types(a.dtype, b.dtype))
    return out[0] if scalar else out


def text_diff_direction(from_text_embed: torch.Tensor, to_text_embed: torch.Tensor) -> torch.Tensor:
    """unCLIP sec. 3.3's text diff z_d = norm(z_t - z_t0): the unit direction from the CLIP text
    embedding of the current caption (z_t0, `from_text_embed`) to that of the new one (z_t).

    Args:
        from_text_embed, to_text_embed: (d,) or (n, d) CLIP text embeddings.

    Returns:
        The unit-norm direction, same shape.
    """
    diff = to_text_embed.to(torch.float64) - from_text_embed.to(torch.float64)
    if bool((diff.norm(dim=-1) < 1e-8).any()):
        raise ValueError("the two captions have the same CLIP text embedding: a text diff needs different captions")
    return F.normalize(diff, dim=-1).to(to_text_embed.dtype)


def weighted_mix(embeds: torch.Tensor, weights: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A weighted mix of n embeddings (Kandinsky-style `interpolate(inputs, weights)`).

    The weighted sum Σ w_i z_i is rescaled to the weighted mean norm Σ w_i |z_i| / Σ w_i (unit norm
    for CLIP embeddings), so the decoder sees an embedding on the sphere it was trained on. For two
    inputs this is "normalised linear interpolation", close to :func:`slerp` but not equal to it.

    Args:
        embeds: (n, d) embeddings.
        weights: n non-negative numbers, not all 0 (they need not sum to 1).

    Returns:
        (d,) the mixed embedding.
    """
    if embeds.ndim != 2:
        raise ValueError(f"embeds must have shape (n, d), got {tuple(embeds.shape)}")
    w = torch.as_tensor(weights.tolist() if torch.is_tensor(weights) else list(weights), dtype=torch.float64)
    if w.ndim != 1 or w.shape[0] != embeds.shape[0]:
        raise ValueError(f"{w.numel()} weights given for {embeds.shape[0]} inputs")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"weights must be finite numbers >= 0, not all 0, got {w.tolist()}")
    w = w.to(embeds.device)
    e = embeds.to(torch.float64)
    mixed = (w[:, None] * e).sum(0)
    if float(mixed.norm()) < 1e-8:
        raise ValueError("the weighted embeddings cancel out (their weighted sum is 0): change the weights")
    norm = (w * e.norm(dim=-1)).sum() / w.sum()
    return (F.normalize(mixed, dim=-1) * norm).to(embeds.dtype)
