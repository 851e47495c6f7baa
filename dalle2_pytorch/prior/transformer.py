"""The prior's causal transformer: T5 relative-position bias, multi-query attention, SwiGLU FF.

Two attention variants reproduce the two reference generations (see `CausalTransformer.layout`):

* "1.15.6": cosine-similarity attention (Henry et al. 2020, "Query-Key Normalization for
  Transformers"), logits = 16·cos(q, k) + bias.
* "1.1.0": dot-product attention, logits = q·k/√dim_head + 128·bias. The 1.1.0 code divided the
  dot products by 128 before adding the bias and multiplied by 128 after the max subtraction
  ("PB-Relax", Ding et al. 2021, CogView §4.1), which multiplies the stored bias by 128.

Keys and values are one head shared by all query heads (multi-query attention, Shazeer 2019) with
one learned null key/value prepended at key position 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from dalle2_pytorch.layers.feedforward import FeedForward
from dalle2_pytorch.layers.normalization import LayerNorm
from dalle2_pytorch.layers.rotary import RotaryEmbedding

__all__ = ["Attention", "CausalTransformer", "RelPosBias", "LAYOUTS"]

LAYOUTS = ("1.1.0", "1.15.6")
_COSINE_SIM_SCALE = 16.0
_PB_RELAX_ALPHA = 128.0


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    return layout


class RelPosBias(nn.Module):
    """Unidirectional T5 relative-position bias (Raffel et al. 2020, §2.1), one value per head.

    Distance n = max(q_pos - k_pos, 0): exact buckets for n < num_buckets/2, then logarithmic up to
    `max_distance`, capped at num_buckets - 1. Keys: `relative_attention_bias.weight`
    (num_buckets, heads).
    """

    def __init__(self, heads: int = 8, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        """Bucket index (long) for relative positions k_pos - q_pos."""
        n = (-relative_position).clamp(min=0)
        max_exact = self.num_buckets // 2
        large = n.clamp(min=max_exact).float()
        val_if_large = max_exact + (
            torch.log(large / max_exact) / math.log(self.max_distance / max_exact) * (self.num_buckets - max_exact)
        ).long()
        val_if_large = val_if_large.clamp(max=self.num_buckets - 1)
        return torch.where(n < max_exact, n, val_if_large)

    def forward(self, i: int, j: int, device: torch.device | None = None) -> torch.Tensor:
        """Bias (heads, i, j) for queries at positions 0..i-1 and keys at 0..j-1.

        The prior calls it with j = i + 1 (key 0 is the null key), so real token m sits at key index
        m + 1: the reference's off-by-one, kept so its weights mean the same thing.
        """
        q_pos = torch.arange(i, dtype=torch.long, device=device)
        k_pos = torch.arange(j, dtype=torch.long, device=device)
        buckets = self.bucket(k_pos[None, :] - q_pos[:, None])
        return self.relative_attention_bias(buckets).permute(2, 0, 1)


class Attention(nn.Module):
    """Pre-norm causal multi-query self-attention with a null key/value.

    Keys: `null_kv` (2, dim_head), `norm.g`, `to_q.weight` (heads·dim_head, dim),
    `to_kv.weight` (2·dim_head, dim), `rotary_emb.freqs` (if rotary), `to_out.0.weight`,
    `to_out.1.g`.

    Args:
        dim: model width.
        dim_head: width of each head.
        heads: number of query heads.
        dropout: dropout on the attention probabilities (training only).
        rotary_emb: shared rotary module or None.
        layout: "1.15.6" (cosine-sim attention) or "1.1.0" (dot product + 128× bias).
    """

    def __init__(
        self,
        dim: int,
        *,
        dim_head: int = 64,
        heads: int = 8,
        dropout: float = 0.0,
        rotary_emb: RotaryEmbedding | None = None,
        layout: str = "1.15.6",
    ):
        super().__init__()
        self.layout = check_layout(layout)
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        self.norm = LayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.rotary_emb = rotary_emb
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False), LayerNorm(dim))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """x: (b, n, dim); attn_bias: (heads, n, n+1) additive float logits (rel-pos bias with the
        causal mask already applied as -inf). Returns (b, n, dim)."""
        b, n, _ = x.shape
        h, dh = self.heads, self.dim_head
        x = self.norm(x)
        q = self.to_q(x).view(b, n, h, dh).transpose(1, 2)  # (b, h, n, dh)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # (b, n, dh) each

        if self.rotary_emb is not None:
            angles = self.rotary_emb.angles(n, x.device)
            q = self.rotary_emb.rotate(q, angles)
            k = self.rotary_emb.rotate(k, angles)

        null_k, null_v = self.null_kv.to(x.dtype).unbind(dim=0)
        k = torch.cat((null_k.expand(b, 1, dh), k), dim=1)  # (b, n+1, dh)
        v = torch.cat((null_v.expand(b, 1, dh), v), dim=1)

        if self.layout == "1.15.6":
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            scale = _COSINE_SIM_SCALE
        else:
            scale = dh**-0.5

        # Multi-query attention as a single-head problem: fold the heads into the query axis.
        q = q.reshape(b, 1, h * n, dh)
        mask = attn_bias.to(q.dtype).reshape(1, 1, h * n, n + 1)
        out = F.scaled_dot_product_attention(
            q,
            k.unsqueeze(1),
            v.unsqueeze(1),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            scale=scale,
        )  # (b, 1, h·n, dh)
        out = out.view(b, h, n, dh).transpose(1, 2).reshape(b, n, h * dh)
        return self.to_out(out)


class CausalTransformer(nn.Module):
    """Stack of (attention, feed-forward) residual layers with causal masking.

    Keys: `init_norm.g` (norm_in), `rel_pos_bias.relative_attention_bias.weight`,
    `layers.L.0.*` (Attention), `layers.L.1.{0.g,1.weight,3.g,5.weight}` (FeedForward),
    `norm.g` (norm_out), `project_out.weight` (final_proj).

    Args:
        dim: model width.
        depth: number of layers.
        dim_head, heads: attention shape (queries; keys/values are one shared head).
        ff_mult: feed-forward inner width multiplier.
        norm_in: LayerNorm on the input tokens.
        norm_out: final "stable" LayerNorm.
        attn_dropout, ff_dropout: dropout probabilities.
        final_proj: final bias-free Linear(dim, dim).
        normformer: LayerNorm after the feed-forward activation.
        rotary_emb: rotary positions on the first min(32, dim_head) features of q and k.
        layout: "1.15.6" or "1.1.0" attention maths (see module docstring).
    """

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: int = 4,
        norm_in: bool = False,
        norm_out: bool = True,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        final_proj: bool = True,
        normformer: bool = False,
        rotary_emb: bool = True,
        layout: str = "1.15.6",
    ):
        super().__init__()
        self.layout = check_layout(layout)
        self.init_norm = LayerNorm(dim) if norm_in else nn.Identity()
        self.rel_pos_bias = RelPosBias(heads=heads)
        rotary = RotaryEmbedding(min(32, dim_head)) if rotary_emb else None
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Attention(
                        dim, dim_head=dim_head, heads=heads, dropout=attn_dropout, rotary_emb=rotary, layout=layout
                    ),
                    FeedForward(dim, mult=ff_mult, dropout=ff_dropout, post_activation_norm=normformer),
                ]
            )
            for _ in range(depth)
        )
        self.norm = LayerNorm(dim, stable=True) if norm_out else nn.Identity()
        self.project_out = nn.Linear(dim, dim, bias=False) if final_proj else nn.Identity()

    def attention_bias(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Additive logits (heads, n, n+1): relative-position bias, -inf where causally masked."""
        bias = self.rel_pos_bias(n, n + 1, device=device).float()
        if self.layout == "1.1.0":
            bias = bias * _PB_RELAX_ALPHA
        # query m sees the null key (index 0) and real tokens 0..m (indices 1..m+1)
        causal = torch.ones(n, n + 1, dtype=torch.bool, device=device).triu(2)
        return bias.masked_fill(causal, float("-inf")).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, n, dim) -> (b, n, dim)."""
        n = x.shape[1]
        x = self.init_norm(x)
        bias = self.attention_bias(n, x.device, x.dtype)
        for attn, ff in self.layers:
            x = attn(x, bias) + x
            x = ff(x) + x
        return self.project_out(self.norm(x))
