"""The prior's text conditioning: checks, candidate repetition, negative prompts.

Kept apart from :mod:`dalle2_pytorch.prior.diffusion_prior` so the model file holds the diffusion.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from dalle2_pytorch._helpers import default

__all__ = ["negative_condition", "repeat_condition", "text_condition"]


def text_condition(
    text_embed: torch.Tensor, text_encodings: torch.Tensor | None, image_embed_dim: int, use_encodings: bool
) -> dict:
    """The network's text keyword arguments: `text_embed` (b, d) and, if the prior uses them,
    `text_encodings` (b, n, d); a clear ValueError for wrong shapes or missing encodings."""
    if text_embed.ndim != 2 or text_embed.shape[-1] != image_embed_dim:
        raise ValueError(f"text_embed must have shape (batch, {image_embed_dim}), got {tuple(text_embed.shape)}")
    cond = {"text_embed": text_embed}
    if use_encodings:
        if text_encodings is None:
            raise ValueError(
                "this prior is conditioned on text encodings (condition_on_text_encodings=True): pass raw "
                "`text` with a CLIP attached, or `text_encodings` (batch, tokens, dim)"
            )
        if text_encodings.shape[0] != text_embed.shape[0]:
            raise ValueError(
                f"text_encodings batch ({text_encodings.shape[0]}) != text_embed batch ({text_embed.shape[0]})"
            )
        cond["text_encodings"] = text_encodings
    return cond


def repeat_condition(text_embed: torch.Tensor, text_encodings: torch.Tensor | None, r: int) -> dict:
    """Text conditioning with every row repeated r times (r candidates per caption)."""
    cond = {"text_embed": text_embed.repeat_interleave(r, dim=0)}
    if text_encodings is not None:
        cond["text_encodings"] = text_encodings.repeat_interleave(r, dim=0)
    return cond


def negative_condition(
    prompt: Any,
    text_embed: torch.Tensor | None,
    text_encodings: torch.Tensor | None,
    batch: int,
    embed_text: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
    use_encodings: bool,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(text_embed (batch, d), text_encodings or None) of negative prompts (one for all captions or
    one each), or None when none is given."""
    if prompt is None and text_embed is None:
        if text_encodings is not None:
            raise ValueError("negative_text_encodings needs negative_text_embed")
        return None
    if prompt is not None:
        if text_embed is not None:
            raise ValueError("give either negative_prompt or negative_text_embed, not both")
        if isinstance(prompt, str) or (not torch.is_tensor(prompt) and len(list(prompt)) == 1):
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not texts[0].strip():
                raise ValueError("negative_prompt must be a non-empty string")
            prompt = texts * batch
        elif not torch.is_tensor(prompt) and any(not isinstance(t, str) or not t.strip() for t in prompt):
            raise ValueError("negative prompts must be non-empty strings")
        text_embed, encodings = embed_text(prompt)
        text_encodings = default(text_encodings, encodings)
    if text_embed.shape[0] == 1 and batch > 1:
        text_embed = text_embed.expand(batch, -1)
        text_encodings = None if text_encodings is None else text_encodings.expand(batch, -1, -1)
    if text_embed.shape[0] != batch:
        raise ValueError(f"{text_embed.shape[0]} negative prompts given for {batch} captions")
    return text_embed, (text_encodings if use_encodings else None)
