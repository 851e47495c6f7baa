"""Recognising and reading the checkpoint files a user may hand to `from_checkpoint`.

Supported sources:

* the reference's tracker "model" files: `{"version", ["config"], "model": state_dict}`;
* the reference's trainer "checkpoint" files: `{"model", "ema_model" | "ema", "optimizer", ...}`
  (the EMA weights are preferred);
* our exports: a folder (or its `model.safetensors`) with `config.json`
  (`{"format": "dalle2_pytorch", "kind", "version", "config"}`);
* our trainer checkpoint folders (`model.safetensors`, `ema.safetensors`, `trainer_state.json`).

Every `.pt`/`.pth` file is opened with :func:`dalle2_pytorch.serialization.safe_torch_load`.
Before anything is read, our folders are checked against their `manifest.json` (sizes and sha256:
a folder of ours without one is an unfinished write and is refused) and a `.pth` against a
`<file>.sha256` beside it when there is one; every floating tensor read must be finite. Each
failure is a :class:`~dalle2_pytorch.serialization.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dalle2_pytorch.integrity import MANIFEST, CorruptCheckpointError, check_finite, sha256_file, verify_manifest
from dalle2_pytorch.serialization import NotACheckpointError, safe_torch_load

__all__ = ["LoadedWeights", "read_weights", "resolve_config_source"]


@dataclass
class LoadedWeights:
    """A state dict plus what the file says about itself."""

    state_dict: dict[str, torch.Tensor]
    source: str
    kind: str  # "reference-model", "reference-checkpoint", "export", "trainer-checkpoint", "state-dict"
    version: str | None = None
    config: dict | None = None
    notes: list[str] = field(default_factory=list)


def _strip_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _ema_from_wrapper(ema_state: dict) -> dict | None:
    """EMA weights from an ema_pytorch.EMA state dict (`ema_model.*` keys), or from a ModuleList of them."""
    if any(k.startswith("ema_model.") for k in ema_state):
        return _strip_prefix(ema_state, "ema_model.")
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise NotACheckpointError(f"could not read {path}: {e}") from e
    if not isinstance(data, dict):
        raise NotACheckpointError(f"{path} does not hold a JSON object")
    return data


def _verify_folder(path: Path) -> None:
    """Our export / trainer-checkpoint folders must match their manifest."""
    if (path / MANIFEST).exists():
        verify_manifest(path)
        return
    ours = (path / "trainer_state.json").exists() or (
        (path / "config.json").exists() and _read_json(path / "config.json").get("format") == "dalle2_pytorch"
    )
    if ours:
        raise CorruptCheckpointError(
            f"{path}: no {MANIFEST}, so its files cannot be checked (an unfinished write, or files copied "
            "without it); export or copy the folder again"
        )


def _verify_sidecar(path: Path) -> None:
    """A `<file>.sha256` beside a file (written with our reference-layout exports) must match it."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return
    expected = sidecar.read_text(encoding="utf-8").split()[:1]
    if not expected or sha256_file(path) != expected[0].lower():
        raise CorruptCheckpointError(f"{path} does not match its sha256 in {sidecar.name} (modified or damaged)")


def _read_folder(path: Path, prefer_ema: bool) -> LoadedWeights:
    from safetensors.torch import load_file

    _verify_folder(path)
    cfg_path = path / "config.json"
    meta = _read_json(cfg_path) if cfg_path.exists() else {}
    state_path = path / "trainer_state.json"
    if (path / "ema.safetensors").exists() and prefer_ema:
        weights, kind = path / "ema.safetensors", "trainer-checkpoint"
    elif (path / "model.safetensors").exists():
        weights, kind = path / "model.safetensors", ("export" if cfg_path.exists() else "trainer-checkpoint")
    else:
        raise NotACheckpointError(f"{path} holds neither model.safetensors nor ema.safetensors")
    config = meta.get("config")
    version = meta.get("version")
    if state_path.exists() and config is None:
        trainer_state = _read_json(state_path)
        config = trainer_state.get("model_config") or trainer_state.get("config")
        version = version or trainer_state.get("version")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise NotACheckpointError(f"could not read {weights}: {e}") from e
    if weights.name == "ema.safetensors":
        state = _ema_weights_from_trainer_file(state, str(weights))
    return LoadedWeights(state, str(weights), kind, None if version is None else str(version), config)


def _ema_weights_from_trainer_file(state: dict, source: str) -> dict:
    """EMA model weights from our trainer's `ema.safetensors`: `ema_model.*` (prior) or
    `{i}.ema_model.*` (one EMA per decoder Unet, mapped back to `unets.{i}.*`)."""
    prior = _strip_prefix(state, "ema_model.")
    if prior:
        return prior
    out = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if index.isdigit() and rest.startswith("ema_model."):
            out[f"unets.{index}.{rest[len('ema_model.'):]}"] = value
    if not out:
        raise NotACheckpointError(f"{source} holds no EMA model weights (no 'ema_model.' keys)")
    return out


def read_weights(path: str | os.PathLike, *, prefer_ema: bool = True, map_location: Any = "cpu") -> LoadedWeights:
    """Reads any supported checkpoint file or folder into a :class:`LoadedWeights`.

    Raises:
        CorruptCheckpointError: the files do not match their manifest / `.sha256`.
        NonFiniteTensorError: a weight holds NaN or inf.
        NotACheckpointError, UnsafeCheckpointError: see `safe_torch_load`.
    """
    loaded = _read_weights(Path(path), prefer_ema, map_location)
    check_finite(loaded.state_dict, loaded.source)
    return loaded


def _read_weights(path: Path, prefer_ema: bool, map_location: Any) -> LoadedWeights:
    if path.is_dir():
        return _read_folder(path, prefer_ema)
    if path.suffix == ".safetensors":
        return _read_folder(path.parent, prefer_ema) if (path.parent / "config.json").exists() else LoadedWeights(
            _load_safetensors(path), str(path), "state-dict"
        )
    if path.is_file():
        _verify_sidecar(path)
    obj = safe_torch_load(path, map_location=map_location)
    if not isinstance(obj, dict):
        raise NotACheckpointError(f"{path} does not hold a dict of weights (found {type(obj).__name__})")
    version = obj.get("version")
    version = None if version is None else str(version)
    config = obj.get("config") if isinstance(obj.get("config"), dict) else None
    if "model" in obj and isinstance(obj["model"], dict):
        if prefer_ema and isinstance(obj.get("ema_model"), dict):
            return LoadedWeights(dict(obj["ema_model"]), str(path), "reference-checkpoint", version, config,
                                 ["EMA weights (ema_model) loaded"])
        if prefer_ema and isinstance(obj.get("ema"), dict):
            ema = _ema_from_wrapper(obj["ema"])
            if ema is not None:
                return LoadedWeights(ema, str(path), "reference-checkpoint", version, config, ["EMA weights (ema) loaded"])
        kind = "reference-checkpoint" if "optimizer" in obj or "optim0" in obj else "reference-model"
        return LoadedWeights(dict(obj["model"]), str(path), kind, version, config)
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return LoadedWeights(dict(obj), str(path), "state-dict")
    raise NotACheckpointError(
        f"{path} is not a dalle2-pytorch checkpoint: expected a 'model' entry or a state dict, found keys {sorted(obj)[:10]}"
    )


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise NotACheckpointError(f"could not read {path}: {e}") from e


def resolve_config_source(config: Any, file_config: dict | None, section: str, what: str) -> Any:
    """The config to build a model from: an argument (dict, JSON path, config object) or the file's.

    Returns a plain dict of the `section` ("prior" / "decoder") or a config object as given.
    """
    if config is None:
        if file_config is None:
            raise ValueError(
                f"{what} file carries no config (reference prior files never do): pass config=<dict, JSON "
                f"file (e.g. LAION's prior_config.json) or config object>"
            )
        config = file_config
    if isinstance(config, (str, os.PathLike)):
        p = Path(config)
        if not p.exists():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            config = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {p} is not valid JSON: {e}") from e
    if isinstance(config, dict):
        if section in config and isinstance(config[section], dict):
            return dict(config[section])
        if "config" in config and isinstance(config["config"], dict):  # our export's config.json
            return resolve_config_source(config["config"], None, section, what)
        return dict(config)
    if hasattr(config, section):  # a Train*Config object
        return getattr(config, section)
    return config
