"""Attention modules of the decoder Unet: self-attention, cross-attention and linear attention.

All softmax attentions prepend one learned null key/value (so a query may attend to "nothing") and
run through `F.scaled_dot_product_attention` with an explicit `scale`.

* :class:`SelfAttention`: multi-query attention (Shazeer 2019, "Fast Transformer Decoding"): one
  key/value head shared by every query head. Layout "1.15.6" scales logits by 1/dim_head (the
  reference scales q and k twice; trained weights depend on it), layout "1.1.0" by 1/√dim_head.
* :class:`CrossAttention`: per-head keys/values from conditioning tokens (Rombach et al. 2022,
  "High-Resolution Image Synthesis with Latent Diffusion Models", §3.3), 8 heads × 64, logits
  scaled by 1/√64 in both layouts.
* :class:`LinearAttention`: "efficient attention" (Shen et al. 2021, "Efficient Attention:
  Attention with Linear Complexities", eq. 4): softmax over features for q, over positions for k,
  context = kᵀv. Layout "1.15.6" also l2-normalises v and divides k and v by √(h·w).

With `cosine_sim=True` q and k (null key included) are l2-normalised and the logits are
16·cos(q, k) (Henry et al. 2020, "Query-Key Normalization for Transformers").

The wrappers :class:`Residual` and :class:`ToSequence` exist so that parameter names match the
reference state dict (`...fn.fn.*` for self-attention, `...fn.*` for linear attention).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from dalle2_pytorch.layers.normalization import ChanLayerNorm, LayerNorm

__all__ = [
    "LAYOUTS",
    "CrossAttention",
    "LinearAttention",
    "Residual",
    "SelfAttention",
    "ToSequence",
    "check_layout",
]

LAYOUTS = ("1.1.0", "1.15.6")
COSINE_SIM_SCALE = 16.0


def check_layout(layout: str) -> str:
    """Returns `layout` if it is a supported reference generation, else raises ValueError."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return layout


class Residual(nn.Module):
    """x + fn(x). Keys: `fn.*`."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class ToSequence(nn.Module):
    """Applies a token module to a feature map: (b, c, h, w) -> (b, h·w, c) -> fn -> (b, c, h, w)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)
        out = self.fn(seq)
        return out.transpose(1, 2).reshape(b, -1, h, w)


def _prepend_null(null: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Prepends `null` (d,) as position 0 of x (b, h, n, d) for every batch row and head."""
    b, h, _, d = x.shape
    return torch.cat((null.to(x.dtype).expand(b, h, 1, d), x), dim=2)


class SelfAttention(nn.Module):
    """Pre-norm multi-query self-attention over tokens with a learned null key/value.

    Keys: `null_kv` (2, dim_head), `norm.g` (dim), `to_q.weight` (heads·dim_head, dim),
    `to_kv.weight` (2·dim_head, dim), `to_out.0.weight` (dim, heads·dim_head), `to_out.1.g` (dim).

    Args:
        dim: token width.
        dim_head: width of each head.
        heads: number of query heads (keys/values are one shared head).
        cosine_sim: cosine-similarity logits (scale 16).
        layout: "1.15.6" (logits · 1/dim_head) or "1.1.0" (logits · 1/√dim_head).
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_head: int = 32,
        heads: int = 16,
        cosine_sim: bool = False,
        layout: str = "1.15.6",
    ):
        super().__init__()
        self.layout = check_layout(layout)
        self.heads = heads
        self.dim_head = dim_head
        self.cosine_sim = cosine_sim
        if cosine_sim:
            self.scale = COSINE_SIM_SCALE
        elif layout == "1.15.6":
            self.scale = dim_head**-1.0  # the reference's double scaling, kept for its weights
        else:
            self.scale = dim_head**-0.5
        self.norm = LayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False), LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, n, dim) -> (b, n, dim)."""
        b, n, _ = x.shape
        h, dh = self.heads, self.dim_head
        x = self.norm(x)
        q = self.to_q(x).view(b, n, h, dh).transpose(1, 2)  # (b, h, n, dh)
        k, v = self.to_kv(x).unsqueeze(1).chunk(2, dim=-1)  # (b, 1, n, dh) each
        null_k, null_v = self.null_kv.unbind(dim=0)
        k, v = _prepend_null(null_k, k), _prepend_null(null_v, v)  # (b, 1, n+1, dh)
        if self.cosine_sim:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        out = F.scaled_dot_product_attention(
            q, k.expand(b, h, n + 1, dh), v.expand(b, h, n + 1, dh), scale=self.scale
        )
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * dh))


class CrossAttention(nn.Module):
    """Pre-norm cross-attention from tokens x to conditioning tokens, with a null key/value.

    The context is not normalised. Keys: `null_kv` (2, dim_head), `norm.g` (dim),
    `to_q.weight` (heads·dim_head, dim), `to_kv.weight` (2·heads·dim_head, context_dim),
    `to_out.0.weight` (dim, heads·dim_head), `to_out.1.g` (dim).

    Args:
        dim: query token width.
        context_dim: conditioning token width.
        dim_head, heads: fixed at 64 × 8 by the Unet (as in the reference).
        cosine_sim: cosine-similarity logits (scale 16) instead of 1/√dim_head.
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int,
        dim_head: int = 64,
        heads: int = 8,
        cosine_sim: bool = False,
    ):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.cosine_sim = cosine_sim
        self.scale = COSINE_SIM_SCALE if cosine_sim else dim_head**-0.5
        inner = heads * dim_head
        self.norm = LayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), LayerNorm(dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x: (b, n, dim), context: (b, m, context_dim) -> (b, n, dim)."""
        b, n, _ = x.shape
        m = context.shape[1]
        h, dh = self.heads, self.dim_head
        x = self.norm(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        k = k.reshape(b, m, h, dh).transpose(1, 2)  # (b, h, m, dh)
        v = v.reshape(b, m, h, dh).transpose(1, 2)
        null_k, null_v = self.null_kv.unbind(dim=0)
        k, v = _prepend_null(null_k, k), _prepend_null(null_v, v)  # (b, h, m+1, dh)
        if not self.cosine_sim and m + 1 < dh:
            return self.to_out[1](self._folded(x, k, v))
        q = self.to_q(x).view(b, n, h, dh).transpose(1, 2)  # (b, h, n, dh)
        if self.cosine_sim:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * dh))

    def _folded(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention with the q and output projections folded into the few keys/values.

        x: (b, n, dim) normed queries' tokens; k, v: (b, h, j, dh) -> (b, n, dim) before the output norm.

        With per-head projections W_q,h (dh, dim) and W_o,h (dim, dh), the logits are
        x·(W_q,hᵀ k_j) and the projected output Σ_h Σ_j p_hj (W_o,h v_j). When the context is
        short (j < dh) the folded keys W_q,hᵀ k_j and values W_o,h v_j (dim wide, h·j of them) are
        cheaper per token than the dh·h wide q and attention output; the result is the same up to
        floating-point reassociation.
        """
        b, n, dim = x.shape
        h, dh, j = self.heads, self.dim_head, k.shape[2]
        w_q = self.to_q.weight.view(h, dh, dim)
        w_o = self.to_out[0].weight.view(dim, h, dh)
        keys = torch.einsum("hdc,bhjd->bchj", w_q, k * self.scale).reshape(b, dim, h * j)
        values = torch.einsum("chd,bhjd->bhjc", w_o, v).reshape(b, h * j, dim)
        probs = (x @ keys).view(b, n, h, j).softmax(dim=-1)  # (b, n, h, j)
        return probs.view(b, n, h * j) @ values



class LinearAttention(nn.Module):
    """Linear-complexity attention on a feature map (used by `sparse_attn` stages, inside Residual).

    Keys: `norm.g` (1, dim, 1, 1), `to_qkv.weight` (3·heads·dim_head, dim, 1, 1),
    `to_out.0.weight` (dim, heads·dim_head, 1, 1), `to_out.1.g` (1, dim, 1, 1).

    Args:
        dim: channels.
        dim_head, heads: attention shape.
        layout: "1.15.6" (l2-normalised v; k and v divided by √(h·w)) or "1.1.0" (neither).
    """

    def __init__(self, dim: int, *, dim_head: int = 32, heads: int = 8, layout: str = "1.15.6"):
        super().__init__()
        self.layout = check_layout(layout)
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.norm = ChanLayerNorm(dim)
        self.to_qkv = nn.Conv2d(dim, 3 * inner, 1, bias=False)
        self.nonlin = nn.GELU()
        self.to_out = nn.Sequential(nn.Conv2d(inner, dim, 1, bias=False), ChanLayerNorm(dim))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """fmap: (b, dim, h, w) -> (b, dim, h, w) (without the residual)."""
        b, _, hh, ww = fmap.shape
        heads, dh = self.heads, self.dim_head
        n = hh * ww
        x = self.norm(fmap)

        def to_heads(t: torch.Tensor) -> torch.Tensor:  # (b, heads·dh, h, w) -> (b·heads, n, dh)
            return t.reshape(b * heads, dh, n).transpose(1, 2)

        q, k, v = map(to_heads, self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-1) * self.scale
        k = k.softmax(dim=-2)
        if self.layout == "1.15.6":
            v = F.normalize(v, dim=-1)
            k = k * n**-0.5
            v = v * n**-0.5
        context = torch.bmm(k.transpose(1, 2), v)  # (b·heads, dh, dh)
        out = torch.bmm(q, context)  # (b·heads, n, dh)
        out = out.transpose(1, 2).reshape(b, heads * dh, hh, ww)
        return self.to_out(self.nonlin(out))
