"""The Unet's down and up stage lists (module layout = the reference 1.15.6 state-dict keys).

``downs.S = [0 pre-downsample | Identity, 1 init block, 2 resnets, 3 attention, 4 post-downsample]``
``ups.i   = [0 init block, 1 resnets, 2 attention, 3 upsample | Identity]``, mirroring the downs.

Kept apart from :mod:`dalle2_pytorch.decoder.unet` so the network file holds the forward pass and
its conditioning; the construction of the per-resolution stages lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from dalle2_pytorch.decoder.attention import LinearAttention, Residual, SelfAttention, ToSequence
from dalle2_pytorch.decoder.blocks import NearestUpsample, PixelShuffleUpsample, ResnetBlock, make_downsample

__all__ = ["StageSpec", "build_down_stages", "build_up_stages"]


@dataclass(frozen=True)
class StageSpec:
    """Per-stage options shared by the down and up paths (one entry per resolution)."""

    groups: tuple[int, ...]
    num_blocks: tuple[int, ...]
    self_attn: tuple[bool, ...]
    cond_dim: int
    memory_efficient: bool
    layout: str
    cosine_sim_self_attn: bool
    sparse_attn: bool
    attn_kwargs: dict[str, Any]
    block_kwargs: dict[str, Any]

    def attention(self, dim: int, stage: int) -> nn.Module:
        """Full self-attention (keys fn.fn.*), linear attention (keys fn.*) or nothing."""
        if self.self_attn[stage]:
            return Residual(ToSequence(SelfAttention(
                dim, cosine_sim=self.cosine_sim_self_attn, layout=self.layout, **self.attn_kwargs
            )))
        if self.sparse_attn:
            return Residual(LinearAttention(dim, layout=self.layout, **self.attn_kwargs))
        return nn.Identity()

    def block(self, dim_in: int, dim_out: int, stage: int, cond_dim: int | None = None) -> ResnetBlock:
        return ResnetBlock(dim_in, dim_out, cond_dim=cond_dim, groups=self.groups[stage], **self.block_kwargs)


def build_down_stages(
    in_out: list[tuple[int, int]],
    spec: StageSpec,
    *,
    layout: str,
    cross_embed: bool,
    cross_embed_kernel_sizes: tuple[int, ...],
) -> nn.ModuleList:
    """The encoder half: one ModuleList per resolution, widths ``in_out[s] = (d_in, d_out)``.

    The first stage's resnets take no cross-attention context (as in the reference); the last stage
    ends in a 1×1 conv instead of a downsample.
    """
    downs = nn.ModuleList()
    down = dict(layout=layout, cross_embed=cross_embed, cross_embed_kernel_sizes=cross_embed_kernel_sizes)
    last = len(in_out) - 1
    for s, (d_in, d_out) in enumerate(in_out):
        d_layer = d_out if spec.memory_efficient else d_in
        cond = None if s == 0 else spec.cond_dim
        pre = make_downsample(d_in, d_out, **down) if spec.memory_efficient else nn.Identity()
        post = (
            make_downsample(d_layer, d_out, **down)
            if not (s == last or spec.memory_efficient)
            else nn.Conv2d(d_layer, d_out, 1)
        )
        downs.append(nn.ModuleList([
            pre,
            spec.block(d_layer, d_layer, s),
            nn.ModuleList(spec.block(d_layer, d_layer, s, cond) for _ in range(spec.num_blocks[s])),
            spec.attention(d_layer, s),
            post,
        ]))
    return downs


def build_up_stages(
    in_out: list[tuple[int, int]], spec: StageSpec, *, pixel_shuffle: bool
) -> tuple[nn.ModuleList, list[int]]:
    """The decoder half, from the lowest resolution up; returns (ups, width of each up stage's output).

    Every block concatenates the matching skip connection; the top stage's resnets take no context.
    """
    ups = nn.ModuleList()
    upsample = PixelShuffleUpsample if pixel_shuffle else NearestUpsample
    fmap_dims: list[int] = []
    n = len(in_out)
    for i, s in enumerate(reversed(range(n))):
        d_in, d_out = in_out[s]
        is_last = i == n - 1
        skip = d_out if spec.memory_efficient else d_in
        cond = None if is_last else spec.cond_dim
        ups.append(nn.ModuleList([
            spec.block(d_out + skip, d_out, s, cond),
            nn.ModuleList(spec.block(d_out + skip, d_out, s, cond) for _ in range(spec.num_blocks[s])),
            spec.attention(d_out, s),
            upsample(d_out, d_in) if (spec.memory_efficient or not is_last) else nn.Identity(),
        ]))
        fmap_dims.append(d_out)
    return ups, fmap_dims
