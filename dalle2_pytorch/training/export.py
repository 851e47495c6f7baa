"""Released-weights exports.

* :func:`export_model` — this package's format: a directory with `model.safetensors`,
  `config.json` (`{"format": "dalle2_pytorch", "kind": "prior"|"decoder", "version": ...,
  "config": <model config dict>}`) and a `manifest.json` (sizes + sha256), written atomically.
* :func:`export_dalle2` — a model folder of a whole `DALLE2`: `dalle2.json` + `prior/` + `decoder/`
  exports (+ `clip/` for a saved x-clip model), what `DALLE2.from_pretrained` and `dream --model-dir`
  read; :func:`push_to_hub` uploads it (or one prior / decoder export) to a Hugging Face Hub repo.
* :func:`export_reference_model` — the reference package's tracker "model" `.pth` layout,
  `{"version": "<str>", "config": {...} (decoders only), "model": state_dict}`, for tools built on
  the reference. The version is a plain string and nothing else is pickled; the derived
  noise-schedule buffers (non-persistent here, stored by the reference) are included so that the
  reference's strict loading accepts the file. A `<file>.sha256` (`sha256sum -c` format) is written
  beside it; `from_checkpoint` checks the file against it when present.

Exports are byte-reproducible: the same weights and config give files with the same sha256 (no
timestamps; JSON with sorted keys; one safetensors metadata entry, because safetensors writes its
metadata map in a per-process random order; `torch.save` archives hold no time or random id).
Non-finite weights are refused (nothing is written).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dalle2_pytorch.integrity import check_finite, sha256_file
from dalle2_pytorch.training.checkpoint import (
    CheckpointWriteError,
    _jsonable,
    _reason,
    _write_json,
    current_storage,
    to_safetensors_dict,
    write_checkpoint,
)
from dalle2_pytorch.version import REFERENCE_VERSION, __version__

__all__ = [
    "EXPORT_FORMAT", "SHA256_SUFFIX", "export_dalle2", "export_model", "export_reference_model", "infer_kind",
    "push_to_hub",
]

EXPORT_FORMAT = "dalle2_pytorch"
SHA256_SUFFIX = ".sha256"  # `model.pth.sha256` beside a reference-layout file (sha256sum format)
_SCHEDULE_MODULES = ("noise_scheduler", "noise_schedulers")


def infer_kind(model: nn.Module) -> str:
    """"prior" or "decoder" from the model's class (or its `.unets` attribute)."""
    name = type(model).__name__.lower()
    if "prior" in name:
        return "prior"
    if "decoder" in name or hasattr(model, "unets"):
        return "decoder"
    raise ValueError(f"cannot tell whether {type(model).__name__} is a prior or a decoder; pass kind=")


def _check_kind(kind: str | None, model: nn.Module) -> str:
    kind = kind or infer_kind(model)
    if kind not in ("prior", "decoder"):
        raise ValueError(f"kind must be 'prior' or 'decoder', got {kind!r}")
    return kind


def _weights(model: nn.Module, exclude_prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(exclude_prefixes))}


def export_model(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    kind: str | None = None,
    config: Mapping[str, Any] | None = None,
    exclude_prefixes: Sequence[str] = ("clip.",),
) -> Path:
    """Writes `model`'s weights and config in this package's released-weights format.

    Args:
        model: a `DiffusionPrior` or `Decoder` (pass the EMA model for released weights).
        directory: output directory (replaced atomically if it exists).
        kind: "prior" / "decoder"; inferred from the class when None.
        config: the model config dict; defaults to `model.config`.
        exclude_prefixes: state-dict prefixes left out (CLIP is kept separately by default).

    Returns:
        The directory.
    """
    kind = _check_kind(kind, model)
    config = dict(config) if config is not None else getattr(model, "config", None)
    header = {
        "format": EXPORT_FORMAT,
        "kind": kind,
        "version": __version__,
        "reference_version": REFERENCE_VERSION,
        "config": _jsonable(config, "config"),
    }
    weights = to_safetensors_dict(_weights(model, exclude_prefixes), f"{kind} state dict")
    check_finite(weights, f"refusing to export {kind} to {directory}")
    writers = {
        # a single metadata entry: safetensors writes its metadata map in random order (`kind` is in config.json)
        "model.safetensors": lambda p: save_file(weights, str(p), metadata={"format": "pt"}),
        "config.json": lambda p: _write_json(p, header),
    }
    return write_checkpoint(directory, writers, kind=kind)


def _layout_of(model: nn.Module) -> str | None:
    for obj in (model, getattr(model, "net", None), *getattr(model, "unets", ())):
        layout = getattr(obj, "layout", None)
        if isinstance(layout, str):
            return layout
    return None


def reference_state_dict(model: nn.Module, exclude_prefixes: Sequence[str] = ("clip.",)) -> dict[str, torch.Tensor]:
    """`model.state_dict()` plus its non-persistent noise-schedule buffers, CPU tensors, without
    the excluded prefixes."""
    sd = _weights(model, exclude_prefixes)
    for name, buf in model.named_buffers():
        if name not in sd and name.split(".", 1)[0] in _SCHEDULE_MODULES:
            sd[name] = buf
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def export_reference_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    kind: str | None = None,
    config: Mapping[str, Any] | None = None,
    version: str | None = None,
    exclude_prefixes: Sequence[str] = ("clip.",),
) -> Path:
    """Writes the reference's tracker "model" `.pth` layout (see the module docstring).

    Args:
        model: the (EMA) `DiffusionPrior` or `Decoder`.
        path: the `.pth` file, written atomically (temporary file + `os.replace`).
        kind: "prior" / "decoder"; inferred when None.
        config: decoders only — the reference's full `TrainDecoderConfig` dump if available;
            defaults to `{"decoder": model.config}`.
        version: the version string stored; defaults to the model's key layout ("1.15.6" or
            "1.1.0").
    """
    kind = _check_kind(kind, model)
    path = Path(path)
    obj: dict[str, Any] = {"version": str(version or _layout_of(model) or REFERENCE_VERSION)}
    if kind == "decoder":
        if config is None:
            model_config = getattr(model, "config", None)
            config = {"decoder": model_config} if model_config is not None else {}
        obj["config"] = _jsonable(dict(config), "config")
    elif config is not None:
        raise ValueError("reference prior files carry no config; keep the prior config JSON beside the file")
    obj["model"] = reference_state_dict(model, exclude_prefixes)
    check_finite(obj["model"], f"refusing to export {kind} to {path}")
    storage = current_storage()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    sidecar = path.with_name(path.name + SHA256_SUFFIX)
    sidecar_tmp = sidecar.with_name(f"{sidecar.name}.tmp-{secrets.token_hex(4)}")
    old_sidecar = sidecar.read_text(encoding="utf-8") if sidecar.is_file() else None
    placed = False
    try:
        storage.write_file(tmp, lambda p: torch.save(obj, p))
        storage.fsync_file(tmp)
        line = f"{sha256_file(tmp)}  {path.name}\n"
        storage.write_file(sidecar_tmp, lambda p: p.write_text(line, encoding="utf-8"))
        storage.fsync_file(sidecar_tmp)
        if old_sidecar is not None:  # a stale hash must never describe the new file: drop it first
            sidecar.unlink()
        storage.replace(tmp, path)  # atomic: `path` is always a complete file, old or new
        placed = True
        storage.replace(sidecar_tmp, sidecar)
        storage.fsync_dir(path.parent)
    except Exception as e:
        if not placed and old_sidecar is not None and not sidecar.exists():
            with contextlib.suppress(OSError):  # the old file is still there: so is its hash
                sidecar.write_text(old_sidecar, encoding="utf-8")
        state = "the new file is complete in place" if placed else "the previous file is intact"
        raise CheckpointWriteError(f"could not write {path}: {_reason(e)}; {state}") from e
    finally:
        for leftover in (tmp, sidecar_tmp):
            if leftover.exists():
                leftover.unlink()
    return path


def export_dalle2(chain: nn.Module, directory: str | os.PathLike, *, clip: Any = None) -> Path:
    """Writes a `DALLE2` as a model folder: `prior/` and `decoder/` exports and `dalle2.json`.

    Args:
        chain: the `DALLE2` (its prior may be None).
        directory: the model folder (created; its `prior/`, `decoder/`, `clip/` are replaced).
        clip: how loaders rebuild the CLIP, stored in `dalle2.json`: an `AdapterConfig` dict
            (e.g. `{"make": "openai", "model": "ViT-L/14"}`) or a saved x-clip folder, copied into
            `clip/`. None stores no CLIP: loaders then need `clip=` to embed prompts and images.

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"prior": None, "decoder": "decoder", "clip": None}
    # the chain's sampling defaults, restored by DALLE2.from_pretrained
    index["chain"] = _jsonable({k: getattr(chain, k, None) for k in ("prior_num_samples", "prior_sampler", "decoder_sampler")}, "chain")
    if chain.prior is not None:
        export_model(chain.prior, directory / "prior", kind="prior")
        index["prior"] = "prior"
    export_model(chain.decoder, directory / "decoder", kind="decoder")
    if isinstance(clip, (str, os.PathLike)) and Path(clip).is_dir():
        target = directory / "clip"
        if Path(clip).resolve() != target.resolve():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(clip, target)
        index["clip"] = {"make": "x-clip", "model": "clip"}
    elif isinstance(clip, Mapping):
        index["clip"] = _jsonable(dict(clip), "clip")
    elif clip is not None:
        raise TypeError(f"clip must be an AdapterConfig dict or a saved x-clip folder, got {type(clip).__name__}")
    tmp = directory / f"dalle2.json.tmp-{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, directory / "dalle2.json")
    return directory


def push_to_hub(
    model: nn.Module | str | os.PathLike,
    repo_id: str,
    *,
    clip: Any = None,
    token: str | bool | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Uploads our export of `model` to a Hugging Face Hub repo; returns the repo URL.

    Args:
        model: a `DALLE2` (written by :func:`export_dalle2`, `clip` as there), a `DiffusionPrior` or
            `Decoder` (written by :func:`export_model`), or an existing model / export folder.
        repo_id: "owner/name" (created if needed).
        token, private, revision, commit_message: as `huggingface_hub.HfApi.upload_folder`.

    The folder is checked to load (`from_pretrained` / `from_checkpoint`) before anything is uploaded.
    """
    from dalle2_pytorch.compat.hub import upload_folder
    from dalle2_pytorch.compat.pretrained import read_model_folder

    with tempfile.TemporaryDirectory(prefix="dalle2_push_") as tmp:
        if isinstance(model, (str, os.PathLike)):
            folder = Path(model)
            if not (folder / "config.json").exists():
                read_model_folder(folder)  # a model folder, or a clear error
        elif hasattr(model, "decoder") and hasattr(model, "prior"):
            folder = export_dalle2(model, Path(tmp) / "model", clip=clip)
        else:
            folder = export_model(model, Path(tmp) / "model")
        return upload_folder(folder, repo_id, token=token, private=private, revision=revision,
                             commit_message=commit_message)
