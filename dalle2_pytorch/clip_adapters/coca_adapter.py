"""Adapter for CoCa models (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation
Models") built by open_clip (`coca_ViT-B-32`, `coca_ViT-L-14`, ...).

Text: tokens (open_clip's OpenAI BPE, context 76 because CoCa appends a CLS token) go through the
unimodal text tower; the embedding is the projected, l2-normalised CLS output (CoCa's contrastive
text embedding, §3.1) and the per-token encodings are the tower's token outputs (before the final
norm, as CoCa's multimodal decoder receives them), zeroed at padding. Image: as
:class:`OpenClipAdapter`, plus the image encodings: the attentional pooler's query tokens that
CoCa's decoder cross-attends to.

Differences from the reference's `CoCaAdapter` (which wrapped a `coca_pytorch.CoCa`): the model comes
from open_clip (a model name, or an open_clip CoCa instance), so LAION's pretrained CoCa weights can
be used; embeddings are l2-normalised like every other adapter here (the reference's CoCa ones were
not).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import Tensor, nn

from dalle2_pytorch.clip_adapters.base import EmbeddedImage, EmbeddedText, l2norm
from dalle2_pytorch.clip_adapters.open_clip_adapter import OpenClipAdapter, open_clip_model_name

__all__ = ["CoCaAdapter"]

# constructor arguments of coca_pytorch.CoCa, which the reference's configs passed as base_model_kwargs
_COCA_PYTORCH_KEYS = ("unimodal_depth", "multimodal_depth", "num_tokens", "caption_loss_weight", "img_encoder")


def _is_coca(model: Any) -> bool:
    return all(hasattr(model, a) for a in ("text", "visual", "text_decoder", "_encode_image"))


def _init_uninitialised(model: nn.Module) -> None:
    """open_clip creates the multimodal decoder's `text_projection` with `torch.empty` and never
    initialises it; random-weight models get a seeded normal init (std width^-0.5) instead of
    whatever memory held (which made them non-deterministic and could hold NaN)."""
    proj = getattr(getattr(model, "text_decoder", None), "text_projection", None)
    if isinstance(proj, nn.Parameter):
        with torch.no_grad():
            proj.normal_(std=proj.shape[0] ** -0.5)


class CoCaAdapter(OpenClipAdapter):
    """Frozen adapter around an open_clip CoCa model.

    Args:
        clip: an open_clip CoCa model name (e.g. 'coca_ViT-B-32', the default) or a built open_clip
            `CoCa` instance.
        pretrained: None/False for random weights; an open_clip tag (e.g.
            'laion2b_s13b_b90k', downloaded into open_clip's cache); or a local weights file.
        precision, device, model_kwargs, cache_dir: as :class:`OpenClipAdapter` (`model_kwargs`
            overrides the open_clip model config, e.g. a tiny `vision_cfg`/`text_cfg`/`multimodal_cfg`).
        tokenizer: default: the OpenAI BPE with the model's context length.

    Raises:
        TypeError: `clip` is not a CoCa model (a `coca_pytorch.CoCa` is not supported).
        ValueError: unknown model name or tag, or coca_pytorch arguments.
    """

    def __init__(
        self,
        clip: str | nn.Module = "coca_ViT-B-32",
        pretrained: str | os.PathLike | bool | None = None,
        *,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        tokenizer: Callable | None = None,
        model_kwargs: dict[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        name = "coca"
        if isinstance(clip, str):
            name, kwargs = clip, dict(model_kwargs or {})
            coca_pytorch_keys = sorted(k for k in kwargs if k in _COCA_PYTORCH_KEYS)
            if coca_pytorch_keys:
                raise ValueError(
                    f"{coca_pytorch_keys} are coca_pytorch.CoCa arguments; CoCa adapters are built by open_clip here: "
                    "give an open_clip CoCa model name (e.g. 'coca_ViT-B-32') and optional open_clip config overrides"
                )
            if not open_clip_model_name(clip).startswith("coca"):
                raise ValueError(f"{clip!r} is not an open_clip CoCa model (expected e.g. 'coca_ViT-B-32')")
            clip, _, _, _ = OpenClipAdapter._build(
                clip, pretrained, precision=precision, device=device, model_kwargs=kwargs, quick_gelu=None,
                cache_dir=cache_dir,
            )
            if pretrained in (None, False, ""):
                _init_uninitialised(clip)
        if not _is_coca(clip):
            raise TypeError(
                f"CoCaAdapter wraps an open_clip CoCa model, got {type(clip).__name__} "
                "(coca_pytorch models are not supported)"
            )
        super().__init__(name, pretrained=None, precision=precision, device=device, model=clip, tokenizer=tokenizer)
        self.pad_id = int(getattr(clip, "pad_id", 0))

    @staticmethod
    def _text_tower_of(model: nn.Module) -> nn.Module:
        """CoCa's unimodal text tower (with its appended CLS token)."""
        return model.text

    @torch.no_grad()
    def embed_text(self, tokens: Tensor) -> EmbeddedText:
        """(b, n) ids -> text_embed (b, dim_latent), text_encodings (b, max_text_len, width), float32."""
        tokens = self._check_tokens(tokens)
        tokens = torch.nn.functional.pad(tokens, (0, self.max_text_len - tokens.shape[1]), value=self.pad_id)
        pooled, per_token = self.clip.text(tokens)
        mask = tokens != self.pad_id
        return EmbeddedText(l2norm(pooled.float()), per_token.float().masked_fill(~mask[..., None], 0.0))

    @torch.no_grad()
    def embed_image(self, images: Tensor) -> EmbeddedImage:
        """(b, 3, h, w) in [0, 1] -> image_embed (b, dim_latent), image_encodings (b, n_queries - 1, dim_latent)."""
        pooled, image_tokens = self.clip._encode_image(self._prepare_images(images), normalize=False)
        return EmbeddedImage(l2norm(pooled.float()), image_tokens.float())
