"""Adapter for CoCa models (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation
Models") built by open_clip (`coca_ViT-B-32`, `coca_ViT-L-14`, ...).

Text: tokens (open_clip's OpenAI BPE, context 76 because CoCa appends a CLS token) go through the
unimodal text tower; the embedding is the projected, l2-normalised CLS output (CoCa's contrastive
text embedding, §3.1) and the per-token encodings are the tower's token outputs (before the final
norm, as CoCa's multimodal decoder receives them), zeroed at padding. Image: inputs in [0, 1] are
normalised with the model's mean/std; the embedding is the projected, l2-normalised attentional-pool
output, and the image encodings are the pooled query tokens CoCa's decoder cross-attends to.

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

from dalle2_pytorch.clip_adapters.base import BaseClipAdapter, EmbeddedImage, EmbeddedText, l2norm
from dalle2_pytorch.clip_adapters.open_clip_adapter import OpenClipAdapter, open_clip_model_name
from dalle2_pytorch.clip_adapters.tokenizer import SimpleTokenizer

__all__ = ["CoCaAdapter"]

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# constructor arguments of coca_pytorch.CoCa, which the reference's configs passed as base_model_kwargs
_COCA_PYTORCH_KEYS = ("unimodal_depth", "multimodal_depth", "num_tokens", "caption_loss_weight", "img_encoder")


def _init_uninitialised(model: nn.Module) -> None:
    """open_clip creates the multimodal decoder's `text_projection` with `torch.empty` and never
    initialises it; random-weight models get a seeded normal init (std width^-0.5) instead of
    whatever memory held (which made them non-deterministic and could hold NaN)."""
    proj = getattr(getattr(model, "text_decoder", None), "text_projection", None)
    if isinstance(proj, nn.Parameter):
        with torch.no_grad():
            proj.normal_(std=proj.shape[0] ** -0.5)


class CoCaAdapter(BaseClipAdapter):
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
        ValueError: unknown model name or tag.
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
        mean = std = None
        if isinstance(clip, str):
            kwargs = dict(model_kwargs or {})
            coca_pytorch_keys = sorted(k for k in kwargs if k in _COCA_PYTORCH_KEYS)
            if coca_pytorch_keys:
                raise ValueError(
                    f"{coca_pytorch_keys} are coca_pytorch.CoCa arguments; CoCa adapters are built by open_clip here: "
                    "give an open_clip CoCa model name (e.g. 'coca_ViT-B-32') and optional open_clip config overrides"
                )
            if not open_clip_model_name(clip).startswith("coca"):
                raise ValueError(f"{clip!r} is not an open_clip CoCa model (expected e.g. 'coca_ViT-B-32')")
            clip, mean, std, _ = OpenClipAdapter._build(
                clip, pretrained, precision=precision, device=device, model_kwargs=kwargs, quick_gelu=None,
                cache_dir=cache_dir,
            )
            if pretrained in (None, False, ""):
                _init_uninitialised(clip)
        if not (hasattr(clip, "text_decoder") and hasattr(clip, "_encode_image") and hasattr(clip, "text")):
            raise TypeError(
                f"CoCaAdapter wraps an open_clip CoCa model, got {type(clip).__name__} "
                "(coca_pytorch models are not supported)"
            )
        text = clip.text
        self._context_length = int(text.context_length)
        super().__init__(clip, tokenizer=tokenizer or SimpleTokenizer(self._context_length))
        self.pad_id = int(getattr(clip, "pad_id", 0))
        size = getattr(clip.visual, "image_size", 224)
        self._image_hw = tuple(int(s) for s in size) if isinstance(size, (tuple, list)) else (int(size),) * 2
        mean = mean or getattr(clip.visual, "image_mean", None) or _OPENAI_MEAN
        std = std or getattr(clip.visual, "image_std", None) or _OPENAI_STD
        self.register_buffer("image_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.to(self.device)

    # ------------------------------------------------------------------ sizes
    @property
    def dim_latent(self) -> int:
        proj = self.clip.text.text_projection
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def text_encodings_dim(self) -> int:
        return int(self.clip.text.positional_embedding.shape[-1])

    @property
    def image_size(self) -> int:
        return max(self._image_hw)

    @property
    def image_hw(self) -> tuple[int, int]:
        return self._image_hw

    @property
    def image_channels(self) -> int:
        return 3

    @property
    def max_text_len(self) -> int:
        return self._context_length

    # ------------------------------------------------------------------ embeddings
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
        """(b, 3, h, w) in [0, 1] -> image_embed (b, dim_latent), image_encodings (b, n_queries, width)."""
        images = self.validate_and_resize_image(images)
        images = (images.to(self.image_mean.device, torch.float32) - self.image_mean) / self.image_std
        dtype = next(self.clip.visual.parameters()).dtype
        pooled, image_tokens = self.clip._encode_image(images.to(dtype), normalize=False)
        return EmbeddedImage(l2norm(pooled.float()), image_tokens.float())
