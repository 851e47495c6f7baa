"""The frozen-CLIP interface every part of the package talks to.

unCLIP (Ramesh et al. 2022, §2) conditions the prior on CLIP text embeddings (and per-token text
encodings) and the decoder on CLIP image embeddings. The networks never see a CLIP model directly:
they call a :class:`BaseClipAdapter`, which

* tokenises text with the CLIP's own tokenizer (start/end-of-text tokens included),
* returns :class:`EmbeddedText` / :class:`EmbeddedImage` tuples with l2-normalised embeddings,
* checks and resizes images to the CLIP input size,
* stays frozen: no gradients, and eval mode even when a parent module calls ``.train()``.

The wrapped model is stored as ``self.clip``, so an adapter attached to a prior/decoder contributes
``clip.clip.*`` keys to their state dicts, the layout of the reference package's checkpoints.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BaseClipAdapter", "EmbeddedImage", "EmbeddedText", "l2norm", "resize_image"]


class EmbeddedText(NamedTuple):
    """CLIP text outputs.

    Attributes:
        text_embed: (b, dim_latent) l2-normalised projected text embedding.
        text_encodings: (b, n, text_encodings_dim) per-token encodings, exactly 0 at padding and
            after the end-of-text token (None for a custom x-clip text encoder without per-token
            outputs).
    """

    text_embed: Tensor
    text_encodings: Tensor | None

    @property
    def text_mask(self) -> Tensor | None:
        """(b, n) bool: positions whose encoding is not all zeros (the reference's derivation)."""
        if self.text_encodings is None:
            return None
        return (self.text_encodings != 0).any(dim=-1)


class EmbeddedImage(NamedTuple):
    """CLIP image outputs.

    Attributes:
        image_embed: (b, dim_latent) l2-normalised projected image embedding.
        image_encodings: (b, n_patches, d) patch encodings, or None when the adapter has none.
    """

    image_embed: Tensor
    image_encodings: Tensor | None


def l2norm(t: Tensor) -> Tensor:
    """Unit-normalises the last dimension."""
    return F.normalize(t, dim=-1)


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bicubic resize of (b, c, h, w) images to `size` = (h', w') (no-op if equal).

    Computed in float32 (bicubic is not implemented for every low-precision dtype) and cast back.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.to(image.dtype)


def pad_or_truncate_tokens(tokens: Tensor, length: int, pad_id: int = 0) -> Tensor:
    """Right-pads (b, n) tokens with `pad_id` or cuts them to (b, length)."""
    n = tokens.shape[-1]
    if n > length:
        return tokens[..., :length]
    if n < length:
        return F.pad(tokens, (0, length - n), value=pad_id)
    return tokens


class BaseClipAdapter(nn.Module):
    """Frozen wrapper around a CLIP model (see the module docstring).

    Subclasses implement the properties and :meth:`embed_text` / :meth:`embed_image`.

    Note on widths: `dim_latent` is the width of the projected (joint) embedding that
    `embed_text`/`embed_image` return; `text_encodings_dim` is the width of the per-token encodings.
    The reference package reported the text width as `dim_latent` for OpenAI/OpenCLIP models; both
    coincide for ViT-B/32 (512), ViT-L/14 (768) and ViT-H/14 (1024) but not e.g. for RN50
    (embed 1024, text width 512).

    Args:
        clip: the wrapped model (stored as `self.clip`).
        tokenizer: callable mapping a list of strings to a (b, n) LongTensor (or nested int lists).
        **overrides: adapter-specific overrides (see subclasses).
    """

    def __init__(self, clip: nn.Module, tokenizer: Callable | None = None, **overrides) -> None:
        super().__init__()
        self.clip = clip
        self.overrides = dict(overrides)
        # plain attribute: a tokenizer is not a module and must not add state-dict keys
        self._tokenizer = tokenizer
        self.requires_grad_(False)
        super().train(False)

    # ------------------------------------------------------------------ frozen behaviour
    def train(self, mode: bool = True) -> "BaseClipAdapter":
        """Always stays in eval mode: the CLIP is frozen (dropout/patch-dropout must stay off)."""
        return super().train(False)

    def clear(self) -> None:
        """No-op kept for reference API compatibility (its OpenAI adapter removed a forward hook)."""

    # ------------------------------------------------------------------ interface
    @property
    def dim_latent(self) -> int:
        """Width of the projected, l2-normalised text/image embeddings."""
        raise NotImplementedError

    @property
    def text_encodings_dim(self) -> int:
        """Width d of the per-token text encodings (b, n, d)."""
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        """Side length of the CLIP image input."""
        raise NotImplementedError

    @property
    def image_channels(self) -> int:
        raise NotImplementedError

    @property
    def max_text_len(self) -> int:
        """Token sequence length the text encoder accepts; longer inputs are truncated."""
        raise NotImplementedError

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) the images are resized to; square `image_size` by default."""
        return (self.image_size, self.image_size)

    @property
    def device(self) -> torch.device:
        for p in self.clip.parameters():
            return p.device
        return torch.device("cpu")

    def embed_text(self, tokens: Tensor) -> EmbeddedText:
        """(b, n) token ids -> :class:`EmbeddedText`."""
        raise NotImplementedError

    def embed_image(self, images: Tensor) -> EmbeddedImage:
        """(b, c, h, w) images in [0, 1] -> :class:`EmbeddedImage`."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers
    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Tokenises text with this CLIP's tokenizer.

        Args:
            texts: a string or a list of strings.

        Returns:
            (b, max_text_len) LongTensor on the adapter's device: start-of-text, BPE ids,
            end-of-text, zero padding (for the BPE tokenizers; a custom tokenizer's output is padded
            with 0 or cut to `max_text_len`).
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"tokenize expects a string or a list of strings, got {type(texts).__name__}")
        if self._tokenizer is None:
            raise ValueError(f"{type(self).__name__} has no tokenizer; pass `tokenizer=` when building it")
        tokens = self._tokenizer(list(texts))
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.ndim != 2 or tokens.shape[0] != len(texts):
            raise ValueError(
                f"the tokenizer returned shape {tuple(tokens.shape)}; expected ({len(texts)}, n)"
            )
        return pad_or_truncate_tokens(tokens, self.max_text_len).to(self.device)

    def _check_tokens(self, tokens: Tensor) -> Tensor:
        """Validates (b, n) integer tokens, moves them to the model and cuts them to max_text_len."""
        if not torch.is_tensor(tokens):
            raise TypeError(
                f"embed_text expects a (batch, seq) tensor of token ids, got {type(tokens).__name__}; "
                "use adapter.tokenize(texts) to turn strings into tokens"
            )
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
            raise TypeError(f"token ids must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.ndim != 2:
            raise ValueError(f"token ids must have shape (batch, seq), got {tuple(tokens.shape)}")
        if tokens.numel() and int(tokens.min()) < 0:
            raise ValueError("token ids must be non-negative")
        return tokens[:, : self.max_text_len].long().to(self.device)

    def validate_and_resize_image(self, image: Tensor) -> Tensor:
        """Checks (b, c, h, w) images and resizes them to the CLIP input size.

        Images smaller than the CLIP input (in either side) are refused: upsampling would feed CLIP
        blurry inputs silently. Larger or non-square images are resized (antialiased bicubic) to
        `image_hw` (non-square images are squashed, not cropped).

        Raises:
            TypeError: not a floating-point tensor.
            ValueError: wrong rank, wrong channel count or too small.
        """
        if not torch.is_tensor(image):
            raise TypeError(f"images must be a tensor, got {type(image).__name__}")
        if not image.dtype.is_floating_point:
            raise TypeError(f"images must be floating point in [0, 1], got dtype {image.dtype}")
        if image.ndim != 4:
            raise ValueError(f"images must have shape (batch, channels, height, width), got {tuple(image.shape)}")
        channels, height, width = image.shape[1:]
        if channels != self.image_channels:
            raise ValueError(
                f"images have {channels} channels but this CLIP expects {self.image_channels}"
            )
        target_h, target_w = self.image_hw
        if height < target_h or width < target_w:
            raise ValueError(
                f"images of size {height}x{width} are smaller than the CLIP input size "
                f"{target_h}x{target_w}; pass images at least that large"
            )
        return resize_image(image, (target_h, target_w))
