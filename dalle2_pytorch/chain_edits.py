"""What people do with an unCLIP model besides text-to-image: the latent edits of the DALLE2 chain.

Ramesh et al. 2022 ("Hierarchical Text-Conditional Image Generation with CLIP Latents"), sec. 3:

* :meth:`LatentEditsMixin.interpolate` (sec. 3.2): frames decoded from slerp(z_a, z_b, θ) between the
  CLIP image embeddings of two prompts or images, all with the same decoder noise, so the frames
  change smoothly. (The paper fixes the noise by DDIM-inverting one image; here, as in Karlo's
  variations, the noise is a fixed seed.)
* :meth:`LatentEditsMixin.mix`: one embedding from several prompts and images with weights, as
  Kandinsky 2.x's ``prior.interpolate(images_and_prompts, weights)``.
* :meth:`LatentEditsMixin.text_diff` (sec. 3.3): the image embedding rotated toward the text diff
  z_d = norm(z_t(to) - z_t(from)) by slerp(z_i, z_d, θ), decoded with fixed noise; θ = 0 is the
  plain variation with that noise.
* :meth:`LatentEditsMixin.inpaint`: RePaint (Lugmayr et al. 2022) through the decoder cascade,
  guided by a prompt's prior embedding (or the image's own embedding).

The maths (slerp, text-diff direction, weighted mix) lives in
:mod:`dalle2_pytorch.diffusion.clip_latents`; this module turns prompts and images into embeddings,
embeddings into images, and keeps the decoder noise fixed (``DALLE2.decode(noise_seed=)``).

An input is a prompt (`str`) or an image: a (c, h, w) / (1, c, h, w) tensor in [0, 1] (uint8
0..255 accepted), a PIL image, or an image file path given as `os.PathLike` (`pathlib.Path`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence, Union

import torch
import torch.nn.functional as F

from dalle2_pytorch.diffusion.clip_latents import check_fractions, slerp, text_diff_direction, weighted_mix
from dalle2_pytorch.diffusion.samplers import INPAINT_SAMPLERS, parse_sampler

__all__ = ["ChainInput", "LatentEditsMixin", "check_prompts", "image_batch", "is_prompt", "noise_seeds"]

# a prompt (str) or an image (tensor in [0, 1], PIL image, or os.PathLike image file)
ChainInput = Union[str, torch.Tensor, os.PathLike, Any]

StageSteps = Union[int, Sequence[Union[int, None]], None]
StageSamplers = Union[str, Sequence[Union[str, None]], None]


def is_prompt(item: Any) -> bool:
    """Whether an input is a prompt (a `str`); paths to images must be `os.PathLike`."""
    return isinstance(item, str)


def check_prompts(text: Any) -> None:
    """Prompts must be non-empty strings (token tensors pass)."""
    if torch.is_tensor(text):
        return
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError("prompts must be non-empty strings")


def _one_image(item: Any) -> torch.Tensor:
    """(1, c, h, w) float in [0, 1] from a tensor, a PIL image or an image file path."""
    if torch.is_tensor(item):
        x = item if item.ndim == 4 else item.unsqueeze(0) if item.ndim == 3 else None
        if x is None:
            raise ValueError(f"an image tensor must be (c, h, w) or (b, c, h, w), got shape {tuple(item.shape)}")
        if x.dtype == torch.uint8:
            return x.float() / 255.0
        if not x.is_floating_point():
            raise ValueError(f"an image tensor must be float in [0, 1] or uint8, got {x.dtype}")
        if x.numel() and (float(x.min()) < -1e-4 or float(x.max()) > 1 + 1e-4):
            raise ValueError("image tensors must hold values in [0, 1]")
        return x
    if isinstance(item, (os.PathLike, str)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(item) as im:
                item = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"could not read image {os.fspath(item)}: {e}") from e
    if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
        import numpy as np

        arr = np.asarray(item.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()
    raise TypeError(f"an image must be a tensor, a PIL image or an os.PathLike file path, got {type(item).__name__}")


def image_batch(images: Any) -> torch.Tensor:
    """(b, c, h, w) float images in [0, 1] from a tensor or a sequence of images of one size."""
    if torch.is_tensor(images) or isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
        return _one_image(images)
    batch = [_one_image(x) for x in images]
    if not batch:
        raise ValueError("no images given")
    if len({tuple(x.shape[1:]) for x in batch}) > 1:
        raise ValueError(f"images of different sizes {[tuple(x.shape[1:]) for x in batch]}: resize them to one size")
    return torch.cat(batch)


def noise_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """n decoder-noise seeds: one seed for every row, or exactly n of them."""
    seeds = [seed] * n if isinstance(seed, int) and not isinstance(seed, bool) else list(seed)
    if len(seeds) != n or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"noise seeds must be one integer >= 0 or {n} of them, got {seed!r}")
    return seeds


def _draw_seed(generator: torch.Generator | None) -> int:
    """A decoder-noise seed drawn from `generator` (deterministic given its seed)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device).item())


def interpolation_positions(steps: int | Sequence[float]) -> list[float]:
    """Frame positions in [0, 1]: `steps` evenly spaced from 0 to 1 (both ends), or the given ones."""
    if isinstance(steps, int) and not isinstance(steps, bool):
        if steps < 2:
            raise ValueError(f"an interpolation needs at least 2 frames, got steps={steps}")
        return [i / (steps - 1) for i in range(steps)]
    return check_fractions(steps, "interpolation positions")


class LatentEditsMixin:
    """Interpolation, weighted mixes, text diffs and inpainting for :class:`~dalle2_pytorch.DALLE2`.

    Shared keyword arguments: `generator` (the prior's noise; also draws the decoder-noise seed
    when `decoder_noise_seed` is None), `decoder_noise_seed` (see ``DALLE2.decode(noise_seed=)``),
    `caption` (what a text-conditioned decoder reads for every output; default an empty caption,
    as for variations), the prior settings `prior_cond_scale`, `prior_steps`, `prior_sampler`,
    `negative_prompt`, and the decoder settings `cond_scale`, `decoder_steps`, `decoder_sampler`,
    `progress` (as in ``DALLE2.forward``). Each returns images (k, c, s, s) in [0, 1].
    """

    def _decode_fixed(self, embeds, seed, generator, caption, cond_scale, decoder_steps, decoder_sampler, progress):
        seed = _draw_seed(generator) if seed is None else seed
        tokens = self._caption_tokens(None if caption is None else [caption], 1, embeds.shape[0])
        return self.decode(embeds, tokens=tokens, cond_scale=cond_scale, steps=decoder_steps, sampler=decoder_sampler,
                           noise_seed=seed, progress=progress)

    @torch.no_grad()
    def interpolate(
        self,
        a: ChainInput | Sequence[ChainInput],
        b: ChainInput | Sequence[float] | None = None,
        steps: int | Sequence[float] = 8,
        *,
        decoder_noise_seed: int | None = None,
        generator: torch.Generator | None = None,
        caption: str | None = None,
        prior_cond_scale: float = 1.0,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        negative_prompt: str | None = None,
        cond_scale: float | Sequence[float] = 1.0,
        decoder_steps: StageSteps = None,
        decoder_sampler: StageSamplers = None,
        progress: bool | None = False,
    ) -> torch.Tensor:
        """Frames between two prompts or images (unCLIP sec. 3.2), every frame with the same noise.

        The inputs are embedded by :meth:`embed` (prompts through the prior, `a` first), frame j is
        decoded from slerp(z_a, z_b, θ_j). θ = 0 and θ = 1 give exactly z_a and z_b, so the end
        frames are the inputs' own generations with that noise: for an image, its variation
        ``variations(image, decoder_noise_seed=seed)``; for a prompt `a`, ``forward(a,
        generator=<same seed>, decoder_noise_seed=seed)``.

        ``interpolate(inputs, weights)`` (a list of inputs first) is :meth:`mix`, as in Kandinsky.

        Args:
            a, b: the two endpoints, each a prompt or an image.
            steps: number of frames (θ evenly spaced in [0, 1], both ends included), or the θ
                values themselves.

        Returns:
            (frames, c, s, s) in [0, 1].
        """
        if isinstance(a, (list, tuple)):
            if b is None:
                raise ValueError("interpolate(inputs, weights) needs one weight per input")
            return self.mix(a, b, decoder_noise_seed=decoder_noise_seed, generator=generator, caption=caption,
                            prior_cond_scale=prior_cond_scale, prior_steps=prior_steps, prior_sampler=prior_sampler,
                            negative_prompt=negative_prompt, cond_scale=cond_scale, decoder_steps=decoder_steps,
                            decoder_sampler=decoder_sampler, progress=progress)
        if b is None:
            raise ValueError("interpolate needs two endpoints (a prompt or an image each)")
        positions = interpolation_positions(steps)
        embeds = self.embed([a, b], generator=generator, prior_cond_scale=prior_cond_scale, prior_steps=prior_steps,
                            prior_sampler=prior_sampler, negative_prompt=negative_prompt, progress=progress)
        path = slerp(embeds[0], embeds[1], positions)
        return self._decode_fixed(path, decoder_noise_seed, generator, caption, cond_scale, decoder_steps,
                                  decoder_sampler, progress)

    @torch.no_grad()
    def mix(
        self,
        inputs: Sequence[ChainInput],
        weights: Sequence[float],
        num_images: int = 1,
        *,
        decoder_noise_seed: int | None = None,
        generator: torch.Generator | None = None,
        caption: str | None = None,
        prior_cond_scale: float = 1.0,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        negative_prompt: str | None = None,
        cond_scale: float | Sequence[float] = 1.0,
        decoder_steps: StageSteps = None,
        decoder_sampler: StageSamplers = None,
        progress: bool | None = False,
    ) -> torch.Tensor:
        """Images of a weighted mix of prompts and images (Kandinsky-style interpolation).

        The inputs' embeddings (:meth:`embed`) are mixed by
        :func:`~dalle2_pytorch.diffusion.clip_latents.weighted_mix`; image k is decoded with seed
        ``decoder_noise_seed + k``.

        Args:
            inputs: n >= 1 prompts and images.
            weights: n weights >= 0 (normalised; need not sum to 1).
            num_images: images of the mix.

        Returns:
            (num_images, c, s, s) in [0, 1].
        """
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        if len(weights) != len(inputs):
            raise ValueError(f"{len(weights)} weights given for {len(inputs)} inputs")
        embeds = self.embed(list(inputs), generator=generator, prior_cond_scale=prior_cond_scale,
                            prior_steps=prior_steps, prior_sampler=prior_sampler, negative_prompt=negative_prompt,
                            progress=progress)
        mixed = weighted_mix(embeds, weights)[None].expand(num_images, -1)
        seed = _draw_seed(generator) if decoder_noise_seed is None else decoder_noise_seed
        tokens = self._caption_tokens(None if caption is None else [caption], 1, num_images)
        return self.decode(mixed, tokens=tokens, cond_scale=cond_scale, steps=decoder_steps, sampler=decoder_sampler,
                           noise_seed=[seed + k for k in range(num_images)], progress=progress)

    @torch.no_grad()
    def text_diff(
        self,
        image: ChainInput,
        from_prompt: str,
        to_prompt: str,
        amounts: Sequence[float] = (0.0, 0.25, 0.5),
        *,
        decoder_noise_seed: int | None = None,
        generator: torch.Generator | None = None,
        caption: str | None = None,
        cond_scale: float | Sequence[float] = 1.0,
        decoder_steps: StageSteps = None,
        decoder_sampler: StageSamplers = None,
        progress: bool | None = False,
    ) -> torch.Tensor:
        """An image moved toward a new caption (unCLIP sec. 3.3, "text diffs").

        z_d = norm(z_t(to_prompt) - z_t(from_prompt)) from CLIP's text embeddings; output j is
        decoded from slerp(z_i, z_d, amounts[j]) with the same noise for every amount. Amount 0 is
        exactly ``variations(image, decoder_noise_seed=seed)``; the paper shows amounts up to
        about 0.5 (beyond that the image is lost).

        Args:
            image: one image.
            from_prompt: a caption of the image as it is; to_prompt: the caption to move toward.
            amounts: θ values in [0, 1].

        Returns:
            (len(amounts), c, s, s) in [0, 1].
        """
        positions = check_fractions(amounts, "amounts")
        check_prompts([from_prompt, to_prompt])
        clip = self._require_clip("text diffs")
        x = image_batch(image)
        if x.shape[0] != 1:
            raise ValueError(f"text_diff takes one image, got {x.shape[0]}")
        was_training = self.training
        self.eval()
        try:
            z_i = clip.embed_image(x.to(self.decoder.device)).image_embed[0]
            z_t = clip.embed_text(clip.tokenize([from_prompt, to_prompt]).to(self.decoder.device)).text_embed
            z_d = text_diff_direction(z_t[0], z_t[1]).to(z_i)
            path = slerp(z_i, z_d, positions)
            return self._decode_fixed(path, decoder_noise_seed, generator, caption, cond_scale, decoder_steps,
                                      decoder_sampler, progress)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def inpaint(
        self,
        image: ChainInput,
        mask: torch.Tensor,
        prompt: str | None = None,
        num_images: int = 1,
        *,
        generator: torch.Generator | None = None,
        decoder_noise_seed: int | None = None,
        prior_cond_scale: float = 1.0,
        prior_steps: int | None = None,
        prior_sampler: str | None = None,
        negative_prompt: str | None = None,
        cond_scale: float | Sequence[float] = 1.0,
        decoder_steps: StageSteps = None,
        decoder_sampler: StageSamplers = None,
        resample_times: int = 5,
        progress: bool | None = False,
    ) -> torch.Tensor:
        """Fills the masked-out part of an image (RePaint through the decoder cascade).

        Args:
            image: one square image (any size; each stage resizes it to its own).
            mask: (h, w) or (1, h, w) bool (or 0/1) at the image's size, True where the image is
                kept (the decoder's ``inpaint_mask`` convention); False pixels are generated.
            prompt: what to paint, through the prior (a text-conditioned decoder also reads it);
                None guides with the image's own CLIP embedding.
            num_images: images drawn (the prior draws one embedding per image).
            resample_times: RePaint's resampling count r per step.
            decoder_sampler: must support inpainting (ddpm, ddim); default: each stage's own sampler
                when it can inpaint, else DDIM.

        Returns:
            (num_images, c, s, s) in [0, 1].
        """
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images must be a positive integer, got {num_images!r}")
        x = image_batch(image)
        if x.shape[0] != 1:
            raise ValueError(f"inpaint takes one image, got {x.shape[0]}")
        if not torch.is_tensor(mask) or mask.ndim not in (2, 3) or tuple(mask.shape[-2:]) != tuple(x.shape[-2:]):
            raise ValueError(f"mask must be a (h, w) tensor matching the image's {tuple(x.shape[-2:])}")
        keep = mask.reshape(1, *mask.shape[-2:]).bool().expand(num_images, -1, -1).to(self.decoder.device)
        if decoder_sampler is None and self.decoder_sampler is None:
            decoder_sampler = [  # RePaint is exact with ddpm / ddim only (Lugmayr et al. 2022)
                st.sampler if st.sampler is None or parse_sampler(st.sampler)[0] in INPAINT_SAMPLERS else "ddim"
                for st in self.decoder.stage_settings
            ]
        was_training = self.training
        self.eval()
        try:
            if prompt is not None:
                check_prompts(prompt)
                tokens, text_encodings, embeds = self._prior_embed(
                    [prompt] * num_images, generator=generator, prior_cond_scale=prior_cond_scale,
                    prior_steps=prior_steps, prior_sampler=prior_sampler, negative_prompt=negative_prompt,
                    progress=progress,
                )
            else:
                clip = self._require_clip("inpainting without a prompt")
                seen = x.to(self.decoder.device)
                if min(seen.shape[-2:]) < clip.image_size:  # decoder-sized images may be smaller than CLIP's input
                    seen = F.interpolate(seen, size=(clip.image_size,) * 2, mode="bilinear", align_corners=False)
                embeds = clip.embed_image(seen.clamp(0, 1)).image_embed.expand(num_images, -1)
                tokens, text_encodings = self._caption_tokens(None, 1, num_images), None
            return self.decode(
                embeds, tokens=tokens, text_encodings=text_encodings, cond_scale=cond_scale, steps=decoder_steps,
                sampler=decoder_sampler, generator=generator,
                noise_seed=None if decoder_noise_seed is None else [decoder_noise_seed + k for k in range(num_images)],
                inpaint_image=x.expand(num_images, -1, -1, -1).to(self.decoder.device), inpaint_mask=keep,
                inpaint_resample_times=resample_times, progress=progress,
            )
        finally:
            self.train(was_training)
