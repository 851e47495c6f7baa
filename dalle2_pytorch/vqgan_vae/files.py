"""Reading VQGAN-VAE weights: this package's exports and trainer checkpoints, and the reference's
`vae.N.pt` / `vae.N.ema.pt` files (written by its `VQGanVAETrainer`).

| source | what it holds | config |
|---|---|---|
| export folder (`config.json` kind "vqgan_vae" + `model.safetensors`) | EMA weights | in `config.json` |
| trainer checkpoint folder (`model.safetensors`, `ema.safetensors`, `trainer_state.json`) | online + EMA weights (EMA preferred) | `trainer_state.json` → `model_config` |
| reference `vae.N.pt` | `vae.state_dict()` | pass `config=` (the constructor keywords) |
| reference `vae.N.ema.pt` | `ema_pytorch.EMA` state (`ema_model.*`, `online_model.*`) | pass `config=` |

`.pt` files are read with :func:`dalle2_pytorch.serialization.safe_torch_load` only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dalle2_pytorch.serialization import NotACheckpointError, safe_torch_load

__all__ = ["EXPORT_KIND", "load_vqgan_vae", "read_vqgan_vae_weights"]

EXPORT_KIND = "vqgan_vae"


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_vqgan_vae_weights(path: str | os.PathLike, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, constructor config or None) from any supported source (see the module docstring)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise NotACheckpointError(f"VQGAN-VAE weights not found: {path}")
    if path.is_dir():
        meta = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
        trainer = json.loads((path / "trainer_state.json").read_text()) if (path / "trainer_state.json").exists() else {}
        if meta and meta.get("kind") not in (None, EXPORT_KIND):
            raise NotACheckpointError(f"{path} holds a {meta.get('kind')!r} export, not a VQGAN-VAE")
        config = meta.get("config") or trainer.get("model_config")
        if prefer_ema and (path / "ema.safetensors").exists():
            state = _strip(load_file(str(path / "ema.safetensors")), "ema_model.")
            if not state:
                raise NotACheckpointError(f"{path / 'ema.safetensors'} holds no 'ema_model.' weights")
            return state, config
        if (path / "model.safetensors").exists():
            return load_file(str(path / "model.safetensors")), config
        raise NotACheckpointError(f"{path} holds neither model.safetensors nor ema.safetensors")
    if path.suffix == ".safetensors":
        return read_vqgan_vae_weights(path.parent, prefer_ema) if (path.parent / "config.json").exists() else (
            load_file(str(path)), None)
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise NotACheckpointError(f"{path} does not hold a state dict")
    if any(k.startswith("ema_model.") for k in obj):  # the reference trainer's vae.N.ema.pt
        return _strip(obj, "ema_model."), None
    if isinstance(obj.get("model"), dict):
        return obj["model"], obj.get("config") if isinstance(obj.get("config"), dict) else None
    if not all(torch.is_tensor(v) for v in obj.values()):
        raise NotACheckpointError(f"{path} does not hold a VQGAN-VAE state dict (non-tensor entries)")
    return obj, None


def load_vqgan_vae(
    path: str | os.PathLike,
    config: dict[str, Any] | None = None,
    *,
    map_location: Any = "cpu",
    strict: bool = True,
    prefer_ema: bool = True,
):
    """Builds a `VQGanVAE` and loads its weights, in eval mode.

    Args:
        path: an export / checkpoint folder or a reference `.pt` file.
        config: the constructor keywords; required for sources that carry none. With a config in
            the file too, the given one wins.
        strict: refuse missing / unexpected keys. Discriminator weights in the file are dropped
            when the config builds no discriminator (`use_vgg_and_gan=False`), e.g. to load a
            training file for latent diffusion only.

    Raises:
        ValueError: no config available, or weights that do not fit it.
    """
    from dalle2_pytorch.vqgan_vae.vae import VQGanVAE

    state, file_config = read_vqgan_vae_weights(path, prefer_ema=prefer_ema)
    config = dict(config if config is not None else (file_config or {}))
    if not config:
        raise ValueError(f"{path} carries no VQGanVAE config; pass config=<the VQGanVAE constructor keywords>")
    if config.get("use_vgg_and_gan", True) and "vgg" not in config:
        has_discr = any(k.startswith("discr.") for k in state)
        config["use_vgg_and_gan"] = has_discr  # no discriminator weights: nothing to train a GAN with
    config.pop("vgg", None)
    if config.get("use_vgg_and_gan"):
        config["vgg"] = torch.nn.Identity()  # loading never needs the perceptual network
    if not config.get("use_vgg_and_gan"):
        state = {k: v for k, v in state.items() if not k.startswith("discr.")}
    vae = VQGanVAE(**config)
    own = vae.state_dict()
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(
            f"weights in {path} do not fit this VQGanVAE config: missing {missing[:6]}, unexpected "
            f"{unexpected[:6]}, shape mismatches "
            f"{[f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in mismatched[:4]]}"
        )
    vae.load_state_dict(state, strict=strict)
    if config.get("use_vgg_and_gan"):
        vae.vgg = None
    return vae.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
