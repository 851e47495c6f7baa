"""Convolutional building blocks of the decoder Unet.

* :class:`ResnetBlock`: two conv → GroupNorm → SiLU blocks with FiLM-style time conditioning
  (scale/shift, Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", §3 "adaptive group
  normalization") and optional cross-attention to conditioning tokens between them.
* :class:`WeightStandardizedConv2d`: Qiao et al. 2019, "Micro-Batch Training with Batch-Channel
  Normalization and Weight Standardization", eq. 5.
* :class:`CrossEmbedLayer`: multi-scale convolution (Wang et al. 2021, "CrossFormer", §3.1).
* Downsampling: pixel-unshuffle + 1×1 conv (layout "1.15.6"; Sunkara & Luo 2022, "No More Strided
  Convolutions or Pooling") or a 4×4 stride-2 conv (layout "1.1.0").
* Upsampling: 1×1 conv → SiLU → pixel shuffle with ICNR init (Aitken et al. 2017, "Checkerboard
  artifact free sub-pixel convolution") or nearest ×2 + 3×3 conv.
* :class:`UpsampleCombiner`: resize every up-stage output to full resolution and concatenate
  ("U-Net squared"-style feature combination).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from dalle2_pytorch.decoder.attention import CrossAttention
from dalle2_pytorch.layers.normalization import GroupNorm

__all__ = [
    "Block",
    "CrossEmbedLayer",
    "NearestUpsample",
    "PixelShuffleUpsample",
    "PixelUnshuffleDownsample",
    "ResnetBlock",
    "UpsampleCombiner",
    "WeightStandardizedConv2d",
    "check_groups",
    "make_downsample",
]

CROSS_ATTN_HEADS = 8
CROSS_ATTN_DIM_HEAD = 64


def check_groups(channels: int, groups: int, where: str) -> None:
    """Raises ValueError unless GroupNorm can split `channels` into `groups` groups."""
    if groups <= 0 or channels % groups != 0:
        raise ValueError(
            f"{where}: GroupNorm needs the channel count ({channels}) to be divisible by "
            f"resnet_groups ({groups}); change dim/dim_mults/init_dim or resnet_groups"
        )


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised per output channel before use (same keys as Conv2d).

    w' = (w - mean) / √(var + eps), mean/var (biased) over (in, kh, kw); eps 1e-5 in float32,
    1e-3 otherwise.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        w = (w - mean) * (var + eps).rsqrt()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Block(nn.Module):
    """3×3 conv → GroupNorm → optional x·(scale+1)+shift → SiLU.

    Keys: `project.{weight,bias}` (dim_out, dim, 3, 3), `norm.{weight,bias}` (dim_out).
    x: (b, dim, h, w) -> (b, dim_out, h, w), in x's memory format. Under autocast the norm, the
    scale/shift and the SiLU stay in the activation dtype (:class:`~dalle2_pytorch.layers.GroupNorm`),
    and the scale/shift is one fused multiply-add.
    """

    def __init__(self, dim: int, dim_out: int, *, groups: int = 8, weight_standardization: bool = False):
        super().__init__()
        check_groups(dim_out, groups, f"Block({dim} -> {dim_out})")
        conv = WeightStandardizedConv2d if weight_standardization else nn.Conv2d
        self.project = conv(dim, dim_out, 3, padding=1)
        self.norm = GroupNorm(groups, dim_out)
        self.act = nn.SiLU()

    def forward(
        self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = self.norm(self.project(x))
        if scale_shift is not None:
            scale, shift = scale_shift  # (b, dim_out, 1, 1) each
            x = torch.addcmul(shift, x, scale + 1)  # x·(scale+1) + shift in one pass
        return self.act(x)


class ResnetBlock(nn.Module):
    """Time-conditioned residual block with optional cross-attention between its two blocks.

    Keys: `time_mlp.1.{weight,bias}` (2·dim_out, time_cond_dim), `cross_attn.*` (when cond_dim),
    `block1.*`, `block2.*`, `res_conv.{weight,bias}` (when dim != dim_out).

    Args:
        dim, dim_out: input / output channels.
        time_cond_dim: width of the time vector t (None: no time conditioning).
        cond_dim: width of the conditioning tokens (None: no cross-attention).
        groups: GroupNorm groups.
        cosine_sim_cross_attn: cosine-similarity cross-attention.
        weight_standardization: weight-standardised 3×3 convs.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        *,
        time_cond_dim: int | None = None,
        cond_dim: int | None = None,
        groups: int = 8,
        cosine_sim_cross_attn: bool = False,
        weight_standardization: bool = False,
    ):
        super().__init__()
        self.time_mlp = (
            nn.Sequential(nn.SiLU(), nn.Linear(time_cond_dim, dim_out * 2)) if time_cond_dim is not None else None
        )
        self.cross_attn = (
            CrossAttention(
                dim_out,
                context_dim=cond_dim,
                dim_head=CROSS_ATTN_DIM_HEAD,
                heads=CROSS_ATTN_HEADS,
                cosine_sim=cosine_sim_cross_attn,
            )
            if cond_dim is not None
            else None
        )
        self.block1 = Block(dim, dim_out, groups=groups, weight_standardization=weight_standardization)
        self.block2 = Block(dim_out, dim_out, groups=groups, weight_standardization=weight_standardization)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        time_emb: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (b, dim, h, w); time_emb: (b, time_cond_dim); cond: (b, m, cond_dim) -> (b, dim_out, h, w)."""
        scale_shift = None
        if self.time_mlp is not None and time_emb is not None:
            scale_shift = self.time_mlp(time_emb)[:, :, None, None].chunk(2, dim=1)
        h = self.block1(x, scale_shift)
        if self.cross_attn is not None:
            if cond is None:
                raise ValueError("ResnetBlock with cross-attention needs conditioning tokens")
            b, c, hh, ww = h.shape
            seq = h.flatten(2).transpose(1, 2)
            seq = self.cross_attn(seq, cond) + seq
            h = seq.transpose(1, 2).reshape(b, c, hh, ww)
        h = self.block2(h)
        return h + self.res_conv(x)


class CrossEmbedLayer(nn.Module):
    """Parallel convolutions of several kernel sizes, concatenated along channels.

    Kernel sizes are sorted ascending; output channels are split dim_out/2, dim_out/4, ..., with
    the remainder going to the largest kernel. Padding (k - stride)//2. Keys: `convs.K.{weight,bias}`.
    x: (b, dim_in, h, w) -> (b, dim_out, h/stride, w/stride).
    """

    def __init__(self, dim_in: int, kernel_sizes, dim_out: int | None = None, stride: int = 2):
        super().__init__()
        kernel_sizes = sorted(int(k) for k in kernel_sizes)
        if not kernel_sizes:
            raise ValueError("CrossEmbedLayer needs at least one kernel size")
        if any((k % 2) != (stride % 2) for k in kernel_sizes):
            raise ValueError(
                f"CrossEmbedLayer kernel sizes {kernel_sizes} must all have the parity of the stride ({stride})"
            )
        dim_out = dim_out if dim_out is not None else dim_in
        num_scales = len(kernel_sizes)
        dim_scales = [int(dim_out / (2**i)) for i in range(1, num_scales)]
        dim_scales.append(dim_out - sum(dim_scales))
        if any(d <= 0 for d in dim_scales):
            raise ValueError(
                f"CrossEmbedLayer: {dim_out} output channels are too few for {num_scales} kernel sizes "
                f"(split would be {dim_scales})"
            )
        self.convs = nn.ModuleList(
            nn.Conv2d(dim_in, d, k, stride=stride, padding=(k - stride) // 2) for k, d in zip(kernel_sizes, dim_scales)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class PixelUnshuffleDownsample(nn.Sequential):
    """Space-to-depth 2×2 (channel order c, s1, s2) then 1×1 conv. Keys: `1.{weight,bias}`
    (dim_out, 4·dim, 1, 1). x: (b, dim, h, w) -> (b, dim_out, h/2, w/2)."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__(nn.PixelUnshuffle(2), nn.Conv2d(dim * 4, dim_out, 1))


def make_downsample(
    dim: int,
    dim_out: int,
    *,
    layout: str,
    cross_embed: bool = False,
    cross_embed_kernel_sizes=(2, 4),
) -> nn.Module:
    """The ×2 spatial downsample for a layout: CrossEmbedLayer (stride 2) when `cross_embed`,
    else pixel-unshuffle + 1×1 conv ("1.15.6") or Conv2d(4×4, stride 2, padding 1) ("1.1.0")."""
    if cross_embed:
        return CrossEmbedLayer(dim, cross_embed_kernel_sizes, dim_out=dim_out, stride=2)
    if layout == "1.1.0":
        return nn.Conv2d(dim, dim_out, 4, stride=2, padding=1)
    return PixelUnshuffleDownsample(dim, dim_out)


class PixelShuffleUpsample(nn.Module):
    """1×1 conv to 4·dim_out → SiLU → pixel shuffle ×2, ICNR-initialised so that the four
    sub-pixels start equal. Keys: `net.0.{weight,bias}` (4·dim_out, dim, 1, 1).
    x: (b, dim, h, w) -> (b, dim_out, 2h, 2w)."""

    def __init__(self, dim: int, dim_out: int | None = None):
        super().__init__()
        dim_out = dim_out if dim_out is not None else dim
        conv = nn.Conv2d(dim, dim_out * 4, 1)
        self.net = nn.Sequential(conv, nn.SiLU(), nn.PixelShuffle(2))
        self._icnr_init(conv)

    @staticmethod
    def _icnr_init(conv: nn.Conv2d) -> None:
        o4, i, kh, kw = conv.weight.shape
        w = torch.empty(o4 // 4, i, kh, kw, device=conv.weight.device, dtype=conv.weight.dtype)
        nn.init.kaiming_uniform_(w)
        with torch.no_grad():
            conv.weight.copy_(w.repeat_interleave(4, dim=0))
            conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NearestUpsample(nn.Sequential):
    """Nearest-neighbour ×2 then 3×3 conv. Keys: `1.{weight,bias}` (dim_out, dim, 3, 3)."""

    def __init__(self, dim: int, dim_out: int | None = None):
        dim_out = dim_out if dim_out is not None else dim
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


class UpsampleCombiner(nn.Module):
    """Resizes each feature map to x's size, passes it through a Block and concatenates with x.

    Keys: `fmap_convs.K.*` (Block(dim_ins[K], dim_outs[K])). Disabled: returns x unchanged.

    Args:
        dim: channels of x.
        enabled: whether to combine at all.
        dim_ins: channels of each feature map.
        dim_outs: output channels per feature map (int: the same for all).
        groups: GroupNorm groups of the Blocks.
    """

    def __init__(self, dim: int, *, enabled: bool = False, dim_ins=(), dim_outs=(), groups: int = 8):
        super().__init__()
        dim_ins = tuple(dim_ins)
        if isinstance(dim_outs, int):
            dim_outs = (dim_outs,) * len(dim_ins)
        dim_outs = tuple(dim_outs)
        if len(dim_ins) != len(dim_outs):
            raise ValueError("UpsampleCombiner: dim_ins and dim_outs must have the same length")
        self.enabled = enabled
        if not enabled:
            self.dim_out = dim
            self.fmap_convs = nn.ModuleList()
            return
        self.fmap_convs = nn.ModuleList(Block(i, o, groups=groups) for i, o in zip(dim_ins, dim_outs))
        self.dim_out = dim + sum(dim_outs)

    def forward(self, x: torch.Tensor, fmaps: list[torch.Tensor]) -> torch.Tensor:
        """x: (b, dim, H, W); fmaps: list of (b, dim_ins[K], h_K, w_K) -> (b, dim_out, H, W)."""
        if not self.enabled or len(fmaps) == 0 or len(self.fmap_convs) == 0:
            return x
        size = x.shape[-2:]
        outs = [
            conv(fmap if fmap.shape[-2:] == size else F.interpolate(fmap, size=size, mode="nearest"))
            for fmap, conv in zip(fmaps, self.fmap_convs)
        ]
        return torch.cat((x, *outs), dim=1)
