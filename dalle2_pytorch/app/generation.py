"""What the page's buttons do, without gradio: checked settings, then `DALLE2` calls.

Every check raises :class:`PageInputError` (a ``ValueError``) with one line naming the bad field;
the page shows that line as an error message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from dalle2_pytorch.clip_adapters.score import clip_score
from dalle2_pytorch.dalle2 import DALLE2, to_pil_images
from dalle2_pytorch.diffusion import parse_sampler, sampler_names

__all__ = ["DEFAULT_SAMPLER", "PageDefaults", "PageInputError", "PageModel", "Settings", "sampler_choices"]

#: the sampler choice meaning "each model's own default"
DEFAULT_SAMPLER = "model default"


class PageInputError(ValueError):
    """Bad input on the page: one line naming the field."""


def sampler_choices() -> list[str]:
    """The sampler menu: the models' default, every registered sampler, and a few spacing specs."""
    names = list(sampler_names())
    examples = [f"{n}:{s}" for n, s in (("dpmpp_2m", "trailing"), ("ddim", "trailing"), ("euler", "karras"),
                                        ("unipc", "trailing")) if n in names]
    return [DEFAULT_SAMPLER, *names, *examples]


@dataclass(frozen=True)
class PageDefaults:
    """The settings the page opens with (`dream --serve` passes its own flags)."""

    prompt: str = ""
    seed: int = 0
    steps: int | None = None
    sampler: str | None = None
    prior_cond_scale: float = 1.0
    cond_scale: float = 1.0
    num_images: int = 4


@dataclass(frozen=True)
class Settings:
    """Checked generation settings (see :meth:`PageModel.check`)."""

    seed: int
    steps: int | None
    sampler: str | None
    prior_cond_scale: float
    cond_scale: float
    num_images: int

    @property
    def generator(self) -> torch.Generator:
        """A CPU generator seeded with `seed` (the same images on every device, as `dream`)."""
        return torch.Generator().manual_seed(self.seed)

    def describe(self) -> str:
        return (f"seed {self.seed}, sampler {self.sampler or DEFAULT_SAMPLER}, steps {self.steps or 'model default'}, "
                f"guidance prior {self.prior_cond_scale:g} / decoder {self.cond_scale:g}")


def _whole(value: Any, name: str) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise PageInputError(f"{name} is empty: enter a whole number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PageInputError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise PageInputError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _scale(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PageInputError(f"{name} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise PageInputError(f"{name} must be a number >= 0 (1 = no guidance), got {value!r}")
    return number


def _pil_to_tensor(image: Any, size: int) -> torch.Tensor:
    """A PIL image (or an (h, w, c) uint8 array) -> (3, size, size) in [0, 1]."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise PageInputError("the uploaded file is not an image")
    image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class PageModel:
    """A loaded prior + decoder + CLIP and the page's three actions.

    Args:
        chain: the `DALLE2` (its prior may be None: then only variations work).
        description: shown on the page (where the model came from).
        max_images: the largest number of images one click may ask for.
    """

    def __init__(self, chain: DALLE2, *, description: str = "", max_images: int = 8) -> None:
        self.chain = chain
        self.description = description
        self.max_images = max_images

    @property
    def clip(self) -> Any:
        return self.chain.clip

    @property
    def image_size(self) -> int:
        return int(self.chain.decoder.image_sizes[-1])

    def check(self, seed: Any, steps: Any, sampler: Any, prior_cond_scale: Any, cond_scale: Any,
              num_images: Any = 1) -> Settings:
        """Validates the settings fields; empty steps / the default sampler mean the models' own."""
        seed_value = _whole(seed, "seed")
        if seed_value < 0:
            raise PageInputError(f"seed must be >= 0, got {seed_value}")
        steps_value = None
        if steps is not None and not (isinstance(steps, str) and not steps.strip()):
            steps_value = _whole(steps, "steps")
            if steps_value < 1:
                raise PageInputError(f"steps must be at least 1, got {steps_value} (leave it empty for the model's default)")
        sampler_value = None if sampler is None else str(sampler).strip()
        if not sampler_value or sampler_value == DEFAULT_SAMPLER:
            sampler_value = None
        else:
            try:
                parse_sampler(sampler_value)
            except ValueError as e:
                raise PageInputError(str(e)) from None
        n = _whole(num_images, "number of images")
        if not 1 <= n <= self.max_images:
            raise PageInputError(f"number of images must be between 1 and {self.max_images}, got {n}")
        return Settings(seed_value, steps_value, sampler_value, _scale(prior_cond_scale, "prior guidance scale"),
                        _scale(cond_scale, "decoder guidance scale"), n)

    @staticmethod
    def _prompt(prompt: Any, what: str = "prompt") -> str:
        text = "" if prompt is None else str(prompt).strip()
        if not text:
            raise PageInputError(f"the {what} is empty: type what the image should show")
        return text

    def _require_prior(self) -> None:
        if self.chain.prior is None:
            raise PageInputError("this model has no prior: only image variations are available")

    def _scores(self, images: torch.Tensor, captions: Sequence[str]) -> list[float]:
        return [float(s) for s in clip_score(self.clip, images, list(captions)).cpu()]

    def text_to_image(self, prompt: Any, settings: Settings) -> list[tuple[Any, str]]:
        """`settings.num_images` images of `prompt` -> [(PIL image, caption with its CLIP score)]."""
        text = self._prompt(prompt)
        self._require_prior()
        images = self.chain(
            [text] * settings.num_images, cond_scale=settings.cond_scale, prior_cond_scale=settings.prior_cond_scale,
            generator=settings.generator, prior_steps=settings.steps, decoder_steps=settings.steps,
            prior_sampler=settings.sampler, decoder_sampler=settings.sampler,
        )
        scores = self._scores(images, [text] * settings.num_images)
        return [(pil, f"#{i + 1}  CLIP score {s:.1f}") for i, (pil, s) in enumerate(zip(to_pil_images(images), scores))]

    def variations(self, image: Any, caption: Any, settings: Settings) -> list[tuple[Any, str]]:
        """`settings.num_images` variations of an uploaded image (unCLIP sec. 3.1)."""
        if image is None:
            raise PageInputError("upload an image to make variations of")
        tensor = _pil_to_tensor(image, self.clip.image_size)[None].to(self.chain.decoder.device)
        text = "" if caption is None else str(caption).strip()
        images = self.chain.variations(
            tensor, settings.num_images, captions=[text] if self.chain.decoder.condition_on_text_encodings else None,
            cond_scale=settings.cond_scale, decoder_steps=settings.steps, decoder_sampler=settings.sampler,
            generator=settings.generator,
        )
        return [(pil, f"variation {i + 1}") for i, pil in enumerate(to_pil_images(images))]

    def _endpoint(self, prompt: Any, image: Any, which: str) -> Any:
        """An interpolation endpoint for `DALLE2.interpolate`: the image (a (c, s, s) tensor in [0, 1])
        if one is given, else the prompt (which needs a prior)."""
        if image is not None:
            return _pil_to_tensor(image, self.clip.image_size)
        text = self._prompt(prompt, f"{which} prompt (or image)")
        self._require_prior()
        return text

    def interpolate(self, start: tuple[Any, Any], end: tuple[Any, Any], frames: Any,
                    settings: Settings) -> list[tuple[Any, str]]:
        """Frames between two prompts or images (each endpoint: (prompt, image); the image wins),
        through `DALLE2.interpolate` (unCLIP sec. 3.2: slerp, every frame with the same noise)."""
        n = _whole(frames, "frames")
        if not 2 <= n <= 32:
            raise PageInputError(f"frames must be between 2 and 32, got {n}")
        a, b = self._endpoint(*start, "start"), self._endpoint(*end, "end")
        images = self.chain.interpolate(
            a, b, n, decoder_noise_seed=settings.seed, generator=settings.generator,
            prior_cond_scale=settings.prior_cond_scale, prior_steps=settings.steps, prior_sampler=settings.sampler,
            cond_scale=settings.cond_scale, decoder_steps=settings.steps, decoder_sampler=settings.sampler,
        )
        ts = [k / (n - 1) for k in range(n)]
        return [(pil, f"t = {t:.2f}") for pil, t in zip(to_pil_images(images), ts)]

    def summary(self) -> str:
        """One line about the loaded model (shown under the title)."""
        prior = self.chain.prior
        stages = self.chain.decoder.stages
        decoder_steps = "/".join(str(st.sample_timesteps or st.timesteps) for st in stages)
        prior_steps = "none" if prior is None else str(prior.sample_timesteps or prior.noise_scheduler.num_timesteps)
        sizes = " → ".join(f"{s}px" for s in self.chain.decoder.image_sizes)
        return (f"{self.description} — images {sizes}; default steps: prior {prior_steps}, decoder {decoder_steps}"
                f"{'' if prior is not None else ' (no prior: variations only)'}")

