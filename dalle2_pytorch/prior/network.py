"""DiffusionPriorNetwork: the DALL·E 2 prior's decoder-only transformer.

Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents", §2.1: the
prior predicts the (unnoised) CLIP image embedding from a causal transformer over the sequence
[text encodings, text embedding, timestep embedding, noised image embedding, learned query]; the
output token is the one at the learned query. Classifier-free guidance (Ho & Salimans 2022, eq. 6)
drops the conditioning by replacing it with learned null embeddings.

Two layouts reproduce the two generations of reference checkpoints:

* "1.15.6" (default): `null_text_encodings` (1, max_text_len, dim), `null_text_embeds`
  (1, num_text_embeds, dim) and `null_image_embed` (1, dim); dropping the conditioning replaces the
  text encodings, the text embedding and the noised image embedding by them.
* "1.1.0" (LAION prior era): one `null_text_embed` (1, max_text_len, dim) that fills the padding
  positions of the text encodings only. The conditioning drop of that generation never reached the
  transformer, so the network has no unconditional branch: drop probabilities have no effect.

Extension `linear_text_skip`: adds a learned linear map of the text embedding to the output,
W·text_embed for conditioned rows and 0 for rows whose text is dropped. CLIP's text and image
embeddings are close to linearly related, and a linear path carries that relation to text-image
pairs never seen in training; a small transformer alone tends to snap to the nearest seen pair
(the demo measured held-out shape accuracy 56% -> 70%, train_configs/README.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dalle2_pytorch.diffusion.guidance import guided_forward
from dalle2_pytorch.layers.embeddings import MLP, SinusoidalPosEmb
from dalle2_pytorch.prior.network_inputs import PriorPrefixCache, check_network_inputs, drop_probs
from dalle2_pytorch.prior.transformer import CausalTransformer, check_layout

__all__ = ["DiffusionPriorNetwork", "PriorPrefixCache"]  # PriorPrefixCache re-exported


class _ToTokens(nn.Module):
    """(b, n·dim) -> (b, n, dim) (the reference's `Rearrange('b (n d) -> b n d')`)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.n, -1))


class DiffusionPriorNetwork(nn.Module):
    """Causal transformer predicting an image embedding from noised embedding, time and text.

    Args:
        dim: model width = CLIP image-embedding width = per-token text-encoding width.
        num_timesteps: None for continuous time (sinusoid + MLP); an int T for a learned table of
            T embeddings (must equal the diffusion's number of timesteps).
        num_time_embeds, num_image_embeds, num_text_embeds: tokens each input is split into.
        max_text_len: text encodings are truncated / padded to this many tokens.
        self_cond: add a token holding the previous x0 estimate (layout "1.15.6" only).
        linear_text_skip: (extension) add a zero-initialised linear map of the text embedding to
            the output (layout "1.15.6" only; see the module docstring).
        depth, dim_head, heads, ff_mult, norm_in, norm_out, attn_dropout, ff_dropout, final_proj,
            normformer, rotary_emb: see :class:`CausalTransformer`.
        layout: "1.15.6" or "1.1.0" (see module docstring).
    """

    def __init__(
        self,
        dim: int,
        num_timesteps: int | None = None,
        num_time_embeds: int = 1,
        num_image_embeds: int = 1,
        num_text_embeds: int = 1,
        max_text_len: int = 256,
        self_cond: bool = False,
        *,
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
        linear_text_skip: bool = False,
        layout: str = "1.15.6",
    ):
        super().__init__()
        self.layout = check_layout(layout)
        for name, value in (
            ("dim", dim),
            ("depth", depth),
            ("dim_head", dim_head),
            ("heads", heads),
            ("num_time_embeds", num_time_embeds),
            ("num_image_embeds", num_image_embeds),
            ("num_text_embeds", num_text_embeds),
            ("max_text_len", max_text_len),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_timesteps is not None and (isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1):
            raise ValueError(f"num_timesteps must be None or a positive integer, got {num_timesteps!r}")
        if self_cond and layout == "1.1.0":
            raise ValueError("self_cond=True needs layout '1.15.6': 1.1.0-era priors have no self-conditioning")
        if linear_text_skip and layout == "1.1.0":
            raise ValueError("linear_text_skip=True needs layout '1.15.6' (an extension of 1.15.6-style networks)")

        self.dim = dim
        self.num_timesteps = num_timesteps
        self.num_time_embeds = num_time_embeds
        self.num_image_embeds = num_image_embeds
        self.num_text_embeds = num_text_embeds
        self.max_text_len = max_text_len
        self.self_cond = self_cond
        self.continuous_embedded_time = num_timesteps is None

        if num_timesteps is None:
            time_in: nn.Module = nn.Sequential(SinusoidalPosEmb(dim), MLP(dim, dim * num_time_embeds))
        else:
            time_in = nn.Embedding(num_timesteps, dim * num_time_embeds)
        self.to_time_embeds = nn.Sequential(time_in, _ToTokens(num_time_embeds))

        def split(n: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(dim, dim * n) if n > 1 else nn.Identity(), _ToTokens(n))

        self.to_text_embeds = split(num_text_embeds)
        self.to_image_embeds = split(num_image_embeds)

        self.learned_query = nn.Parameter(torch.randn(dim))
        if layout == "1.15.6":
            self.null_text_encodings = nn.Parameter(torch.randn(1, max_text_len, dim))
            self.null_text_embeds = nn.Parameter(torch.randn(1, num_text_embeds, dim))
            self.null_image_embed = nn.Parameter(torch.randn(1, dim))
        else:
            self.null_text_embed = nn.Parameter(torch.randn(1, max_text_len, dim))

        self.causal_transformer = CausalTransformer(
            dim=dim,
            depth=depth,
            dim_head=dim_head,
            heads=heads,
            ff_mult=ff_mult,
            norm_in=norm_in,
            norm_out=norm_out,
            attn_dropout=attn_dropout,
            ff_dropout=ff_dropout,
            final_proj=final_proj,
            normformer=normformer,
            rotary_emb=rotary_emb,
            layout=layout,
        )
        self.text_skip = nn.Linear(dim, dim, bias=False) if linear_text_skip else None
        if self.text_skip is not None:
            nn.init.zeros_(self.text_skip.weight)  # starts as the plain network

    @property
    def has_unconditional_branch(self) -> bool:
        """Whether dropping the conditioning changes the output (False for layout "1.1.0")."""
        return self.layout != "1.1.0"

    @property
    def num_tokens(self) -> int:
        """Sequence length seen by the transformer."""
        return (
            self.max_text_len
            + self.num_text_embeds
            + self.num_time_embeds
            + self.num_image_embeds
            + int(self.self_cond)
            + 1
        )

    # ------------------------------------------------------------------ inputs

    def _keep_mask(self, b: int, drop_prob: float, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        if drop_prob == 0.0:
            return torch.ones(b, dtype=torch.bool, device=device)
        if drop_prob == 1.0:
            return torch.zeros(b, dtype=torch.bool, device=device)
        return torch.rand(b, generator=generator, device=device) < (1.0 - drop_prob)

    def _text_encoding_tokens(
        self, text_encodings: torch.Tensor | None, text_keep: torch.Tensor, b: int, like: torch.Tensor
    ) -> torch.Tensor:
        """(b, max_text_len, dim): encodings, null rows at padding (and, 1.15.6, dropped samples)."""
        L = self.max_text_len
        if text_encodings is None:
            text_encodings = like.new_zeros(b, 0, self.dim)
        text_encodings = text_encodings[:, :L]
        present = (text_encodings != 0).any(dim=-1)  # (b, n) padding = all features exactly 0
        text_encodings = text_encodings.to(like.dtype)
        pad = L - text_encodings.shape[1]
        if pad > 0:
            text_encodings = torch.cat((text_encodings, text_encodings.new_zeros(b, pad, self.dim)), dim=1)
            present = torch.cat((present, present.new_zeros(b, pad)), dim=1)
        if self.layout == "1.15.6":
            keep = present & text_keep[:, None]
            null = self.null_text_encodings
        else:
            keep = present
            null = self.null_text_embed
        return torch.where(keep[..., None], text_encodings, null.to(like.dtype))

    # ------------------------------------------------------------------ forward

    def _prefix_tokens(
        self, text_embed: torch.Tensor, text_encodings: torch.Tensor | None, text_keep: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """(b, max_text_len + num_text_embeds, dim): [text encodings, text embedding] tokens."""
        b = text_embed.shape[0]
        like = text_embed.to(dtype)
        text_tokens = self.to_text_embeds(like)  # (b, n_txt, d)
        encodings = self._text_encoding_tokens(text_encodings, text_keep, b, like)
        if self.layout == "1.15.6":
            text_tokens = torch.where(text_keep[:, None, None], text_tokens, self.null_text_embeds.to(dtype))
        return torch.cat((encodings, text_tokens), dim=1)

    def _suffix_tokens(
        self,
        image_embed: torch.Tensor,
        diffusion_timesteps: torch.Tensor,
        self_cond: torch.Tensor | None,
        image_keep: torch.Tensor,
    ) -> torch.Tensor:
        """(b, n_time + n_img + self_cond + 1, dim): [time, noised image, (self-cond), query]."""
        b, dtype = image_embed.shape[0], image_embed.dtype
        image_tokens = self.to_image_embeds(image_embed)  # (b, n_img, d)
        if self.layout == "1.15.6":
            image_tokens = torch.where(image_keep[:, None, None], image_tokens, self.null_image_embed.to(dtype))
        if self.continuous_embedded_time:
            time_tokens = self.to_time_embeds(diffusion_timesteps.float())
        else:
            time_tokens = self.to_time_embeds(diffusion_timesteps.long())
        tokens = [time_tokens.to(dtype), image_tokens]
        if self.self_cond:
            sc = self_cond if self_cond is not None else torch.zeros_like(image_embed)
            tokens.append(sc.to(dtype)[:, None, :])
        tokens.append(self.learned_query.to(dtype).expand(b, 1, self.dim))
        return torch.cat(tokens, dim=1)

    def _forward_masked(
        self,
        image_embed: torch.Tensor,
        diffusion_timesteps: torch.Tensor,
        text_embed: torch.Tensor,
        text_encodings: torch.Tensor | None,
        self_cond: torch.Tensor | None,
        text_keep: torch.Tensor,
        image_keep: torch.Tensor,
    ) -> torch.Tensor:
        """The full-sequence (uncached) pass; (b, dim)."""
        prefix = self._prefix_tokens(text_embed, text_encodings, text_keep, image_embed.dtype)
        suffix = self._suffix_tokens(image_embed, diffusion_timesteps, self_cond, image_keep)
        out = self.causal_transformer(torch.cat((prefix, suffix), dim=1), last_only=True)
        return self._add_text_skip(out, self._text_skip_term(text_embed), text_keep)

    def _text_skip_term(self, text_embed: torch.Tensor) -> torch.Tensor | None:
        """(b, dim) W·text_embed, or None without ``linear_text_skip``."""
        return None if self.text_skip is None else self.text_skip(text_embed)

    @staticmethod
    def _add_text_skip(out: torch.Tensor, skip: torch.Tensor | None, text_keep: torch.Tensor) -> torch.Tensor:
        """Adds the linear text skip to the rows whose text is kept (dropped rows get none)."""
        if skip is None:
            return out
        return out + torch.where(text_keep[:, None], skip.to(out.dtype), torch.zeros_like(out))

    def build_prefix_cache(self, text_embed: torch.Tensor, text_encodings: torch.Tensor | None = None) -> PriorPrefixCache:
        """Runs the text prefix through the transformer once, for reuse at every sampling step.

        Valid while the weights are unchanged; exact in eval mode (no dropout).

        Args:
            text_embed: (b, dim) pooled text embeddings.
            text_encodings: (b, seq_len, dim) per-token encodings (zeros at padding) or None.

        Returns:
            A :class:`PriorPrefixCache` with b conditional rows and one shared null row.
        """
        d = self.dim
        if text_embed.ndim != 2 or text_embed.shape[-1] != d:
            raise ValueError(f"text_embed must have shape (batch, {d}), got {tuple(text_embed.shape)}")
        b, device, dtype = text_embed.shape[0], text_embed.device, text_embed.dtype
        if text_encodings is not None and (
            text_encodings.ndim != 3 or text_encodings.shape[0] != b or text_encodings.shape[-1] != d
        ):
            raise ValueError(f"text_encodings must have shape ({b}, seq_len, {d}), got {tuple(text_encodings.shape)}")
        n, tr = self.num_tokens, self.causal_transformer
        keep = torch.ones(b, dtype=torch.bool, device=device)
        cond = tr.build_prefix(self._prefix_tokens(text_embed, text_encodings, keep, dtype), n)
        null = None
        if self.has_unconditional_branch:  # every text input is replaced: one row serves all
            drop = torch.zeros(1, dtype=torch.bool, device=device)
            enc = None if text_encodings is None else text_encodings[:1]
            null = tr.build_prefix(self._prefix_tokens(text_embed[:1], enc, drop, dtype), n)
        return PriorPrefixCache(cond, null, self._text_skip_term(text_embed.to(dtype)))

    def _forward_cached(
        self,
        image_embed: torch.Tensor,
        diffusion_timesteps: torch.Tensor,
        self_cond: torch.Tensor | None,
        cache: PriorPrefixCache,
        text_keep: torch.Tensor,
        image_keep: torch.Tensor,
    ) -> torch.Tensor:
        """The suffix-only pass after a cached prefix; (b, dim)."""
        prefix = cache.cond
        if cache.null is not None and not bool(text_keep.all()):
            prefix = cache.cond.select(text_keep, cache.null)
        suffix = self._suffix_tokens(image_embed, diffusion_timesteps, self_cond, image_keep)
        out = self.causal_transformer.forward_suffix(suffix, prefix)
        return self._add_text_skip(out, cache.text_skip, text_keep)

    def forward(
        self,
        image_embed: torch.Tensor,
        diffusion_timesteps: torch.Tensor,
        *,
        text_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
        text_cond_drop_prob: float = 0.0,
        image_cond_drop_prob: float = 0.0,
        cond_drop_prob: float | None = None,
        generator: torch.Generator | None = None,
        prefix_cache: PriorPrefixCache | bool | None = None,
    ) -> torch.Tensor:
        """Predicts the network target (x0, ε or v, as the wrapper trains it).

        Args:
            image_embed: noised image embedding x_t, (b, dim).
            diffusion_timesteps: (b,) integer timesteps (float allowed for continuous time).
            text_embed: pooled text embedding, (b, dim).
            text_encodings: per-token text encodings (b, seq_len, dim); positions whose features are
                all exactly 0 are padding. None = no text tokens (all positions null).
            self_cond: previous x0 estimate (b, dim) for self-conditioned networks (zeros if None).
            text_cond_drop_prob: probability per sample of replacing the text conditioning (text
                encodings and text embedding) by the learned nulls.
            image_cond_drop_prob: the same for the noised image embedding.
            cond_drop_prob: 1.1.0-style alias setting both probabilities.
            generator: random source for the drop masks.
            prefix_cache: from :meth:`build_prefix_cache`; when given, the text prefix is taken from
                it (text_embed / text_encodings are then ignored and may be omitted) and only the
                timestep, image, self-cond and query tokens are computed.

        Returns:
            (b, dim) output at the learned-query token.
        """
        if isinstance(prefix_cache, bool):
            prefix_cache = None  # True/False only choose the guided pass's strategy
        check_network_inputs(self, image_embed, diffusion_timesteps, text_embed, text_encodings, self_cond, prefix_cache)
        text_p, image_p = drop_probs(text_cond_drop_prob, image_cond_drop_prob, cond_drop_prob)
        b, device = image_embed.shape[0], image_embed.device
        if self.has_unconditional_branch:
            text_keep = self._keep_mask(b, text_p, device, generator)
            image_keep = self._keep_mask(b, image_p, device, generator)
        else:
            text_keep = image_keep = torch.ones(b, dtype=torch.bool, device=device)
        if prefix_cache is not None:
            return self._forward_cached(image_embed, diffusion_timesteps, self_cond, prefix_cache, text_keep, image_keep)
        return self._forward_masked(
            image_embed, diffusion_timesteps, text_embed, text_encodings, self_cond, text_keep, image_keep
        )

    def forward_with_cond_scale(
        self,
        image_embed: torch.Tensor,
        diffusion_timesteps: torch.Tensor,
        *,
        cond_scale: float = 1.0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Classifier-free guided output (reference API; Ho & Salimans 2022, eq. 6) through
        :func:`~dalle2_pytorch.diffusion.guided_forward`. Other arguments as in :meth:`forward` and
        :meth:`forward_cond_and_null`. Layout "1.1.0" has no unconditional branch: a cond_scale other
        than 1 warns and returns the conditional output. Returns (b, dim)."""
        return guided_forward(self, image_embed, diffusion_timesteps, cond_scale=cond_scale, **kwargs)

    def forward_cond_and_null(
        self,
        image_embed: torch.Tensor,
        diffusion_timesteps: torch.Tensor,
        *,
        text_embed: torch.Tensor | None = None,
        text_encodings: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None,
        text_cond_drop_prob: float = 0.0,
        image_cond_drop_prob: float = 0.0,
        cond_drop_prob: float | None = None,
        generator: torch.Generator | None = None,
        prefix_cache: PriorPrefixCache | bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional output (arguments as in :meth:`forward`) and the null output (text and
        image conditioning dropped).

        `prefix_cache`: a :class:`PriorPrefixCache` to reuse; None (default) splits the pass at the
        text prefix in eval mode (the null prefix, the same for every row, is computed once, and when
        the null branch is the same for every row it is computed for one row and broadcasts); False
        runs the plain full-sequence passes (conditional and null as one batch of 2b).

        Returns:
            cond (b, dim) and null (b, dim) or (1, dim).
        """
        if prefix_cache is not None and not isinstance(prefix_cache, (PriorPrefixCache, bool)):
            raise TypeError(f"prefix_cache must be a PriorPrefixCache, a bool or None, got {type(prefix_cache).__name__}")
        cache = prefix_cache if isinstance(prefix_cache, PriorPrefixCache) else None
        check_network_inputs(self, image_embed, diffusion_timesteps, text_embed, text_encodings, self_cond, cache)
        text_p, image_p = drop_probs(text_cond_drop_prob, image_cond_drop_prob, cond_drop_prob)
        b, device = image_embed.shape[0], image_embed.device
        text_keep = self._keep_mask(b, text_p, device, generator)
        image_keep = self._keep_mask(b, image_p, device, generator)
        drop = torch.zeros(b, dtype=torch.bool, device=device)

        if cache is None and prefix_cache is None and not self.training:
            cache = self.build_prefix_cache(text_embed.to(image_embed.dtype), text_encodings)
        if cache is not None:
            cond = self._forward_cached(image_embed, diffusion_timesteps, self_cond, cache, text_keep, image_keep)
            null_cache = PriorPrefixCache(cache.null, None)  # no text skip: the null branch has no text
            t = diffusion_timesteps
            if (not self.self_cond or self_cond is None) and bool((t == t[:1]).all()):
                # the null pass sees neither x_t, nor the text, nor (here) a per-row self-cond: one row
                null = self._forward_cached(image_embed[:1], t[:1], None, null_cache, drop[:1], drop[:1])
            else:
                null = self._forward_cached(image_embed, t, self_cond, null_cache, drop, drop)
            return cond, null

        def twice(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.cat((x, x), dim=0)

        out = self._forward_masked(
            twice(image_embed),
            twice(diffusion_timesteps),
            twice(text_embed),
            twice(text_encodings),
            twice(self_cond),
            torch.cat((text_keep, drop)),
            torch.cat((image_keep, drop)),
        )
        return out[:b], out[b:]

    def forward_cond_and_negative(
        self,
        image_embed: torch.Tensor,
        diffusion_timesteps: torch.Tensor,
        *,
        negative: dict,
        self_cond: torch.Tensor | None = None,
        prefix_cache: PriorPrefixCache | bool | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional outputs for the prompt's conditioning and for a negative prompt's
        (``{**kwargs, **negative}``), as :func:`~dalle2_pytorch.diffusion.guided_forward` combines
        them for negative prompts. When both come as :class:`PriorPrefixCache` (the sampling path:
        ``prefix_cache=`` here and in `negative`), the two branches run as one batch of 2b rows over
        the joined caches; otherwise as two :meth:`forward` calls. Returns two (b, dim) tensors."""
        neg_cache = negative.get("prefix_cache")
        if isinstance(prefix_cache, PriorPrefixCache) and isinstance(neg_cache, PriorPrefixCache) and not kwargs:
            b = image_embed.shape[0]
            if neg_cache.batch_size != b or prefix_cache.batch_size != b:
                raise ValueError(f"prefix caches of {prefix_cache.batch_size} and {neg_cache.batch_size} rows for a batch of {b}")
            twice = lambda x: None if x is None else torch.cat((x, x), dim=0)  # noqa: E731
            out = self(
                twice(image_embed), twice(diffusion_timesteps), self_cond=twice(self_cond),
                prefix_cache=prefix_cache.cat(neg_cache),
            )
            return out[:b], out[b:]
        cond = self(image_embed, diffusion_timesteps, self_cond=self_cond, prefix_cache=prefix_cache, **kwargs)
        neg_kwargs = {"self_cond": self_cond, "prefix_cache": prefix_cache, **kwargs, **negative}
        return cond, self(image_embed, diffusion_timesteps, **neg_kwargs)
