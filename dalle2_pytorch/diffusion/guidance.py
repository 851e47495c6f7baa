"""Guidance and x_0 post-processing shared by the prior and the decoder.

* Classifier-free guidance: Ho & Salimans 2022, eq. 6. With the reference's convention
  ``null + (cond - null) * cond_scale``, ``cond_scale = 1 + w`` in the paper's notation; 1 disables it.
  :func:`guided_forward` is the one implementation: a network provides its conditional and null
  outputs (computed together, as one batch, by its ``forward_cond_and_null``) and this module
  combines them. :class:`GuidedModel` binds a network, its conditioning and the scale into the
  ``model(x_t, t, self_cond)`` callable that the denoiser builder wraps; samplers never see the scale.
* Negative prompts: the same formula with the null branch replaced by the network's conditional
  output for a negative conditioning (the negative prompt of Stable Diffusion and of Kandinsky
  2.x's prior): ``neg + (cond - neg) * cond_scale`` moves away from the negative text as well as
  towards the prompt. ``guided_forward(..., negative={...})`` takes the keyword arguments that
  replace the conditioning in that branch.
* Dynamic thresholding: Saharia et al. 2022 (Imagen), sec. 2.3.
* l2-norm clamp of CLIP image embeddings scaled by sqrt(d): the reference prior's option.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "GuidableNetwork",
    "GuidedModel",
    "check_cond_scale",
    "classifier_free_guidance",
    "dynamic_threshold",
    "forward_cond_and_negative",
    "guided_forward",
    "l2norm_clamp",
    "static_threshold",
]


class GuidableNetwork(Protocol):
    """A network that can run its conditional and its null (all conditioning dropped) branch at once.

    ``forward_cond_and_null`` takes the network's ``forward`` arguments and returns the two outputs;
    the null output may have batch size 1 when it is the same for every row (it broadcasts).
    ``has_unconditional_branch`` (optional, default True) is False for networks whose dropped
    conditioning never reached the weights (LAION's 1.1.0-era prior).
    ``forward_cond_and_negative(*args, negative=..., **kwargs)`` (optional) computes the conditional
    outputs for ``kwargs`` and for ``{**kwargs, **negative}`` together; without it
    :func:`guided_forward` makes two ``forward`` calls.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor: ...

    def forward_cond_and_null(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]: ...


def check_cond_scale(cond_scale: float, name: str = "cond_scale") -> float:
    """Validates a guidance scale: a finite number >= 0 (1 = no guidance, 0 = the null branch alone)."""
    if isinstance(cond_scale, bool) or not isinstance(cond_scale, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(cond_scale).__name__}")
    value = float(cond_scale)
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0 (1 = no guidance), got {cond_scale!r}")
    return value


def classifier_free_guidance(cond: torch.Tensor, null: torch.Tensor, cond_scale: float) -> torch.Tensor:
    """null + (cond - null) * cond_scale (elementwise; `null` may broadcast over the batch)."""
    if cond_scale == 1:
        return cond
    return null + (cond - null) * cond_scale


def forward_cond_and_negative(
    net: GuidableNetwork, *args: Any, negative: dict, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's conditional outputs for its conditioning `kwargs` and for the negative
    conditioning ``{**kwargs, **negative}``: one batched pass when the network provides
    ``forward_cond_and_negative``, else two ``forward`` calls."""
    batched = getattr(net, "forward_cond_and_negative", None)
    if batched is not None:
        return batched(*args, negative=negative, **kwargs)
    return net(*args, **kwargs), net(*args, **{**kwargs, **negative})


def guided_forward(
    net: GuidableNetwork, *args: Any, cond_scale: float = 1.0, negative: dict | None = None, **kwargs: Any
) -> torch.Tensor:
    """Classifier-free guided output of `net` for its ``forward`` arguments.

    At ``cond_scale == 1`` only the conditional pass runs. Otherwise the network's conditional and
    null branches run together (``net.forward_cond_and_null``) and are combined by
    :func:`classifier_free_guidance`. A network without an unconditional branch warns that guidance
    has no effect and returns its conditional output.

    `negative` (negative prompts): keyword arguments replacing the conditioning (e.g. the text
    embedding and encodings of a negative prompt, or a prefix cache built from them); the null
    branch is then the conditional output for that conditioning, so guidance also works for
    networks without an unconditional branch.
    """
    if cond_scale == 1:
        return net(*args, **kwargs)
    if negative is not None:
        cond, neg = forward_cond_and_negative(net, *args, negative=negative, **kwargs)
        return classifier_free_guidance(cond, neg, cond_scale)
    if not getattr(net, "has_unconditional_branch", True):
        warnings.warn(
            f"cond_scale={cond_scale} has no effect: this network has no unconditional branch "
            "(its conditioning dropout never reached the weights, as in LAION's 1.1.0-era prior)",
            UserWarning,
            stacklevel=3,
        )
        return net(*args, **kwargs)
    cond, null = net.forward_cond_and_null(*args, **kwargs)
    return classifier_free_guidance(cond, null, cond_scale)


@dataclass
class GuidedModel:
    """A network bound to its conditioning and guidance scale: ``model(x_t, t, self_cond) -> output``.

    Attributes:
        net: the network (a :class:`GuidableNetwork`).
        cond_scale: classifier-free guidance scale (1 = none).
        kwargs: the conditioning keyword arguments of ``net.forward`` (text, image embedding,
            low-resolution image, prefix cache, ...), the same at every step.
        negative: keyword arguments replacing `kwargs`' conditioning in the null branch (negative
            prompts; see :func:`guided_forward`), or None for the network's null branch.
    """

    net: Any
    cond_scale: float = 1.0
    kwargs: dict = field(default_factory=dict)
    negative: dict | None = None

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, self_cond: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = self.kwargs if self_cond is None else {**self.kwargs, "self_cond": self_cond}
        return guided_forward(self.net, x_t, t, cond_scale=self.cond_scale, negative=self.negative, **kwargs)


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
