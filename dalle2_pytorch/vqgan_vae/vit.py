"""Vision-transformer encoder/decoder of the VQGAN-VAE (`vae_type='vit'`): ViT-VQGAN (Yu et al.
2022, "Vector-quantized Image Modeling with Improved VQGAN", §3.1).

The image is cut into patch_size × patch_size patches (flattened in (row, column, channel) order),
projected to `dim`, run through a pre-norm transformer and returned as a (b, dim, s/p, s/p) map;
the decoder runs a second transformer and maps every token back to its patch through a
Linear → tanh → Linear head (ViT-VQGAN's decoder output, §3.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "FeedForward", "RearrangeImage", "Transformer", "ViTEncDec"]


class Attention(nn.Module):
    """Pre-norm multi-head self-attention over (b, n, dim) tokens (no residual)."""

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(self.norm(x)).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def FeedForward(dim: int, mult: int = 4) -> nn.Sequential:  # noqa: N802 (reference name)
    """Pre-norm MLP: LayerNorm → Linear(dim, mult·dim) → GELU → Linear(mult·dim, dim), no biases."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class Transformer(nn.Module):
    """`layers` × (x + attn(x), x + ff(x)), then a final LayerNorm; (b, n, dim) → same."""

    def __init__(self, dim: int, *, layers: int, dim_head: int = 32, heads: int = 8, ff_mult: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, dim_head=dim_head, heads=heads), FeedForward(dim, mult=ff_mult)])
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class _Patchify(nn.Module):
    """(b, c, h·p, w·p) → (b, h·w, p·p·c), patch pixels in (row, column, channel) order."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.p = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hp, wp = x.shape
        p = self.p
        if hp % p or wp % p:
            raise ValueError(f"image size {hp}x{wp} is not divisible by the patch size {p}")
        x = x.reshape(b, c, hp // p, p, wp // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (hp // p) * (wp // p), p * p * c)


class _Unpatchify(nn.Module):
    """(b, h, w, p·p·c) → (b, c, h·p, w·p), inverse of :class:`_Patchify`."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.p = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        p = self.p
        c = d // (p * p)
        return x.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h * p, w * p)


class RearrangeImage(nn.Module):
    """(b, n, ...) → (b, s, s, ...) with s = √n (square maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"expected a square number of tokens, got {n}")
        return x.reshape(x.shape[0], side, side, *x.shape[2:])


class _ChannelsFirst(nn.Module):
    """(b, h, w, c) → (b, c, h, w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class _Tokens(nn.Module):
    """(b, c, h, w) → (b, h·w, c)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class ViTEncDec(nn.Module):
    """Transformer encoder (`encoder`) and decoder (`decoder`).

    Args:
        dim: token width = latent channels.
        channels: image channels.
        layers: transformer layers of the encoder and of the decoder.
        patch_size: side of a patch (the latent map is image_size / patch_size on a side).
        dim_head, heads, ff_mult: transformer shape.
    """

    def __init__(
        self,
        dim: int,
        channels: int = 3,
        layers: int = 4,
        patch_size: int = 8,
        dim_head: int = 32,
        heads: int = 8,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.encoded_dim = dim
        self.patch_size = patch_size
        patch_dim = channels * patch_size**2
        block = dict(dim_head=dim_head, heads=heads, ff_mult=ff_mult, layers=layers)
        self.encoder = nn.Sequential(
            _Patchify(patch_size),
            nn.Linear(patch_dim, dim),
            Transformer(dim, **block),
            RearrangeImage(),
            _ChannelsFirst(),
        )
        self.decoder = nn.Sequential(
            _Tokens(),
            Transformer(dim, **block),
            nn.Sequential(nn.Linear(dim, dim * 4, bias=False), nn.Tanh(), nn.Linear(dim * 4, patch_dim, bias=False)),
            RearrangeImage(),
            _Unpatchify(patch_size),
        )

    def get_encoded_fmap_size(self, image_size: int) -> int:
        return image_size // self.patch_size

    @property
    def last_dec_layer(self) -> torch.Tensor:
        """Weight of the last linear layer of the decoder head (for the adaptive GAN weight)."""
        return self.decoder[2][-1].weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(b, channels, s, s) → (b, dim, s/p, s/p)."""
        return self.encoder(x)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """(b, dim, f, f) → (b, channels, f·p, f·p)."""
        return self.decoder(x)
