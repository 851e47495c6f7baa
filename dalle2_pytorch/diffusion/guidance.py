"""Guidance and x_0 post-processing shared by the prior and the decoder.

* Classifier-free guidance: Ho & Salimans 2022. With the reference's convention
  ``null + (cond - null) * cond_scale``, ``cond_scale = 1 + w`` in the paper's notation; 1 disables it.
* Dynamic thresholding: Saharia et al. 2022 (Imagen), sec. 2.3.
* l2-norm clamp of CLIP image embeddings scaled by sqrt(d): the reference prior's option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["classifier_free_guidance", "dynamic_threshold", "l2norm_clamp", "static_threshold"]


def classifier_free_guidance(cond: torch.Tensor, null: torch.Tensor, cond_scale: float) -> torch.Tensor:
    """null + (cond - null) * cond_scale (elementwise, any shape)."""
    if cond_scale == 1:
        return cond
    return null + (cond - null) * cond_scale


def static_threshold(x_start: torch.Tensor) -> torch.Tensor:
    """Clamps x_0 to the data range [-1, 1]."""
    return x_start.clamp(-1.0, 1.0)


def dynamic_threshold(x_start: torch.Tensor, percentile: float = 0.95) -> torch.Tensor:
    """Imagen dynamic thresholding: s = max(1, quantile_p(|x_0|)) per sample; clamp to [-s, s], divide by s."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic_thres_percentile must be in (0, 1], got {percentile}")
    flat = x_start.reshape(x_start.shape[0], -1).abs().float()
    s = torch.quantile(flat, percentile, dim=-1).clamp(min=1.0).to(x_start.dtype)
    s = s.reshape(-1, *((1,) * (x_start.ndim - 1)))
    return x_start.clamp(-s, s) / s


def l2norm_clamp(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Projects embeddings (b, d) onto the sphere of radius `scale`."""
    return F.normalize(x, dim=-1) * scale
