"""Adapter for a CLIP trained with `x-clip` (lucidrains' `x_clip.CLIP`, re-exported as
`dalle2_pytorch.CLIP`).

Text: tokens (cut to `text_seq_len`) -> text transformer -> the CLS output is projected by
`to_text_latent` and l2-normalised; the per-token outputs (CLS dropped) are the text encodings,
zeroed at padding (token id == `text_pad_id`, 0 by default). Image: visual transformer -> CLS
output -> `to_visual_latent` -> l2norm; the patch outputs are returned as image encodings.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from dalle2_pytorch.clip_adapters.base import BaseClipAdapter, EmbeddedImage, EmbeddedText, l2norm
from dalle2_pytorch.clip_adapters.tokenizer import SimpleTokenizer

__all__ = ["XClipAdapter"]

_OVERRIDABLE = ("image_size", "image_channels", "max_text_len")
_REQUIRED_ATTRS = ("text_transformer", "visual_transformer", "to_text_latent", "to_visual_latent")


class XClipAdapter(BaseClipAdapter):
    """Frozen adapter around an `x_clip.CLIP`.

    Args:
        clip: the x-clip model (any module with `text_transformer`, `visual_transformer`,
            `to_text_latent`, `to_visual_latent` and x-clip's size attributes).
        tokenizer: callable `list[str] -> (b, n)` ids. Default: the OpenAI BPE with start/end
            tokens and context length `text_seq_len` (needs `num_text_tokens` >= 49408).
        text_mask_in_encoder: pass the padding mask to the text transformer. Default False: the
            reference adapter ran the encoder without a mask, and priors/decoders trained through it
            saw those encodings. True matches x-clip's own training forward (which masks padding
            unless `text_encode_without_mask`).
        **overrides: `image_size`, `image_channels`, `max_text_len` replacing the CLIP's values.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Callable | None = None,
        *,
        text_mask_in_encoder: bool = False,
        **overrides,
    ) -> None:
        missing = [a for a in _REQUIRED_ATTRS if not hasattr(clip, a)]
        if missing:
            raise TypeError(
                f"XClipAdapter needs an x_clip.CLIP (missing attributes {missing}); got {type(clip).__name__}"
            )
        unknown = sorted(set(overrides) - set(_OVERRIDABLE))
        if unknown:
            raise TypeError(f"unknown XClipAdapter overrides {unknown}; allowed: {list(_OVERRIDABLE)}")
        if not isinstance(clip.to_visual_latent, nn.Linear):
            raise NotImplementedError(
                "XClipAdapter supports x-clip models whose image latent projection is a Linear layer "
                "(downsample_image_embeds=False)"
            )
        if tokenizer is None:
            tokenizer = SimpleTokenizer(
                context_length=int(overrides.get("max_text_len", getattr(clip, "text_seq_len", 77)))
            )
        super().__init__(clip, tokenizer=tokenizer, **overrides)
        self.text_mask_in_encoder = bool(text_mask_in_encoder)

    # ------------------------------------------------------------------ sizes
    @property
    def dim_latent(self) -> int:
        return int(self.clip.dim_latent)

    @property
    def text_encodings_dim(self) -> int:
        return int(self.clip.dim_text)

    @property
    def image_size(self) -> int:
        return int(self.overrides.get("image_size", self.clip.image_size))

    @property
    def image_channels(self) -> int:
        return int(self.overrides.get("image_channels", self.clip.image_channels))

    @property
    def max_text_len(self) -> int:
        return int(self.overrides.get("max_text_len", self.clip.text_seq_len))

    @property
    def pad_id(self) -> int:
        return int(getattr(self.clip, "text_pad_id", 0))

    # ------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def embed_text(self, tokens: Tensor) -> EmbeddedText:
        """(b, n) ids -> text_embed (b, dim_latent), text_encodings (b, min(n, max_text_len), dim_text)."""
        tokens = self._check_tokens(tokens)
        token_emb = getattr(self.clip.text_transformer, "token_emb", None)
        if isinstance(token_emb, nn.Embedding) and tokens.numel() and int(tokens.max()) >= token_emb.num_embeddings:
            raise ValueError(
                f"token id {int(tokens.max())} is outside this CLIP's vocabulary of "
                f"{token_emb.num_embeddings} tokens; use a tokenizer matching num_text_tokens"
            )
        keep = tokens != self.pad_id
        if self.text_mask_in_encoder:
            encoded = self.clip.text_transformer(tokens, keep)
        else:
            encoded = self.clip.text_transformer(tokens)

        n = tokens.shape[1]
        if encoded.ndim == 2:  # a custom text encoder returning pooled features only
            return EmbeddedText(l2norm(self.clip.to_text_latent(encoded)), None)
        if getattr(self.clip, "text_causal_mask", False):
            # causal x-clip text encoders have no CLS token: pool at the first end-of-text token
            eos = tokens == self.clip.text_eos_id
            if not bool(eos.any(dim=-1).all()):
                raise ValueError(f"every text needs the end-of-text id {self.clip.text_eos_id} (causal CLIP)")
            index = eos.long().argmax(dim=-1)
            pooled = encoded[torch.arange(tokens.shape[0], device=tokens.device), index]
            per_token = encoded
        elif encoded.shape[1] == n + 1:  # CLS prepended (x-clip's default text transformer)
            pooled, per_token = encoded[:, 0], encoded[:, 1:]
        else:
            pooled, per_token = encoded[:, 0], encoded

        text_embed = l2norm(self.clip.to_text_latent(pooled))
        text_encodings = per_token.masked_fill(~keep[..., None], 0.0)
        return EmbeddedText(text_embed, text_encodings)

    @torch.no_grad()
    def embed_image(self, images: Tensor) -> EmbeddedImage:
        """(b, c, h, w) in [0, 1] -> image_embed (b, dim_latent), image_encodings (b, patches, dim_image)."""
        images = self.validate_and_resize_image(images)
        param = next(self.clip.visual_transformer.parameters())
        encoded = self.clip.visual_transformer(images.to(device=param.device, dtype=param.dtype))
        pooled, patches = encoded[:, 0], encoded[:, 1:]
        return EmbeddedImage(l2norm(self.clip.to_visual_latent(pooled)), patches)
