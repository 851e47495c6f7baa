"""Conditioning and evaluation helpers of the decoder script.

* :class:`DecoderConditioner` — image embeddings from the shards' precomputed `.npy` files or from
  CLIP on the fly, and per-token text encodings from CLIP. Precomputed (pooled) text embeddings
  are never passed as `text_encodings` (the reference script did, issue #241).
* :func:`take_samples` — the first `n` samples of a loader.
* :func:`unet_validation_losses` — deterministic per-unet validation loss.
* :func:`side_by_side` — real / generated image pairs for sample grids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_pytorch.training.scripts.cli import ConfigError
from dalle2_pytorch.training.scripts.runtime import no_cond_dropout

__all__ = ["DecoderConditioner", "iterate_limited", "side_by_side", "take_samples", "unet_validation_losses"]


class DecoderConditioner:
    """Builds the decoder's conditioning for a batch `(images, emb, [captions])`.

    Args:
        decoder: the (unwrapped) `Decoder`.
        clip: CLIP adapter, or None when every needed embedding is precomputed.
        device: the run's device.
        unet_numbers: the trained unets (1-based; default all): only their conditioning is built, so
            a run that trains only upsamplers (which the decoder does not condition on image
            embeddings) needs neither precomputed embeddings nor a CLIP.
    """

    def __init__(self, decoder: nn.Module, clip: Any, device: torch.device,
                 unet_numbers: Sequence[int] | None = None) -> None:
        self.clip = clip
        self.device = device
        unets = list(decoder.unets)
        if unet_numbers is not None:
            unets = [unets[n - 1] for n in unet_numbers]
        self.needs_image_embed = not getattr(decoder, "unconditional", False) and any(
            getattr(u, "cond_on_image_embeds", False) for u in unets
        )
        self.needs_text = bool(getattr(decoder, "condition_on_text_encodings", False)) and any(
            getattr(u, "cond_on_text_encodings", False) for u in unets
        )
        if self.needs_text and clip is None:
            raise ConfigError(
                "text-conditioned unets need per-token text encodings, which only a CLIP gives "
                "(data.text_embeddings_url holds pooled embeddings, not encodings; see reference issue #241): "
                "set decoder.clip"
            )
        embed_dims = {u.image_embed_dim for u in unets if getattr(u, "cond_on_image_embeds", False)}
        if clip is not None and self.needs_image_embed and embed_dims != {int(clip.dim_latent)}:
            raise ConfigError(
                f"decoder.clip embeds images to {clip.dim_latent} dims but the unets expect {sorted(embed_dims)}"
            )
        text_dims = {u.text_embed_dim for u in unets if getattr(u, "cond_on_text_encodings", False)}
        if clip is not None and self.needs_text and text_dims != {int(clip.text_encodings_dim)}:
            raise ConfigError(
                f"decoder.clip gives {clip.text_encodings_dim}-d text encodings but the text-conditioned unets "
                f"have text_embed_dim {sorted(text_dims)}"
            )

    @property
    def extra_keys(self) -> tuple[str, ...]:
        """Sample fields the loaders must return: the caption when text is embedded."""
        return ("txt",) if self.needs_text else ()

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, emb: dict[str, torch.Tensor], captions: Sequence[str] | None
    ) -> dict[str, torch.Tensor]:
        """`{"image_embed": (b, d)?, "text_encodings": (b, n, d_text)?}` on the run's device."""
        out: dict[str, torch.Tensor] = {}
        if self.needs_image_embed:
            if "img" in emb:
                out["image_embed"] = emb["img"].float().to(self.device)
            else:
                if self.clip is None:
                    raise ConfigError("no precomputed image embeddings (data.img_embeddings_url) and no decoder.clip")
                embedded = self.clip.embed_image(images.to(self.clip.device)).image_embed
                out["image_embed"] = embedded.float().to(self.device)
        if self.needs_text:
            if captions is None:
                raise ValueError("the batch has no captions (txt) to embed")
            encodings = self.clip.embed_text(self.clip.tokenize(list(captions))).text_encodings
            out["text_encodings"] = encodings.float().to(self.device)
        return out


def _split(batch: Any) -> tuple[torch.Tensor, dict, list[str] | None]:
    images, emb, *extras = batch
    return images, (emb if isinstance(emb, dict) else {}), (list(extras[0]) if extras else None)


def take_samples(loader: Any, n: int) -> tuple[torch.Tensor, dict, list[str] | None] | None:
    """The first `n` samples of `loader` (fewer if it is shorter) as one batch; None if empty."""
    images, embs, captions = [], [], []
    have = 0
    for batch in loader:
        im, emb, caps = _split(batch)
        k = min(n - have, im.shape[0])
        images.append(im[:k])
        embs.append({key: v[:k] for key, v in emb.items()})
        if caps is not None:
            captions.extend(caps[:k])
        have += k
        if have >= n:
            break
    if not images:
        return None
    emb = {key: torch.cat([e[key] for e in embs]) for key in embs[0]}
    return torch.cat(images), emb, (captions or None)


def iterate_limited(loader: Any, limit: int | None) -> Iterator[tuple[torch.Tensor, dict, list[str] | None]]:
    """Batches of `loader` until `limit` samples were produced (the last one cut)."""
    have = 0
    for batch in loader:
        images, emb, captions = _split(batch)
        if limit is not None:
            k = min(limit - have, images.shape[0])
            if k <= 0:
                return
            images, emb = images[:k], {key: v[:k] for key, v in emb.items()}
            captions = captions[:k] if captions is not None else None
        have += images.shape[0]
        yield images, emb, captions


@torch.no_grad()
def unet_validation_losses(
    decoder: nn.Module,
    loader: Any,
    conditioner: DecoderConditioner,
    unet_numbers: Sequence[int],
    limit: int | None,
    seed: int,
    device: torch.device,
) -> tuple[dict[int, float], int]:
    """Mean loss of each unet over (at most `limit` samples of) a split: eval mode, no
    conditioning dropout, fixed generator.

    Returns:
        ({unet number: mean loss}, samples) for this process.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    totals = {u: 0.0 for u in unet_numbers}
    count = 0
    with no_cond_dropout(decoder):
        for images, emb, captions in iterate_limited(loader, limit):
            cond = conditioner(images, emb, captions)
            images = images.to(device)
            for u in unet_numbers:
                totals[u] += float(decoder(images, unet_number=u, generator=generator, **cond)) * images.shape[0]
            count += images.shape[0]
    return ({u: (v / count if count else float("nan")) for u, v in totals.items()}), count


def side_by_side(real: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Interleaves real and generated images (real resized to the generated size): a grid with
    two columns shows each real image next to the sample drawn from its embedding.

    Returns:
        (2b, c, s, s) in [0, 1].
    """
    size = generated.shape[-2:]
    real = real.float().to(generated.device)
    if real.shape[-2:] != size:
        real = F.interpolate(real, size=size, mode="bilinear", antialias=True, align_corners=False)
    pairs = torch.stack((real.clamp(0, 1), generated.float().clamp(0, 1)), dim=1)
    return pairs.flatten(0, 1)
