"""The decoder script's CLIP score: a torchmetrics ``Metric`` over the model's own CLIP adapter.

The score of one image is :func:`dalle2_pytorch.clip_adapters.score.clip_score`,
``100 * max(cos(image_embed, text_embed), 0)`` (Hessel et al. 2021 with torchmetrics' weight 100);
the metric is its mean over every (generated image, caption) pair seen since the last ``reset``.
Being a torchmetrics ``Metric``, the sums are added over processes in ``compute`` (multi-GPU runs).
torchmetrics' own ``CLIPScore`` would download a Hugging Face CLIP; this one needs no network.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torchmetrics import Metric

from dalle2_pytorch.clip_adapters.score import clip_score

__all__ = ["AdapterCLIPScore"]


class AdapterCLIPScore(Metric):
    """Mean CLIP score of images against their captions under `clip` (a ``BaseClipAdapter``)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    score_sum: torch.Tensor
    n_samples: torch.Tensor

    def __init__(self, clip: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clip = clip
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: torch.Tensor, captions: Sequence[str]) -> None:
        """Adds (b, c, h, w) images in [0, 1] with their b captions."""
        scores = clip_score(self.clip, images, captions)
        self.score_sum += scores.double().sum().to(self.score_sum.device)
        self.n_samples += scores.numel()

    def compute(self) -> torch.Tensor:
        if int(self.n_samples) == 0:
            raise ValueError("no (image, caption) pair was scored: the validation samples carry no captions (txt)")
        return (self.score_sum / self.n_samples).float()
