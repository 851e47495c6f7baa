"""Inputs of the prior network: validation, conditioning-dropout probabilities, the prefix cache.

Kept apart from :mod:`dalle2_pytorch.prior.network` so the network file stays about the network.
Every check raises ValueError/TypeError naming the offending argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dalle2_pytorch.prior.transformer import TransformerPrefixCache

__all__ = ["PriorPrefixCache", "check_network_inputs", "check_prob", "drop_probs"]


@dataclass
class PriorPrefixCache:
    """Transformer state of the text prefix [text encodings, text embedding], reusable across steps.

    The prefix precedes the timestep and noised-embedding tokens in a causal sequence, so it does
    not depend on them. Built by :meth:`DiffusionPriorNetwork.build_prefix_cache`.

    Attributes:
        cond: the conditional prefix, one row per sample (b rows).
        null: the unconditional prefix (all text replaced by the learned nulls), one row shared by
            every sample; None for layout "1.1.0" (no unconditional branch).
        text_skip: (b, dim) linear-skip term of the conditional rows (``linear_text_skip``), else None.
    """

    cond: TransformerPrefixCache
    null: TransformerPrefixCache | None
    text_skip: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.cond.batch_size

    def cat(self, other: "PriorPrefixCache") -> "PriorPrefixCache":
        """The conditional rows of `self` followed by those of `other` (one batch of both; used to
        run a prompt's and a negative prompt's branches as one pass). The null rows are dropped."""
        a, b = self.cond, other.cond
        if a.prefix_len != b.prefix_len or a.attn_bias.shape != b.attn_bias.shape:
            raise ValueError("prefix caches of different sequence layouts cannot be joined")
        cond = TransformerPrefixCache(
            [torch.cat(pair) for pair in zip(a.keys, b.keys)],
            [torch.cat(pair) for pair in zip(a.values, b.values)],
            a.attn_bias,
            a.prefix_len,
        )
        skips = (self.text_skip, other.text_skip)
        text_skip = None if skips[0] is None or skips[1] is None else torch.cat(skips)
        return PriorPrefixCache(cond, None, text_skip)


def check_prob(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return p


def drop_probs(text_p: float, image_p: float, cond_p: float | None) -> tuple[float, float]:
    """Resolves the 1.1.0-style `cond_drop_prob` alias into (text, image) drop probabilities."""
    if cond_p is not None:
        if text_p != 0.0 or image_p != 0.0:
            raise ValueError("pass either cond_drop_prob or text_cond_drop_prob/image_cond_drop_prob, not both")
        text_p = image_p = cond_p
    return check_prob("text_cond_drop_prob", text_p), check_prob("image_cond_drop_prob", image_p)


def check_network_inputs(
    net: Any,
    image_embed: torch.Tensor,
    diffusion_timesteps: torch.Tensor,
    text_embed: torch.Tensor | None,
    text_encodings: torch.Tensor | None,
    self_cond: torch.Tensor | None,
    prefix_cache: PriorPrefixCache | None = None,
) -> None:
    """Checks the forward inputs of `net` (a DiffusionPriorNetwork); see its `forward`."""
    d = net.dim
    if image_embed.ndim != 2 or image_embed.shape[-1] != d:
        raise ValueError(f"image_embed must have shape (batch, {d}), got {tuple(image_embed.shape)}")
    b = image_embed.shape[0]
    if text_embed is not None and (text_embed.ndim != 2 or text_embed.shape != (b, d)):
        raise ValueError(f"text_embed must have shape ({b}, {d}), got {tuple(text_embed.shape)}")
    if not torch.is_tensor(diffusion_timesteps) or diffusion_timesteps.shape != (b,):
        shape = tuple(diffusion_timesteps.shape) if torch.is_tensor(diffusion_timesteps) else type(diffusion_timesteps)
        raise ValueError(f"diffusion_timesteps must be a tensor of shape ({b},), got {shape}")
    if not net.continuous_embedded_time and diffusion_timesteps.is_floating_point():
        raise TypeError(
            "this network has a learned time embedding (num_timesteps set): diffusion_timesteps must be "
            f"an integer tensor, got {diffusion_timesteps.dtype}"
        )
    if text_encodings is not None and (
        text_encodings.ndim != 3 or text_encodings.shape[0] != b or text_encodings.shape[-1] != d
    ):
        raise ValueError(
            f"text_encodings must have shape ({b}, seq_len, {d}), got {tuple(text_encodings.shape)}"
        )
    if self_cond is not None:
        if not net.self_cond:
            raise ValueError("self_cond was given but the network was built with self_cond=False")
        if self_cond.shape != (b, d):
            raise ValueError(f"self_cond must have shape ({b}, {d}), got {tuple(self_cond.shape)}")
    if prefix_cache is None:
        if text_embed is None:
            raise ValueError("text_embed is required (unless a prefix_cache is given)")
    else:
        if not isinstance(prefix_cache, PriorPrefixCache):
            raise TypeError(
                f"prefix_cache must be a PriorPrefixCache from build_prefix_cache, got {type(prefix_cache).__name__}"
            )
        if prefix_cache.batch_size != b:
            raise ValueError(f"prefix_cache was built for {prefix_cache.batch_size} rows, got a batch of {b}")
