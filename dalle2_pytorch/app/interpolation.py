"""Interpolation between two CLIP image embeddings (unCLIP, Ramesh et al. 2022, sec. 3.2), for the page.

Stand-in until ``DALLE2.interpolate`` exists: the page calls :func:`interpolate_frames`, which slerps
the embeddings and decodes every frame with the same decoder noise (one seed per frame), so frames
change smoothly and the frames at t = 0 and t = 1 are the endpoints' own generations.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["interpolate_frames", "slerp"]


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of directions, linear interpolation of norms.

    ``slerp(a, b, t) = |z_t| * (sin((1 - t) w) a^ + sin(t w) b^) / sin(w)`` with ``w`` the angle
    between the unit vectors ``a^`` and ``b^`` (Shoemake 1985) and ``|z_t| = (1 - t)|a| + t|b|``;
    ``t = 0`` gives ``a`` and ``t = 1`` gives ``b``. Nearly parallel vectors fall back to the linear
    interpolation of the directions; for exactly opposite ones slerp is undefined (any great circle).

    Args:
        a, b: (..., d) embeddings.
        t: in [0, 1].

    Returns:
        (..., d), the dtype and device of ``a``.
    """
    if t == 0:
        return a.clone()
    if t == 1:
        return b.to(a).clone()
    a64, b64 = a.double(), b.to(a.device).double()
    na, nb = a64.norm(dim=-1, keepdim=True), b64.norm(dim=-1, keepdim=True)
    ua, ub = a64 / na.clamp(min=1e-12), b64 / nb.clamp(min=1e-12)
    omega = torch.arccos((ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    wa = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / sin.where(~parallel, torch.ones_like(sin)))
    wb = torch.where(parallel, t, torch.sin(t * omega) / sin.where(~parallel, torch.ones_like(sin)))
    direction = wa * ua + wb * ub
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return (direction * ((1 - t) * na + t * nb)).to(a.dtype)


@torch.no_grad()
def interpolate_frames(
    chain: Any,
    start: torch.Tensor,
    end: torch.Tensor,
    frames: int,
    *,
    captions: tuple[str, str] = ("", ""),
    seed: int = 0,
    cond_scale: float = 1.0,
    steps: int | None = None,
    sampler: str | None = None,
) -> tuple[torch.Tensor, Sequence[float]]:
    """Decodes ``frames`` slerps from ``start`` to ``end`` (both (1, d) CLIP image embeddings).

    Every frame is decoded with a generator seeded with ``seed``: the same starting noise (and, for
    stochastic samplers, the same noise at every step). A text-conditioned decoder gets the caption
    of the nearer endpoint.

    Returns:
        ((frames, c, s, s) images in [0, 1], the frames' t values).
    """
    if frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {frames}")
    clip = chain.clip
    ts = [k / (frames - 1) for k in range(frames)]
    images = []
    for t in ts:
        embed = slerp(start, end, t)
        tokens = None
        if chain.decoder.condition_on_text_encodings:
            tokens = clip.tokenize([captions[0] if t < 0.5 else captions[1]]).to(chain.decoder.device)
        generator = torch.Generator().manual_seed(seed)  # CPU: the same noise on every device
        images.append(chain.decode(embed, tokens=tokens, cond_scale=cond_scale, steps=steps, sampler=sampler,
                                   generator=generator))
    return torch.cat(images), ts
