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
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dalle2_pytorch.layers.feedforward import FeedForward
from dalle2_pytorch.layers.normalization import LayerNorm
from dalle2_pytorch.layers.rotary import RotaryEmbedding

__all__ = ["Attention", "CausalTransformer", "RelPosBias", "TransformerPrefixCache", "LAYOUTS"]

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

    def project(
        self, x: torch.Tensor, offset: int = 0, last_query_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of tokens at positions offset..offset+n-1 (no null slot).

        x: (b, n, dim). Returns q (b, heads, n_q, dim_head) with n_q = 1 if `last_query_only`
        else n, and k, v (b, n, dim_head); rotary applied, and (layout "1.15.6") q and k l2-normalised.
        """
        b, n, _ = x.shape
        h, dh = self.heads, self.dim_head
        x = self.norm(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # (b, n, dh) each
        xq = x[:, -1:] if last_query_only else x
        q = self.to_q(xq).view(b, xq.shape[1], h, dh).transpose(1, 2)  # (b, h, n_q, dh)

        if self.rotary_emb is not None:
            angles = self.rotary_emb.angles(offset + n, x.device)[offset:]
            q = self.rotary_emb.rotate(q, angles[n - q.shape[2] :])
            k = self.rotary_emb.rotate(k, angles)

        if self.layout == "1.15.6":
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return q, k, v

    def null_key_value(self, b: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned null key/value (b, 1, dim_head) each, normalised like the keys."""
        null_k, null_v = self.null_kv.to(dtype).unbind(dim=0)
        if self.layout == "1.15.6":
            null_k = F.normalize(null_k, dim=-1)
        dh = self.dim_head
        return null_k.expand(b, 1, dh), null_v.expand(b, 1, dh)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        """q (b, heads, s, dh); k, v (b, j, dh) including the null slot; attn_bias (heads, s, j).

        Returns the projected output (b, s, dim).
        """
        b, h, s, dh = q.shape
        j = k.shape[1]
        scale = _COSINE_SIM_SCALE if self.layout == "1.15.6" else dh**-0.5
        # Multi-query attention as a single-head problem: fold the heads into the query axis.
        out = F.scaled_dot_product_attention(
            q.reshape(b, 1, h * s, dh),
            k.unsqueeze(1),
            v.unsqueeze(1),
            attn_mask=attn_bias.to(q.dtype).reshape(1, 1, h * s, j),
            dropout_p=self.dropout if self.training else 0.0,
            scale=scale,
        )  # (b, 1, h·s, dh)
        return self.to_out(out.view(b, h, s, dh).transpose(1, 2).reshape(b, s, h * dh))

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor, *, last_query_only: bool = False) -> torch.Tensor:
        """x: (b, n, dim); attn_bias: (heads, n, n+1) additive float logits (rel-pos bias with the
        causal mask already applied as -inf). Returns (b, n, dim), or (b, 1, dim) for the last
        token only if `last_query_only` (keys/values still come from all n tokens)."""
        b = x.shape[0]
        q, k, v = self.project(x, last_query_only=last_query_only)
        null_k, null_v = self.null_key_value(b, k.dtype)
        k = torch.cat((null_k, k), dim=1)  # (b, n+1, dh)
        v = torch.cat((null_v, v), dim=1)
        if last_query_only:
            attn_bias = attn_bias[:, -1:]
        return self.attend(q, k, v, attn_bias)


def _layer(attn: Attention, ff: nn.Module, x: torch.Tensor, bias: torch.Tensor, last_query_only: bool) -> torch.Tensor:
    """One residual (attention, feed-forward) layer; (b, n, dim) -> (b, n, dim), or (b, 1, dim) for
    the last token only."""
    if last_query_only:
        x = attn(x, bias, last_query_only=True) + x[:, -1:]
    else:
        x = attn(x, bias) + x
    return ff(x) + x


@dataclass
class TransformerPrefixCache:
    """Per-layer keys/values of a fixed causal prefix (see :meth:`CausalTransformer.build_prefix`).

    Attributes:
        keys, values: one (bp, 1 + P, dim_head) tensor per layer, null slot first.
        attn_bias: (heads, N, N + 1) bias of the full sequence of N tokens.
        prefix_len: P, the number of prefix tokens.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    attn_bias: torch.Tensor
    prefix_len: int

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def select(self, keep: torch.Tensor, other: "TransformerPrefixCache") -> "TransformerPrefixCache":
        """Row-wise choice: rows where `keep` (b,) is True from self, the others from `other`."""
        m = keep[:, None, None]
        return TransformerPrefixCache(
            [torch.where(m, a, b) for a, b in zip(self.keys, other.keys)],
            [torch.where(m, a, b) for a, b in zip(self.values, other.values)],
            self.attn_bias,
            self.prefix_len,
        )


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
        checkpoint_during_training: gradient checkpointing of each layer in training mode (the
            layer's activations are recomputed in backward: less memory, about one more forward).
            Also settable later as the attribute of the same name.
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
        checkpoint_during_training: bool = False,
    ):
        super().__init__()
        self.layout = check_layout(layout)
        self.checkpoint_during_training = checkpoint_during_training
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

    def forward(self, x: torch.Tensor, *, last_only: bool = False) -> torch.Tensor:
        """x: (b, n, dim) -> (b, n, dim), or (b, dim) for the last token only if `last_only`.

        With `last_only` the last layer computes only the last token's query, attention and
        feed-forward (the other tokens' outputs would be discarded); the result is the same.
        """
        n = x.shape[1]
        x = self.init_norm(x)
        bias = self.attention_bias(n, x.device, x.dtype)
        depth = len(self.layers)
        use_ckpt = self.checkpoint_during_training and self.training and torch.is_grad_enabled()
        for i, (attn, ff) in enumerate(self.layers):
            last = last_only and i == depth - 1
            if use_ckpt:  # dropout masks are replayed: checkpoint restores the RNG state
                x = checkpoint(_layer, attn, ff, x, bias, last, use_reentrant=False)
            else:
                x = _layer(attn, ff, x, bias, last)
        out = self.project_out(self.norm(x))
        return out[:, -1] if last_only else out

    def build_prefix(self, prefix: torch.Tensor, total_len: int) -> TransformerPrefixCache:
        """Keys/values of every layer for the first P tokens of an N-token causal sequence.

        Causal attention makes the prefix tokens' hidden states independent of what follows, so
        these can be reused for any suffix (eval mode: no dropout). The last layer's prefix outputs
        are never needed, only its keys/values.

        Args:
            prefix: (bp, P, dim) input tokens (before `init_norm`).
            total_len: N, the full sequence length (P < N).
        """
        x = self.init_norm(prefix)
        bp, P, _ = x.shape
        if not 0 < P < total_len:
            raise ValueError(f"prefix length {P} must be in [1, total_len={total_len})")
        bias = self.attention_bias(total_len, x.device, x.dtype)
        keys, values = [], []
        depth = len(self.layers)
        for i, (attn, ff) in enumerate(self.layers):
            q, k, v = attn.project(x)
            null_k, null_v = attn.null_key_value(bp, k.dtype)
            k, v = torch.cat((null_k, k), dim=1), torch.cat((null_v, v), dim=1)
            keys.append(k)
            values.append(v)
            if i == depth - 1:
                break
            x = attn.attend(q, k, v, bias[:, :P, : P + 1]) + x
            x = ff(x) + x
        return TransformerPrefixCache(keys, values, bias, P)

    def forward_suffix(self, suffix: torch.Tensor, cache: TransformerPrefixCache) -> torch.Tensor:
        """Output (b, dim) at the last token, given the suffix tokens after a cached prefix.

        suffix: (b, S, dim) tokens at positions P..P+S-1 with P + S = N of the cache; the cache
        has b rows or one row (shared by all rows).
        """
        x = self.init_norm(suffix)
        b, S, _ = x.shape
        P = cache.prefix_len
        N = cache.attn_bias.shape[1]
        if P + S != N:
            raise ValueError(f"suffix length {S} + cached prefix length {P} != sequence length {N}")
        if cache.batch_size not in (1, b):
            raise ValueError(f"prefix cache has {cache.batch_size} rows, expected 1 or {b}")
        bias = cache.attn_bias[:, P:, :]
        depth = len(self.layers)
        for i, ((attn, ff), pk, pv) in enumerate(zip(self.layers, cache.keys, cache.values)):
            last = i == depth - 1
            q, k, v = attn.project(x, offset=P, last_query_only=last)
            k = torch.cat((pk.to(k.dtype).expand(b, -1, -1), k), dim=1)
            v = torch.cat((pv.to(v.dtype).expand(b, -1, -1), v), dim=1)
            if last:
                x = attn.attend(q, k, v, bias[:, -1:]) + x[:, -1:]
            else:
                x = attn.attend(q, k, v, bias) + x
            x = ff(x) + x
        return self.project_out(self.norm(x[:, -1]))
