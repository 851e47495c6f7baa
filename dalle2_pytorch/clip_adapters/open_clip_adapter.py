"""Adapter for `open_clip` models (LAION/OpenCLIP checkpoints, any open_clip text-transformer CLIP).

Text (the encodings the LAION prior and decoder were trained on): tokens are cut/padded to the
context length (77), run through the text tower once; the per-token output of `ln_final` is kept as
the text encodings, masked to the positions up to and including the first end-of-text token (and
token != 0); the pooled state is projected (`text_projection`) and l2-normalised, exactly as
`model.encode_text`. This is done by running the tower's pieces directly (no forward hooks).

Image: inputs in [0, 1] are normalised with the model's mean/std, `encode_image` -> l2norm;
image encodings are None (as in the reference).

Weights: `pretrained=None` builds random weights; a tag (e.g. 'laion2b_s32b_b82k') downloads
through open_clip's cache; a local `.safetensors`/`.pt`/`.pth`/`.bin` state-dict file is read with
safetensors or :func:`dalle2_pytorch.serialization.safe_torch_load` (never unsafe unpickling).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from dalle2_pytorch._extras import import_optional
from dalle2_pytorch.clip_adapters.base import BaseClipAdapter, EmbeddedImage, EmbeddedText, l2norm
from dalle2_pytorch.clip_adapters.tokenizer import EOT_TOKEN_ID, SimpleTokenizer

__all__ = ["OpenClipAdapter", "load_clip_state_dict", "load_weights_into", "open_clip_model_name"]

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# attributes of TorchScript OpenAI checkpoints that are not parameters
_NON_PARAM_KEYS = ("input_resolution", "context_length", "vocab_size")


class _DropRandomInitNotice(logging.Filter):
    """Hides open_clip's "initialized randomly" warning when weights are loaded right after."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init(active: bool):
    root = logging.getLogger()
    notice_filter = _DropRandomInitNotice()
    if active:
        root.addFilter(notice_filter)
    try:
        yield
    finally:
        root.removeFilter(notice_filter)


def open_clip_model_name(name: str) -> str:
    """'ViT-B/32' -> 'ViT-B-32', 'ViT-L/14@336px' -> 'ViT-L-14-336' (open_clip's spelling)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"CLIP model name must be a non-empty string, got {name!r}")
    if name.endswith("@336px"):
        name = name[: -len("@336px")] + "-336"
    return name.replace("/", "-")


def load_clip_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Reads CLIP weights from a local state-dict file, safely.

    Accepts `.safetensors`, torch files holding a state dict (optionally under `state_dict`,
    optionally with a DistributedDataParallel `module.` prefix), and TorchScript archives (OpenAI's
    original `.pt` downloads), whose tensors are read without running their code
    (:mod:`dalle2_pytorch.clip_adapters.torchscript_weights`; attention-mask attributes dropped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file does not hold a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        from dalle2_pytorch.clip_adapters.torchscript_weights import is_torchscript_archive, read_torchscript_tensors

        if is_torchscript_archive(path):
            state = {k: v for k, v in read_torchscript_tensors(path).items() if not k.endswith("attn_mask")}
        else:
            from dalle2_pytorch.serialization import safe_torch_load

            state = safe_torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} does not contain a CLIP state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if k not in _NON_PARAM_KEYS}


def load_weights_into(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    own = model.state_dict()
    for key in ("logit_scale", "logit_bias"):  # scalar vs (1,) across open_clip/OpenAI versions
        if key in state and key in own and state[key].shape != own[key].shape and state[key].numel() == own[key].numel():
            state[key] = state[key].reshape(own[key].shape)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        details = []
        if missing:
            details.append(f"missing keys: {show(missing)}")
        if unexpected:
            details.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            details.append(
                "shape mismatches: "
                + show([f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched])
            )
        raise ValueError(f"weights in {source} do not fit this CLIP architecture; " + "; ".join(details))
    model.load_state_dict(state, strict=True)


class OpenClipAdapter(BaseClipAdapter):
    """Frozen adapter around an open_clip model.

    Args:
        name: architecture, 'ViT-B/32' or 'ViT-B-32' spelling (any name in `open_clip.list_models()`
            whose text tower is open_clip's transformer).
        pretrained: None/False for random weights; an open_clip tag for that architecture (downloaded
            into open_clip's cache); or a local weights file path. The default is the reference's
            'laion400m_e32' (which exists for ViT-B/32 only).
        precision: open_clip precision string ('fp32', 'fp16', 'bf16', ...).
        device: where the model is built (default CPU; move it later with `.to()`).
        model: an already built open_clip model; `name`/`pretrained` are then not used for weights.
        tokenizer: callable `list[str] -> (b, n)` ids; default: the OpenAI BPE (context 77).
        model_kwargs: open_clip config overrides (e.g. `embed_dim`, `vision_cfg`, `text_cfg`).
        quick_gelu: force QuickGELU (None: as the pretrained tag says, else the config default).
        cache_dir: download cache for tags.
    """

    def __init__(
        self,
        name: str = "ViT-B/32",
        pretrained: str | os.PathLike | bool | None = "laion400m_e32",
        *,
        precision: str = "fp32",
        device: str | torch.device | None = None,
        model: nn.Module | None = None,
        tokenizer: Callable | None = None,
        model_kwargs: dict[str, Any] | None = None,
        quick_gelu: bool | None = None,
        cache_dir: str | None = None,
    ) -> None:
        mean, std = None, None
        hf_tokenizer = None
        if model is None:
            model, mean, std, hf_tokenizer = self._build(
                name, pretrained, precision=precision, device=device, model_kwargs=model_kwargs,
                quick_gelu=quick_gelu, cache_dir=cache_dir,
            )
        elif not (hasattr(model, "encode_image") and hasattr(model, "visual")):
            raise TypeError(f"`model` must be an open_clip model, got {type(model).__name__}")
        text = self._text_tower_of(model)
        context_length = int(text.context_length if hasattr(text, "context_length") else model.context_length)
        if tokenizer is None:
            tokenizer = hf_tokenizer if hf_tokenizer is not None else SimpleTokenizer(context_length)
        super().__init__(model, tokenizer=tokenizer)
        self._text_from_submodule = text is not model
        self._context_length = context_length
        self.eot_token_id = int(getattr(tokenizer, "eot_token_id", EOT_TOKEN_ID))

        visual = model.visual
        if mean is None:
            mean = getattr(visual, "image_mean", None) or _OPENAI_MEAN
            std = getattr(visual, "image_std", None) or _OPENAI_STD
        size = getattr(visual, "image_size", 224)
        self._image_hw = tuple(int(s) for s in size) if isinstance(size, (tuple, list)) else (int(size),) * 2
        # non-persistent: the adapter must not add keys beside `clip.*` to a parent's state dict
        self.register_buffer("image_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.to(self.device)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _build(name, pretrained, *, precision, device, model_kwargs, quick_gelu, cache_dir):
        open_clip = import_optional("open_clip", "clip", "OpenClipAdapter / OpenAIClipAdapter")
        from open_clip import pretrained as oc_pretrained

        arch = open_clip_model_name(name)
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown open_clip architecture {name!r}; see open_clip.list_models()")
        config = open_clip.get_model_config(arch) or {}
        text_cfg = config.get("text_cfg", {})
        if "hf_model_name" in text_cfg:
            raise NotImplementedError(
                f"{arch} uses a Hugging Face text tower; per-token CLIP encodings need open_clip's own "
                "text transformer (e.g. ViT-B/32, ViT-L/14, ViT-H/14, ViT-bigG/14, RN50)"
            )

        weights_file, tag_cfg = None, {}
        if pretrained is True:
            raise ValueError("pretrained=True is ambiguous for OpenClipAdapter; pass a tag or a file path")
        if pretrained not in (None, False, ""):
            candidate = os.fspath(pretrained)
            if os.path.isfile(candidate):
                weights_file = candidate
            elif oc_pretrained.is_pretrained_cfg(arch, candidate):
                tag_cfg = oc_pretrained.get_pretrained_cfg(arch, candidate)
            else:
                tags = oc_pretrained.list_pretrained_tags_by_model(arch)
                raise ValueError(
                    f"pretrained={candidate!r} is neither a file nor an open_clip tag for {arch}; "
                    f"available tags: {tags}"
                )
        if quick_gelu is None:
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        with _quiet_random_init(weights_file is not None or bool(tag_cfg)):
            model = open_clip.create_model(
                arch,
                pretrained=None,
                precision=precision,
                device=torch.device("cpu") if device is None else device,
                force_quick_gelu=quick_gelu,
                **(model_kwargs or {}),
            )
        if tag_cfg:
            # download through open_clip's cache (prefers its safetensors copies), read safely
            weights_file = oc_pretrained.download_pretrained(tag_cfg, cache_dir=cache_dir)
            if not weights_file:
                raise RuntimeError(f"open_clip could not fetch weights for {arch}/{pretrained}")
        if weights_file is not None:
            load_weights_into(model, load_clip_state_dict(weights_file), source=str(weights_file))
        mean, std = tag_cfg.get("mean"), tag_cfg.get("std")
        hf_tokenizer = open_clip.get_tokenizer(arch) if "hf_tokenizer_name" in text_cfg else None
        return model, mean, std, hf_tokenizer

    @staticmethod
    def _text_tower_of(model: nn.Module) -> nn.Module:
        """The module holding token_embedding/transformer/ln_final (the model or `model.text`)."""
        text = getattr(model, "text", None)
        owner = model if text is None else text
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        if not all(hasattr(owner, a) for a in needed):
            raise NotImplementedError(
                f"{type(owner).__name__} is not an open_clip text transformer with ln_final; per-token "
                "text encodings are not available for this model"
            )
        if getattr(owner, "cls_emb", None) is not None or getattr(owner, "use_pad_mask", False):
            raise NotImplementedError("text towers with an appended CLS token or padding masks are not supported")
        return owner

    # ------------------------------------------------------------------ sizes
    @property
    def _text(self) -> nn.Module:
        return self.clip.text if self._text_from_submodule else self.clip

    @property
    def dim_latent(self) -> int:
        proj = self._text.text_projection
        if proj is None:
            return self.text_encodings_dim
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    @property
    def text_encodings_dim(self) -> int:
        return int(self._text.positional_embedding.shape[-1])

    @property
    def image_size(self) -> int:
        return max(self._image_hw)

    @property
    def image_hw(self) -> tuple[int, int]:
        return self._image_hw

    @property
    def image_channels(self) -> int:
        return 3

    @property
    def max_text_len(self) -> int:
        return self._context_length

    # ------------------------------------------------------------------ embeddings
    def _run_text_tower(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(b, context) ids -> per-token ln_final states (b, n, width), projected pooled (b, dim_latent)."""
        text = self._text
        cast_dtype = text.transformer.get_cast_dtype() if hasattr(text.transformer, "get_cast_dtype") else text.token_embedding.weight.dtype
        n = tokens.shape[1]
        x = text.token_embedding(tokens).to(cast_dtype) + text.positional_embedding[:n].to(cast_dtype)
        attn_mask = getattr(text, "attn_mask", None)
        if attn_mask is not None:
            attn_mask = attn_mask[:n, :n]
        if hasattr(text.transformer, "batch_first"):  # open_clip >= 2.24 takes (b, n, d)
            x = text.transformer(x, attn_mask=attn_mask)
        else:  # older open_clip transformers take (n, b, d)
            x = text.transformer(x.permute(1, 0, 2), attn_mask=attn_mask).permute(1, 0, 2)
        x = text.ln_final(x)

        pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
        batch = torch.arange(tokens.shape[0], device=tokens.device)
        if pool_type == "argmax":  # OpenAI convention: end-of-text has the highest id
            pooled = x[batch, tokens.argmax(dim=-1)]
        elif pool_type == "eos":
            eos_id = getattr(text, "text_eos_id", getattr(text, "eos_id", self.eot_token_id))
            pooled = x[batch, (tokens == eos_id).int().argmax(dim=-1)]
        elif pool_type == "first":
            pooled = x[:, 0]
        elif pool_type == "last":
            pooled = x[:, -1]
        else:
            raise NotImplementedError(f"text pool type {pool_type!r} is not supported")
        proj = text.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return x, pooled

    def text_mask_from_tokens(self, tokens: Tensor) -> Tensor:
        """(b, n) bool: positions up to and including the first end-of-text token, excluding id 0."""
        before_eot = (tokens == self.eot_token_id).long().cumsum(dim=-1) == 0
        up_to_eot = torch.cat((torch.ones_like(before_eot[:, :1]), before_eot[:, :-1]), dim=-1)
        return up_to_eot & (tokens != 0)

    @torch.no_grad()
    def embed_text(self, tokens: Tensor) -> EmbeddedText:
        """(b, n) ids -> text_embed (b, dim_latent), text_encodings (b, max_text_len, text_encodings_dim).

        Shorter inputs are zero-padded to the context length (the encoder's positional table size),
        longer ones cut. Outputs are float32.
        """
        tokens = self._check_tokens(tokens)
        tokens = torch.nn.functional.pad(tokens, (0, self.max_text_len - tokens.shape[1]), value=0)
        per_token, pooled = self._run_text_tower(tokens)
        mask = self.text_mask_from_tokens(tokens)
        text_encodings = per_token.float().masked_fill(~mask[..., None], 0.0)
        return EmbeddedText(l2norm(pooled.float()), text_encodings)

    @torch.no_grad()
    def embed_image(self, images: Tensor) -> EmbeddedImage:
        """(b, 3, h, w) in [0, 1] -> image_embed (b, dim_latent) float32, image_encodings None."""
        image_embed = self.clip.encode_image(self._prepare_images(images))
        return EmbeddedImage(l2norm(image_embed.float()), None)

    def _prepare_images(self, images: Tensor) -> Tensor:
        """Checked, resized, mean/std-normalised images in the vision tower's dtype."""
        images = self.validate_and_resize_image(images)
        images = (images.to(self.image_mean.device, torch.float32) - self.image_mean) / self.image_std
        return images.to(next(self.clip.visual.parameters()).dtype)
