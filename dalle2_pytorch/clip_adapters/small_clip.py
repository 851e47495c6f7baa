"""A small CLIP built from ``torch.nn`` parts only (the demo's), and its frozen adapter.

Contrastive language-image pre-training (Radford et al. 2021, "Learning Transferable Visual Models
From Natural Language Supervision", sec. 2.3 and fig. 3): a text tower and an image tower, each
followed by a linear projection to a shared latent space; the symmetric cross-entropy over the
batch's cosine-similarity matrix (scaled by a learned temperature) trains both.

* Text tower: word embedding + learned position embedding -> ``nn.TransformerEncoder``
  (pre-norm, GELU, padding masked) -> LayerNorm. The output at the first position (the
  start-of-text token of :class:`~dalle2_pytorch.clip_adapters.WordTokenizer`, which attends to
  every word) is the pooled text feature; the per-token outputs are the text encodings.
* Image tower: a four-layer CNN (two stride-2 convolutions: an ``s/4 x s/4`` feature map) whose
  pooled feature is a linear map of the whole-map mean **and** of a ``grid x grid`` average-pooled
  map, so the image embedding knows *where* the object is (a plain mean pool forgets position:
  "a star in the top left" and "a star in the bottom right" would embed alike).

Why not x-clip: ``import x_clip`` pulls in torchvision's detection ops and ``torch._dynamo``
(about 2.5 s of a 4.3 s ``dream`` call on the 2-core demo machine, see docs/ARCHITECTURE.md);
this module imports only torch. For text -> image, :func:`load_small_clip` can leave the image
tower unbuilt (``image_tower="lazy"``): the adapter builds and loads it on the first
``embed_image`` call.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dalle2_pytorch.clip_adapters.base import BaseClipAdapter, EmbeddedImage, EmbeddedText, l2norm

__all__ = ["DEFAULT_SMALL_CLIP_KWARGS", "ImageTower", "SmallCLIP", "SmallClipAdapter", "TextTower"]

#: Constructor arguments of the demo's CLIP (``num_text_tokens`` / ``text_seq_len`` come from the tokenizer).
DEFAULT_SMALL_CLIP_KWARGS: dict = dict(
    dim_text=64, text_depth=2, text_heads=4, dim_image=64, image_size=32, image_widths=(32, 64),
    image_grid=4, dim_latent=64,
)
_INIT_LOG_TEMPERATURE = math.log(10.0)
_MAX_LOG_TEMPERATURE = math.log(100.0)  # clamp as in CLIP


class TextTower(nn.Module):
    """(b, n) token ids -> (b, n, dim) encodings (pre-norm transformer encoder, padding masked).

    Args:
        num_tokens: vocabulary size (ids ``0 .. num_tokens - 1``; ``pad_id`` is padding).
        context_length: longest token sequence (learned position embeddings).
        dim, depth, heads: transformer width, layers and attention heads (``dim % heads == 0``).
        ff_mult: feed-forward width multiplier.
        pad_id: the padding id (masked out as attention keys).
    """

    def __init__(self, num_tokens: int, context_length: int, dim: int, depth: int, heads: int,
                 ff_mult: int = 4, pad_id: int = 0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"the text width {dim} must be divisible by the number of heads {heads}")
        self.pad_id, self.context_length = int(pad_id), int(context_length)
        self.token_emb = nn.Embedding(num_tokens, dim)
        self.pos_emb = nn.Embedding(context_length, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * ff_mult, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """(b, n) ids, n <= context_length -> (b, n, dim)."""
        n = tokens.shape[1]
        if n > self.context_length:
            raise ValueError(f"{n} tokens exceed the text tower's context length {self.context_length}")
        x = self.token_emb(tokens) + self.pos_emb.weight[:n]
        x = self.encoder(x, src_key_padding_mask=tokens == self.pad_id)
        return self.norm(x)


class ImageTower(nn.Module):
    """(b, c, s, s) images in [0, 1] -> pooled feature (b, dim) and cell tokens (b, (s/4)^2, dim).

    Four 3x3 convolutions (GroupNorm of 8, GELU), the second and fourth with stride 2. Pooled
    feature: a linear map of the concatenated whole-map mean and ``grid x grid`` average pool.
    """

    def __init__(self, dim: int, image_size: int, channels: int = 3, widths: Sequence[int] = (32, 64),
                 grid: int = 4) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        if len(widths) != 2 or any(int(w) % 8 for w in (*widths, dim)):
            raise ValueError(f"need two widths and a dim divisible by 8 (GroupNorm of 8), got {list(widths)}, {dim}")
        if not 1 <= grid <= image_size // 4:
            raise ValueError(f"grid must be in [1, image_size / 4 = {image_size // 4}], got {grid}")
        w1, w2 = (int(w) for w in widths)
        self.image_size, self.channels, self.grid = int(image_size), int(channels), int(grid)
        self.net = nn.Sequential(
            nn.Conv2d(channels, w1, 3, padding=1), nn.GroupNorm(8, w1), nn.GELU(),
            nn.Conv2d(w1, w2, 3, stride=2, padding=1), nn.GroupNorm(8, w2), nn.GELU(),
            nn.Conv2d(w2, w2, 3, padding=1), nn.GroupNorm(8, w2), nn.GELU(),
            nn.Conv2d(w2, dim, 3, stride=2, padding=1), nn.GroupNorm(8, dim), nn.GELU(),
        )
        self.to_pooled = nn.Linear(dim * (1 + grid * grid), dim)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.net(images)  # (b, dim, s/4, s/4)
        where = F.adaptive_avg_pool2d(features, self.grid).flatten(1)  # (b, dim * grid^2)
        pooled = self.to_pooled(torch.cat((features.mean(dim=(2, 3)), where), dim=-1))
        return pooled, features.flatten(2).transpose(1, 2)


class SmallCLIP(nn.Module):
    """Text tower + image tower + projections + temperature (see the module docstring).

    Args:
        num_text_tokens, text_seq_len: vocabulary size and context length of the tokenizer.
        dim_text, text_depth, text_heads: text transformer.
        dim_image, image_size, image_channels, image_widths, image_grid: image CNN (see ``ImageTower``).
        dim_latent: width of the joint embedding.
        pad_id: padding token id.
        image_tower: False leaves the image tower out (text embedding only; attach one later with
            :meth:`attach_image_tower`).
    """

    def __init__(self, *, num_text_tokens: int, text_seq_len: int, dim_text: int = 64, text_depth: int = 2,
                 text_heads: int = 4, dim_image: int = 64, image_size: int = 32, image_channels: int = 3,
                 image_widths: Sequence[int] = (32, 64), image_grid: int = 4, dim_latent: int = 64,
                 pad_id: int = 0, image_tower: bool = True) -> None:
        super().__init__()
        self.dim_text, self.dim_image, self.dim_latent = int(dim_text), int(dim_image), int(dim_latent)
        self.text_seq_len, self.image_size, self.image_channels = int(text_seq_len), int(image_size), int(image_channels)
        self.pad_id = int(pad_id)
        self._image_args = dict(dim=dim_image, image_size=image_size, channels=image_channels, widths=tuple(image_widths),
                                grid=image_grid)
        self.text_tower = TextTower(num_text_tokens, text_seq_len, dim_text, text_depth, text_heads, pad_id=pad_id)
        self.to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)
        self.image_tower = ImageTower(**self._image_args) if image_tower else None
        self.to_image_latent = nn.Linear(dim_image, dim_latent, bias=False)
        self.temperature = nn.Parameter(torch.tensor(_INIT_LOG_TEMPERATURE))

    def build_image_tower(self) -> ImageTower:
        """A fresh (randomly initialised) image tower of this CLIP's configuration (not attached)."""
        return ImageTower(**self._image_args)

    def attach_image_tower(self, tower: ImageTower) -> None:
        self.image_tower = tower

    def encode_text(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(b, n) ids -> (l2-normalised text latents (b, dim_latent), encodings (b, n, dim_text))."""
        encoded = self.text_tower(tokens)
        return l2norm(self.to_text_latent(encoded[:, 0])), encoded

    def encode_image(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(b, c, s, s) in [0, 1] at ``image_size`` -> (l2-normalised latents (b, dim_latent), cell tokens)."""
        if self.image_tower is None:
            raise RuntimeError("this SmallCLIP was built without its image tower (image_tower=False)")
        pooled, tokens = self.image_tower(images)
        return l2norm(self.to_image_latent(pooled)), tokens

    def forward(self, tokens: Tensor, images: Tensor) -> Tensor:
        """Symmetric contrastive loss of b matching (text, image) pairs (CLIP, fig. 3)."""
        text, _ = self.encode_text(tokens)
        image, _ = self.encode_image(images)
        logits = text @ image.T * self.temperature.clamp(max=_MAX_LOG_TEMPERATURE).exp()
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class SmallClipAdapter(BaseClipAdapter):
    """Frozen adapter around a :class:`SmallCLIP` with its word tokenizer.

    Args:
        clip: the model.
        tokenizer: ``list[str] -> (b, n)`` ids (a ``WordTokenizer`` matching ``num_text_tokens``).
        image_tower_loader: called once, on the first ``embed_image``, when ``clip`` has no image
            tower (see :func:`~dalle2_pytorch.clip_adapters.small_clip_folder.load_small_clip`).
    """

    def __init__(self, clip: SmallCLIP, tokenizer: Callable, *,
                 image_tower_loader: Callable[[], ImageTower] | None = None) -> None:
        if not isinstance(clip, SmallCLIP):
            raise TypeError(f"SmallClipAdapter wraps a SmallCLIP, got {type(clip).__name__}")
        super().__init__(clip, tokenizer=tokenizer)
        self._image_tower_loader = image_tower_loader

    @property
    def dim_latent(self) -> int:
        return self.clip.dim_latent

    @property
    def text_encodings_dim(self) -> int:
        return self.clip.dim_text

    @property
    def image_size(self) -> int:
        return self.clip.image_size

    @property
    def image_channels(self) -> int:
        return self.clip.image_channels

    @property
    def max_text_len(self) -> int:
        return self.clip.text_seq_len

    @property
    def has_image_tower(self) -> bool:
        """Whether the image tower is built (it is built on the first ``embed_image`` otherwise)."""
        return self.clip.image_tower is not None

    @torch.no_grad()
    def embed_text(self, tokens: Tensor) -> EmbeddedText:
        """(b, n) ids -> text_embed (b, dim_latent), text_encodings (b, n, dim_text) zeroed at padding."""
        tokens = self._check_tokens(tokens)
        vocab = self.clip.text_tower.token_emb.num_embeddings
        if tokens.numel() and int(tokens.max()) >= vocab:
            raise ValueError(f"token id {int(tokens.max())} is outside this CLIP's vocabulary of {vocab} tokens")
        text_embed, encoded = self.clip.encode_text(tokens)
        return EmbeddedText(text_embed, encoded.masked_fill((tokens == self.clip.pad_id)[..., None], 0.0))

    @torch.no_grad()
    def embed_image(self, images: Tensor) -> EmbeddedImage:
        """(b, c, h, w) in [0, 1] -> image_embed (b, dim_latent), image_encodings (b, cells, dim_image)."""
        if self.clip.image_tower is None:
            if self._image_tower_loader is None:
                raise ValueError("this CLIP adapter has no image tower (loaded for text only)")
            tower = self._image_tower_loader().to(self.device)
            tower.requires_grad_(False).eval()
            self.clip.attach_image_tower(tower)
        images = self.validate_and_resize_image(images)
        param = next(self.clip.image_tower.parameters())
        return EmbeddedImage(*self.clip.encode_image(images.to(device=param.device, dtype=param.dtype)))
