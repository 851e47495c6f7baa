"""Adapter for OpenAI's CLIP weights (the CLIP LAION's DALLE2-pytorch prior/decoder were trained on:
ViT-L/14, per-token `ln_final` states, end-of-text mask, l2-normalised projected embeddings,
77 tokens).

The reference package loaded these through `clip-anytorch`, which no longer imports on current
setuptools. Here open_clip builds the OpenAI architecture (QuickGELU activations, OpenAI
normalisation constants) and reads the weights from open_clip's safetensors copy (`pretrained=True`)
or a local state-dict file. open_clip's CLIP uses OpenAI's parameter names, so the state dict of
`adapter.clip` has the keys LAION checkpoints store under `clip.clip.*`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from dalle2_pytorch.clip_adapters.open_clip_adapter import OpenClipAdapter, open_clip_model_name

__all__ = ["OpenAIClipAdapter", "build_openai_clip_from_file"]

OPENAI_MODELS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px")


def build_openai_clip_from_file(path: str | os.PathLike, *, precision: str = "fp32",
                                device: str | torch.device | None = None) -> torch.nn.Module:
    """An open_clip CLIP with OpenAI's architecture (QuickGELU) sized from the weights in `path`.

    open_clip's `build_model_from_openai_state_dict` infers the architecture (widths, layers, patch
    size, image size, context length) from the state dict; the weights are then loaded at full
    precision, strictly.
    """
    from open_clip.model import build_model_from_openai_state_dict

    from dalle2_pytorch.clip_adapters.open_clip_adapter import load_clip_state_dict, load_weights_into

    state = load_clip_state_dict(path)
    try:
        model = build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None).float()
    except (KeyError, RuntimeError, AssertionError) as e:
        raise ValueError(f"{path} does not hold OpenAI CLIP weights ({type(e).__name__}: {e})") from e
    load_weights_into(model, {k: v.float() for k, v in state.items()}, source=os.fspath(path))
    if precision in ("fp16", "bf16"):
        model = model.to(torch.float16 if precision == "fp16" else torch.bfloat16)
    return model.to(device or "cpu").eval()


class OpenAIClipAdapter(OpenClipAdapter):
    """Frozen adapter around an OpenAI CLIP (built by open_clip).

    Args:
        name: one of 'RN50', 'RN101', 'RN50x4', 'RN50x16', 'RN50x64', 'ViT-B/32', 'ViT-B/16',
            'ViT-L/14', 'ViT-L/14@336px' (hyphenated spellings accepted). The default is the
            reference's 'ViT-B/32'; LAION's DALLE2-pytorch checkpoints need 'ViT-L/14'.
            As in the reference (`clip.load`), a path to an OpenAI CLIP file (its original
            TorchScript `.pt`, read without running its code, or a state dict / `.safetensors`)
            is accepted too: the architecture is read from the weights and `pretrained` is not used.
        pretrained: True for OpenAI's weights (downloaded into open_clip's cache), False/None for
            random weights of the OpenAI architecture, or a local weights file path (`.safetensors`,
            or a torch state dict; TorchScript archives are refused, see `load_clip_state_dict`).
        precision, device, tokenizer, model_kwargs, cache_dir: as :class:`OpenClipAdapter`.
    """

    def __init__(
        self,
        name: str = "ViT-B/32",
        pretrained: bool | str | os.PathLike | None = True,
        *,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        tokenizer: Callable | None = None,
        model_kwargs: dict[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if isinstance(name, (str, os.PathLike)) and os.path.isfile(os.fspath(name)):
            super().__init__(
                os.fspath(name), pretrained=None, precision=precision, device=device, tokenizer=tokenizer,
                model=build_openai_clip_from_file(name, precision=precision, device=device),
            )
            return
        arch = open_clip_model_name(name)
        known = {open_clip_model_name(m) for m in OPENAI_MODELS}
        if arch not in known:
            raise ValueError(f"{name!r} is not an OpenAI CLIP model; choose one of {list(OPENAI_MODELS)}")
        if pretrained is True or pretrained == "openai":
            weights: str | os.PathLike | None = "openai"
        elif pretrained in (False, None):
            weights = None
        elif isinstance(pretrained, (str, os.PathLike)) and os.path.isfile(os.fspath(pretrained)):
            weights = pretrained
        else:
            raise ValueError(
                f"pretrained must be True, False or an existing weights file for OpenAIClipAdapter, got {pretrained!r}"
            )
        super().__init__(
            arch,
            pretrained=weights,
            precision=precision,
            device=device,
            tokenizer=tokenizer,
            model_kwargs=model_kwargs,
            quick_gelu=True,  # OpenAI's CLIPs were trained with QuickGELU
            cache_dir=cache_dir,
        )
