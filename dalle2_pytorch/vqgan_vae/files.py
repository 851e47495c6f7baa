"""Reading VQGAN-VAE weights (for `VQGanVAE.from_checkpoint`): this package's exports and trainer
checkpoints, and the reference's `vae.N.pt` / `vae.N.ema.pt` files (written by its `VQGanVAETrainer`).

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

import torch

from dalle2_pytorch.serialization import NotACheckpointError, safe_torch_load

__all__ = ["EXPORT_KIND", "read_vqgan_vae_weights"]

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
