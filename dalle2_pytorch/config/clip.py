"""CLIP adapter config (the `clip` section of prior and decoder configs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from .base import StrictModel

__all__ = ["AdapterConfig"]

ClipMake = Literal["openai", "open_clip", "x-clip", "small-clip", "coca"]


class AdapterConfig(StrictModel):
    """Which CLIP to wrap in an adapter; same schema as the reference's `AdapterConfig`."""

    make: ClipMake = "openai"
    """Adapter family: 'openai' (OpenAI CLIP), 'open_clip', 'x-clip', 'coca', or (extension)
    'small-clip': a saved torch-only small CLIP folder in `model` (the demo's)."""
    model: str = "ViT-L/14"
    """Architecture name, e.g. 'ViT-L/14' (openai) or 'ViT-H-14' (open_clip)."""
    base_model_kwargs: dict[str, Any] | None = None
    """Model arguments: required for 'x-clip' (the x-clip `CLIP` constructor arguments); for
    'openai' / 'open_clip' / 'coca' (an open_clip CoCa such as 'coca_ViT-B-32'), overrides of the
    open_clip model config."""
    pretrained: bool | str | None = True
    """(Extension) weights: true = default weights ('open_clip': the last tag open_clip lists for
    the architecture, as the reference did), false/null = random init, or an open_clip tag /
    local weights file."""

    @model_validator(mode="after")
    def _check_kwargs(self) -> AdapterConfig:
        # x-clip may instead name a saved model folder in `model` (checked when the adapter is built)
        saved_folder = self.make == "x-clip" and self.model not in (None, "", "ViT-L/14")
        if self.make == "x-clip" and not self.base_model_kwargs and not saved_folder:
            raise ValueError(
                "clip.make='x-clip' builds a model from scratch and needs clip.base_model_kwargs (its "
                "constructor arguments), or a saved model folder in clip.model"
            )
        if self.make == "small-clip" and self.model in (None, "", "ViT-L/14"):
            raise ValueError("clip.make='small-clip' needs the saved CLIP folder in clip.model")
        return self

    def create(self, **kwargs: Any) -> Any:
        """Builds the adapter with `dalle2_pytorch.clip_adapters.build_clip_adapter`.

        Args:
            **kwargs: forwarded to the adapter constructor (e.g. `device`).

        Returns:
            A `BaseClipAdapter` (frozen CLIP wrapper).
        """
        from dalle2_pytorch.clip_adapters import build_clip_adapter

        return build_clip_adapter(
            self.make,
            self.model,
            pretrained=self.pretrained,
            base_model_kwargs=self.base_model_kwargs,
            **kwargs,
        )
