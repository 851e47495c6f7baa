"""The decoder's conditional U-Net (unCLIP decoder, Ramesh et al. 2022, §2.1; GLIDE-style
conditioning, Nichol et al. 2021, §2.4).

The network predicts noise (or x0 / v, or twice the channels with a learned variance) for a noisy
image x_t at timestep t, conditioned on

* the time t: sinusoidal embedding → MLP → a vector added to every ResnetBlock (scale/shift) and
  `num_time_tokens` cross-attention tokens;
* the CLIP image embedding: projected and added to the time vector, and turned into
  `num_image_tokens` cross-attention tokens (unCLIP §2.1 "project and add" + "four extra tokens");
* per-token text encodings (only attended in the two middle blocks);
* a low-resolution image (cascade upsamplers, Ho et al. 2021 "Cascaded Diffusion Models"),
  optionally with its noise-augmentation level (Imagen, Saharia et al. 2022, §2.5);
* its own previous x0 estimate (self-conditioning, Chen et al. 2022 "Analog Bits", §3.2).

Parameter names follow the reference (`dalle2-pytorch` 1.15.6) state dict, so its files load with
no renaming; `layout="1.1.0"` reproduces the operations of LAION's 1.1.0-era checkpoints (4×4
stride-2 downsample, 1/√d self-attention, plain linear attention); their `cross_attn.fn.*`
keys are renamed by :mod:`dalle2_pytorch.compat.decoder_keys`. Input checks live in
:mod:`dalle2_pytorch.decoder.unet_inputs`.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from dalle2_pytorch._helpers import LegacyConfigKeyWarning, cast_tuple, default, first
from dalle2_pytorch.decoder.attention import Residual, SelfAttention, ToSequence, check_layout
from dalle2_pytorch.decoder.blocks import CrossEmbedLayer, ResnetBlock, UpsampleCombiner, check_groups
from dalle2_pytorch.decoder.unet_inputs import UnetInputs, keep_mask, prepare_unet_inputs, resolve_noise_level
from dalle2_pytorch.decoder.unet_stages import StageSpec, build_down_stages, build_up_stages
from dalle2_pytorch.diffusion.guidance import guided_forward
from dalle2_pytorch.layers.embeddings import SinusoidalPosEmb

__all__ = ["Unet"]

#: keywords the reference accepted (its README passes them) but never used: warned about and ignored
LEGACY_UNET_KWARGS = {"sparse_attn_window": "documented in the reference README but never had an effect"}

_CASTABLE = (
    "lowres_cond", "lowres_noise_cond", "channels", "channels_out", "cond_on_image_embeds", "cond_on_text_encodings",
    "image_embed_dim",
)


class _SinusoidalMLP(nn.Sequential):
    """Sequential[0 SinusoidalPosEmb, 1 Linear, ...] that casts the float32 embedding to the
    Linear's dtype. (b,) timesteps -> (b, out)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self[0](t).to(self[1].weight.dtype)
        for module in list(self)[1:]:
            h = module(h)
        return h


class Unet(nn.Module):
    """Conditional U-Net of the unCLIP decoder cascade.

    Args (defaults are the reference's):
        dim: base width; time vector width is 4·dim.
        image_embed_dim: CLIP image-embedding width (required with `cond_on_image_embeds`).
        text_embed_dim: text-encoding width (required with `cond_on_text_encodings`).
        cond_dim: conditioning-token width (default `dim`).
        num_image_tokens, num_time_tokens: tokens made from the image embedding / time.
        out_dim: accepted for compatibility and ignored (as in the reference); use `channels_out`.
        dim_mults: stage widths dim·m.
        channels, channels_out: input / output channels (`channels_out` defaults to `channels`).
        self_attn: bool or per-stage tuple: full self-attention after each stage's resnets.
        attn_dim_head, attn_heads: self-/linear-attention shape (cross-attention is 8 × 64).
        lowres_cond: concatenate a low-resolution conditioning image (input and output).
        lowres_noise_cond: add an embedding of the low-res noise level to the time vector.
        self_cond: concatenate the previous x0 estimate (zeros when not given).
        sparse_attn: linear attention on stages without self-attention.
        cosine_sim_cross_attn, cosine_sim_self_attn: cosine-similarity attention (scale 16).
        attend_at_middle: accepted and ignored; the middle self-attention is always built.
        cond_on_text_encodings, max_text_len: text tokens (padded/truncated to max_text_len).
        cond_on_image_embeds, add_image_embeds_to_time: image conditioning.
        init_dim: width after the input conv (default `dim`).
        init_conv_kernel_size: kernel of the plain input conv (when not `init_cross_embed`).
        resnet_groups, num_resnet_blocks: int or per-stage tuple.
        resnet_weight_standardization: weight-standardised convs in the blocks.
        init_cross_embed, init_cross_embed_kernel_sizes: multi-scale input conv.
        cross_embed_downsample, cross_embed_downsample_kernel_sizes: multi-scale stride-2 downsample.
        memory_efficient: downsample before each stage's resnets (Imagen "Efficient U-Net").
        scale_skip_connection: multiply skips by 2^-0.5.
        pixel_shuffle_upsample: pixel shuffle (True) or nearest ×2 + 3×3 conv (False).
        final_conv_kernel_size: kernel of the zero-initialised output conv.
        combine_upsample_fmaps: concatenate every up-stage output (resized) before the last block.
        checkpoint_during_training: gradient checkpointing in training mode.
        layout: "1.15.6" or "1.1.0" (see the module docstring).

    Raises:
        TypeError: unknown keyword arguments (the reference silently ignored them); the README's
            `sparse_attn_window` is accepted with a `LegacyConfigKeyWarning`, as in `UnetConfig`.
        ValueError: inconsistent options (missing embed dims, GroupNorm divisibility, bad layout).
    """

    def __init__(
        self,
        dim: int,
        *,
        image_embed_dim: int | None = None,
        text_embed_dim: int | None = None,
        cond_dim: int | None = None,
        num_image_tokens: int = 4,
        num_time_tokens: int = 2,
        out_dim: int | None = None,
        dim_mults: tuple[int, ...] = (1, 2, 4, 8),
        channels: int = 3,
        channels_out: int | None = None,
        self_attn: bool | tuple[bool, ...] = False,
        attn_dim_head: int = 32,
        attn_heads: int = 16,
        lowres_cond: bool = False,
        lowres_noise_cond: bool = False,
        self_cond: bool = False,
        sparse_attn: bool = False,
        cosine_sim_cross_attn: bool = False,
        cosine_sim_self_attn: bool = False,
        attend_at_middle: bool = True,
        cond_on_text_encodings: bool = False,
        max_text_len: int = 256,
        cond_on_image_embeds: bool = False,
        add_image_embeds_to_time: bool = True,
        init_dim: int | None = None,
        init_conv_kernel_size: int = 7,
        resnet_groups: int | tuple[int, ...] = 8,
        resnet_weight_standardization: bool = False,
        num_resnet_blocks: int | tuple[int, ...] = 2,
        init_cross_embed: bool = True,
        init_cross_embed_kernel_sizes: tuple[int, ...] = (3, 7, 15),
        cross_embed_downsample: bool = False,
        cross_embed_downsample_kernel_sizes: tuple[int, ...] = (2, 4),
        memory_efficient: bool = False,
        scale_skip_connection: bool = False,
        pixel_shuffle_upsample: bool = True,
        final_conv_kernel_size: int = 1,
        combine_upsample_fmaps: bool = False,
        checkpoint_during_training: bool = False,
        layout: str = "1.15.6",
        **kwargs: Any,
    ):
        for key in [k for k in kwargs if k in LEGACY_UNET_KWARGS]:
            kwargs.pop(key)
            warnings.warn(f"Unet: ignoring legacy key {key!r} ({LEGACY_UNET_KWARGS[key]})", LegacyConfigKeyWarning, stacklevel=2)
        if kwargs:
            raise TypeError(f"Unet got unexpected keyword argument(s): {', '.join(sorted(kwargs))}")
        config = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        super().__init__()
        self._config = config
        self.layout = check_layout(layout)
        self.dim = dim
        self.channels = channels
        self.channels_out = default(channels_out, channels)
        self.init_dim = default(init_dim, dim)
        self.cond_dim = default(cond_dim, dim)
        self.time_cond_dim = 4 * dim
        self.image_embed_dim = image_embed_dim
        self.text_embed_dim = text_embed_dim
        self.max_text_len = max_text_len
        self.lowres_cond = lowres_cond
        self.lowres_noise_cond = lowres_noise_cond
        self.self_cond = self_cond
        self.cond_on_image_embeds = cond_on_image_embeds
        self.cond_on_text_encodings = cond_on_text_encodings
        self.memory_efficient = memory_efficient
        self.checkpoint_during_training = checkpoint_during_training
        self.skip_connect_scale = 2**-0.5 if scale_skip_connection else 1.0

        self.dim_mults = tuple(int(m) for m in cast_tuple(dim_mults))
        if not self.dim_mults or any(m <= 0 for m in self.dim_mults):
            raise ValueError(f"dim_mults must be a non-empty sequence of positive ints, got {dim_mults!r}")
        self.num_stages = len(self.dim_mults)
        n = self.num_stages
        self.stage_self_attn = tuple(bool(a) for a in cast_tuple(self_attn, n))
        self.stage_groups = tuple(int(g) for g in cast_tuple(resnet_groups, n))
        self.stage_num_blocks = tuple(int(b) for b in cast_tuple(num_resnet_blocks, n))
        if any(b < 0 for b in self.stage_num_blocks):
            raise ValueError(f"num_resnet_blocks must be >= 0, got {num_resnet_blocks!r}")
        if cond_on_image_embeds and image_embed_dim is None:
            raise ValueError("image_embed_dim is required when cond_on_image_embeds=True")
        if cond_on_text_encodings and text_embed_dim is None:
            raise ValueError("text_embed_dim is required when cond_on_text_encodings=True")

        dims = [self.init_dim, *(dim * m for m in self.dim_mults)]
        self.in_out = list(zip(dims[:-1], dims[1:]))
        self._validate_groups()

        self._attn_kwargs = dict(heads=attn_heads, dim_head=attn_dim_head)
        self._block_kwargs = dict(
            time_cond_dim=self.time_cond_dim,
            cosine_sim_cross_attn=cosine_sim_cross_attn,
            weight_standardization=resnet_weight_standardization,
        )
        self._build_conditioning(num_time_tokens, num_image_tokens, add_image_embeds_to_time)
        self._build_stem(init_cross_embed, init_cross_embed_kernel_sizes, init_conv_kernel_size)
        self._build_downs(cross_embed_downsample, cross_embed_downsample_kernel_sizes, cosine_sim_self_attn, sparse_attn)
        self._build_middle(cosine_sim_self_attn)
        self._build_ups(pixel_shuffle_upsample, cosine_sim_self_attn, sparse_attn)
        self._build_head(combine_upsample_fmaps, final_conv_kernel_size)

    # ------------------------------------------------------------------ construction helpers

    def _validate_groups(self) -> None:
        top = first(self.stage_groups)
        check_groups(self.init_dim, top, "init_dim (initial/final resnet blocks)")
        check_groups(self.dim, top, "dim (final resnet block)")
        for s, (d_in, d_out) in enumerate(self.in_out):
            d_layer = d_out if self.memory_efficient else d_in
            for c in {d_layer, d_out}:
                check_groups(c, self.stage_groups[s], f"stage {s} (width {c})")

    def _build_conditioning(self, num_time_tokens: int, num_image_tokens: int, add_image_embeds_to_time: bool) -> None:
        dim, cond_dim, tdim = self.dim, self.cond_dim, self.time_cond_dim
        self.null_image_embed = nn.Parameter(torch.randn(1, num_image_tokens, cond_dim))
        self.null_image_hiddens = nn.Parameter(torch.randn(1, tdim))
        self.null_text_embed = nn.Parameter(torch.randn(1, self.max_text_len, cond_dim))
        self.to_time_hiddens = _SinusoidalMLP(SinusoidalPosEmb(dim), nn.Linear(dim, tdim), nn.GELU())
        self.to_time_tokens = nn.Sequential(
            nn.Linear(tdim, cond_dim * num_time_tokens), nn.Unflatten(1, (num_time_tokens, cond_dim))
        )
        self.to_time_cond = nn.Sequential(nn.Linear(tdim, tdim))
        self.to_lowres_noise_cond = (
            _SinusoidalMLP(SinusoidalPosEmb(dim), nn.Linear(dim, tdim), nn.GELU(), nn.Linear(tdim, tdim))
            if self.lowres_noise_cond
            else None
        )
        # A real projection even when image_embed_dim == cond_dim (the reference's Identity crashed).
        self.image_to_tokens = (
            nn.Sequential(
                nn.Linear(self.image_embed_dim, cond_dim * num_image_tokens),
                nn.Unflatten(1, (num_image_tokens, cond_dim)),
            )
            if self.cond_on_image_embeds
            else None
        )
        self.to_image_hiddens = (
            nn.Sequential(nn.Linear(self.image_embed_dim, tdim), nn.GELU())
            if self.cond_on_image_embeds and add_image_embeds_to_time
            else None
        )
        self.norm_cond = nn.LayerNorm(cond_dim)
        self.norm_mid_cond = nn.LayerNorm(cond_dim)
        self.text_to_cond = nn.Linear(self.text_embed_dim, cond_dim) if self.cond_on_text_encodings else None

    def _build_stem(self, init_cross_embed: bool, kernel_sizes, init_conv_kernel_size: int) -> None:
        in_ch = self.channels * (1 + int(self.lowres_cond) + int(self.self_cond))
        if init_cross_embed:
            self.init_conv = CrossEmbedLayer(in_ch, kernel_sizes, dim_out=self.init_dim, stride=1)
        else:
            k = init_conv_kernel_size
            if k % 2 == 0:
                raise ValueError(f"init_conv_kernel_size must be odd to keep the size, got {k}")
            self.init_conv = nn.Conv2d(in_ch, self.init_dim, k, padding=k // 2)
        self.init_resnet_block = (
            ResnetBlock(self.init_dim, self.init_dim, groups=first(self.stage_groups), **self._block_kwargs)
            if self.memory_efficient
            else None
        )

    def _build_downs(self, cross_embed: bool, cross_embed_kernel_sizes, cosine_sim: bool, sparse_attn: bool) -> None:
        self.downs = build_down_stages(
            self.in_out, self._stage_spec(cosine_sim, sparse_attn), layout=self.layout,
            cross_embed=cross_embed, cross_embed_kernel_sizes=cross_embed_kernel_sizes,
        )

    def _build_middle(self, cosine_sim: bool) -> None:
        mid = self.in_out[-1][1]
        groups = self.stage_groups[-1]
        self.mid_block1 = ResnetBlock(mid, mid, cond_dim=self.cond_dim, groups=groups, **self._block_kwargs)
        self.mid_attn = Residual(ToSequence(SelfAttention(mid, cosine_sim=cosine_sim, layout=self.layout, **self._attn_kwargs)))
        self.mid_block2 = ResnetBlock(mid, mid, cond_dim=self.cond_dim, groups=groups, **self._block_kwargs)

    def _build_ups(self, pixel_shuffle: bool, cosine_sim: bool, sparse_attn: bool) -> None:
        self.ups, self._up_fmap_dims = build_up_stages(
            self.in_out, self._stage_spec(cosine_sim, sparse_attn), pixel_shuffle=pixel_shuffle
        )

    def _stage_spec(self, cosine_sim: bool, sparse_attn: bool) -> StageSpec:
        return StageSpec(
            groups=self.stage_groups, num_blocks=self.stage_num_blocks, self_attn=self.stage_self_attn,
            cond_dim=self.cond_dim, memory_efficient=self.memory_efficient, layout=self.layout,
            cosine_sim_self_attn=cosine_sim, sparse_attn=sparse_attn,
            attn_kwargs=self._attn_kwargs, block_kwargs=self._block_kwargs,
        )

    def _build_head(self, combine_upsample_fmaps: bool, final_conv_kernel_size: int) -> None:
        top = first(self.stage_groups)
        # Channels after the last up stage: it upsamples to init_dim when memory efficient.
        x_dim = self.init_dim if self.memory_efficient else self.in_out[0][1]
        self.upsample_combiner = UpsampleCombiner(
            x_dim, enabled=combine_upsample_fmaps, dim_ins=self._up_fmap_dims, dim_outs=self.dim, groups=top
        )
        self.final_resnet_block = ResnetBlock(
            self.upsample_combiner.dim_out + self.init_dim, self.dim, groups=top, **self._block_kwargs
        )
        out_in = self.dim + (self.channels if self.lowres_cond else 0)
        k = final_conv_kernel_size
        self.to_out = nn.Conv2d(out_in, self.channels_out, k, padding=k // 2)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    # ------------------------------------------------------------------ public helpers

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments this Unet was built with."""
        return dict(self._config)

    @property
    def downsample_factor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.num_stages if self.memory_efficient else self.num_stages - 1)

    def cast_model_parameters(self, **changes: Any) -> "Unet":
        """Returns self if the given flags already match, else a NEW, freshly initialised Unet with
        the same configuration and the flags changed (the reference's behaviour; weights are not
        carried over). Accepted: lowres_cond, lowres_noise_cond, channels, channels_out,
        cond_on_image_embeds, cond_on_text_encodings, image_embed_dim."""
        unknown = sorted(set(changes) - set(_CASTABLE))
        if unknown:
            raise TypeError(f"cast_model_parameters got unexpected argument(s): {', '.join(unknown)}")
        current = {"channels_out": self.channels_out}
        if all(current.get(k, self._config[k]) == v for k, v in changes.items()):
            return self
        return self.__class__(**{**self._config, **changes})

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        *,
        image_embed: torch.Tensor | None,
        lowres_cond_img: torch.Tensor | None = None,
        lowres_noise_level: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        image_cond_drop_prob: float = 0.0,
        text_cond_drop_prob: float = 0.0,
        blur_sigma: Any = None,
        blur_kernel_size: Any = None,
        disable_checkpoint: bool = False,
        self_cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        lowres_noise_times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicts (b, channels_out, h, w) for x_t (b, channels, h, w) at timesteps `time` (b,).

        Args:
            image_embed: (b, image_embed_dim); required when `cond_on_image_embeds` (may be None
                otherwise, and is then ignored).
            lowres_cond_img: (b, channels, h, w); required iff `lowres_cond`.
            lowres_noise_level: (b,) noise-augmentation level; required iff `lowres_noise_cond`.
                `lowres_noise_times` is accepted as an alias.
            text_encodings: (b, n, text_embed_dim) with all-zero rows marking padding; ignored
                unless `cond_on_text_encodings`.
            image_cond_drop_prob, text_cond_drop_prob: per-sample probability of replacing the
                conditioning with the learned null embeddings (classifier-free guidance training).
            blur_sigma, blur_kernel_size: accepted and ignored (as in the reference).
            disable_checkpoint: turn off gradient checkpointing for this call.
            self_cond: (b, channels, h, w) previous x0 estimate (zeros if None) for `self_cond`.
            generator: drives the dropout masks.
        """
        inputs = prepare_unet_inputs(
            self, x, time, image_embed, text_encodings, lowres_cond_img,
            resolve_noise_level(lowres_noise_level, lowres_noise_times), self_cond,
        )
        b = x.shape[0]
        image_keep = keep_mask(b, image_cond_drop_prob, generator, x.device, "image_cond_drop_prob")
        text_keep = keep_mask(b, text_cond_drop_prob, generator, x.device, "text_cond_drop_prob")
        return self._run(inputs, image_keep, text_keep, self._use_checkpoint(disable_checkpoint))

    def forward_with_cond_scale(self, *args: Any, cond_scale: float = 1.0, **kwargs: Any) -> torch.Tensor:
        """Classifier-free guided output (reference API): :func:`~dalle2_pytorch.diffusion.guided_forward`
        with this network's conditional and null branches; takes `forward`'s arguments."""
        return guided_forward(self, *args, cond_scale=cond_scale, **kwargs)

    def forward_cond_and_null(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional output (with `forward`'s drop probabilities) and the null output (image
        and text conditioning dropped), computed as one batch of 2b. Takes `forward`'s arguments."""
        bound = inspect.signature(self.forward).bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        inputs = prepare_unet_inputs(
            self, a["x"], a["time"], a["image_embed"], a["text_encodings"], a["lowres_cond_img"],
            resolve_noise_level(a["lowres_noise_level"], a["lowres_noise_times"]), a["self_cond"],
        )
        b, device = inputs.x.shape[0], inputs.x.device
        image_keep = keep_mask(b, a["image_cond_drop_prob"], a["generator"], device, "image_cond_drop_prob")
        text_keep = keep_mask(b, a["text_cond_drop_prob"], a["generator"], device, "text_cond_drop_prob")
        drop_all = torch.zeros(b, dtype=torch.bool, device=device)
        out = self._run(
            inputs.doubled(),
            torch.cat((image_keep, drop_all)),
            torch.cat((text_keep, drop_all)),
            self._use_checkpoint(a["disable_checkpoint"]),
        )
        cond, null = out.chunk(2, dim=0)
        return cond, null

    # ------------------------------------------------------------------ forward internals

    def _use_checkpoint(self, disable_checkpoint: bool) -> bool:
        return self.checkpoint_during_training and self.training and not disable_checkpoint and torch.is_grad_enabled()

    def _text_tokens(self, text_encodings: torch.Tensor, text_keep: torch.Tensor) -> torch.Tensor:
        """(b, n, text_embed_dim) -> (b, max_text_len, cond_dim); padding/dropped rows -> null."""
        n_max = self.max_text_len
        mask = (text_encodings != 0).any(dim=-1)[:, :n_max]  # (b, n)
        tokens = self.text_to_cond(text_encodings)[:, :n_max]
        pad = n_max - tokens.shape[1]
        if pad > 0:
            tokens = F.pad(tokens, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        keep = mask & text_keep[:, None]
        return torch.where(keep[..., None], tokens, self.null_text_embed.to(tokens.dtype))

    def _conditioning(self, inp: UnetInputs, image_keep: torch.Tensor, text_keep: torch.Tensor):
        """Returns (t (b, 4·dim), c (b, m, cond_dim), mid_c (b, m', cond_dim))."""
        hidden = self.to_time_hiddens(inp.time)
        time_tokens = self.to_time_tokens(hidden)
        t = self.to_time_cond(hidden)
        if self.to_lowres_noise_cond is not None:
            t = t + self.to_lowres_noise_cond(inp.lowres_noise_level)
        tokens = [time_tokens]
        if inp.image_embed is not None:
            e = inp.image_embed.to(t.dtype)
            if self.to_image_hiddens is not None:
                image_hidden = self.to_image_hiddens(e)
                t = t + torch.where(image_keep[:, None], image_hidden, self.null_image_hiddens.to(t.dtype))
            image_tokens = self.image_to_tokens(e)
            tokens.append(torch.where(image_keep[:, None, None], image_tokens, self.null_image_embed.to(t.dtype)))
        c = torch.cat(tokens, dim=1)
        mid_c = c
        if inp.text_encodings is not None:
            mid_c = torch.cat((c, self._text_tokens(inp.text_encodings.to(t.dtype), text_keep)), dim=1)
        return t, self.norm_cond(c), self.norm_mid_cond(mid_c)

    def _run(self, inp: UnetInputs, image_keep: torch.Tensor, text_keep: torch.Tensor, use_ckpt: bool) -> torch.Tensor:
        def call(module: nn.Module, *args):
            if isinstance(module, nn.Identity):
                return args[0]
            if use_ckpt:
                return checkpoint(module, *args, use_reentrant=False)
            return module(*args)

        t, c, mid_c = self._conditioning(inp, image_keep, text_keep)
        x = inp.x
        if inp.self_cond is not None:
            x = torch.cat((x, inp.self_cond), dim=1)
        if inp.lowres_cond_img is not None:
            x = torch.cat((x, inp.lowres_cond_img), dim=1)
        x = self.init_conv(x)
        r = x.clone()
        if self.init_resnet_block is not None:
            x = call(self.init_resnet_block, x, t)

        skips: list[torch.Tensor] = []
        for pre_down, init_block, blocks, attn, post_down in self.downs:
            x = pre_down(x)
            x = call(init_block, x, t)
            for block in blocks:
                x = call(block, x, t, c)
                skips.append(x)
            x = call(attn, x)
            skips.append(x)
            x = post_down(x)

        x = call(self.mid_block1, x, t, mid_c)
        x = call(self.mid_attn, x)
        x = call(self.mid_block2, x, t, mid_c)

        def with_skip(h: torch.Tensor) -> torch.Tensor:
            skip = skips.pop()
            return torch.cat((h, skip * self.skip_connect_scale if self.skip_connect_scale != 1.0 else skip), dim=1)

        fmaps: list[torch.Tensor] = []
        for init_block, blocks, attn, upsample in self.ups:
            x = call(init_block, with_skip(x), t, c)
            for block in blocks:
                x = call(block, with_skip(x), t, c)
            x = call(attn, x)
            fmaps.append(x)
            x = upsample(x)

        x = self.upsample_combiner(x, fmaps)
        x = torch.cat((x, r), dim=1)
        x = call(self.final_resnet_block, x, t)
        if inp.lowres_cond_img is not None:
            x = torch.cat((x, inp.lowres_cond_img), dim=1)
        return self.to_out(x)
