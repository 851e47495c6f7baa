"""Pretrained models by name: LAION's released files, our exports in a folder or a Hub repo.

``DALLE2.from_pretrained(name)``, ``DiffusionPrior.from_pretrained(name)`` and
``Decoder.from_pretrained(name)`` are façades over :func:`load_dalle2`, :func:`load_prior` and
:func:`load_decoder`. `name` is, in this order:

1. a known release (:data:`PRETRAINED`, case-insensitive): ``"laion/dalle2"`` is LAION's release for
   DALLE2-pytorch as dalle2-laion assembles it (the prior ``prior/latest.pth`` + ``prior_config.json``
   and the 64 px decoder ``decoder/v1.0.2/latest.pth`` of ``laion/DALLE2-PyTorch``, the 64->256
   upsampler ``working/latest.pth`` + ``decoder_config.json`` of ``Veldrovive/upsamplers`` as Unet 2,
   and OpenAI's CLIP ViT-L/14 through open_clip); ``"laion/dalle2-64px"`` is the same without the
   upsampler. Files come from huggingface_hub's cache (downloaded when missing, unless
   ``HF_HUB_OFFLINE=1``) and are checksum-verified (:mod:`dalle2_pytorch.compat.hub`);
2. a local model folder (``dalle2.json``, or ``prior/`` + ``decoder/`` subfolders of our safetensors
   exports, plus an optional ``clip/``) or, for the prior / decoder alone, one export folder or
   reference checkpoint file;
3. a Hub repo id ("owner/name") holding such a model folder (``push_to_hub`` writes them).

The revisions of LAION's repos are not pinned: the commit that holds today's files was not
verifiable offline. Pass ``revision=<commit>`` to pin one; the loader reports the revision it used.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dalle2_pytorch.compat.decoder_loading import load_decoder as load_decoder_checkpoint
from dalle2_pytorch.compat.hub import HubFile, PretrainedNotFoundError, resolve_hub_file, resolve_hub_snapshot
from dalle2_pytorch.compat.prior_loading import load_prior as load_prior_checkpoint

__all__ = [
    "MODEL_INDEX",
    "PRETRAINED",
    "PretrainedNotFoundError",
    "PretrainedRelease",
    "build_clip",
    "load_dalle2",
    "load_decoder",
    "load_prior",
    "parse_clip_spec",
    "read_model_folder",
    "register_pretrained",
]

logger = logging.getLogger(__name__)

MODEL_INDEX = "dalle2.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
AUTO = "auto"
_CHAIN_SETTINGS = ("prior_num_samples", "prior_sampler", "decoder_sampler")  # DALLE2 defaults in dalle2.json


@dataclass(frozen=True)
class PretrainedRelease:
    """Where the parts of a released model live on the Hub.

    Attributes:
        description: one line for listings and errors.
        prior, prior_config: the prior file and its config (reference prior files carry none).
        decoder: (file, 1-based Unet numbers taken from it) per source, stitched in order.
        decoder_configs: one config file per decoder source, None where the file embeds its own.
        clip: the CLIP adapter config (``AdapterConfig`` fields); `clip_weights` its weights file.
        prior_num_samples: the prior's reranked candidates per caption (the release's default).
    """

    description: str
    prior: HubFile | None
    prior_config: HubFile | None
    decoder: tuple[tuple[HubFile, tuple[int, ...]], ...]
    decoder_configs: tuple[HubFile | None, ...]
    clip: dict | None = None
    clip_weights: HubFile | None = None
    prior_num_samples: int = 2
    aliases: tuple[str, ...] = field(default=())


_LAION = "laion/DALLE2-PyTorch"
_LAION_PRIOR = HubFile(_LAION, "prior/latest.pth")
_LAION_PRIOR_CONFIG = HubFile(_LAION, "prior/prior_config.json")
_LAION_DECODER = HubFile(_LAION, "decoder/v1.0.2/latest.pth")  # config embedded
_LAION_UPSAMPLER = HubFile("Veldrovive/upsamplers", "working/latest.pth")
_LAION_UPSAMPLER_CONFIG = HubFile("Veldrovive/upsamplers", "working/decoder_config.json")
# OpenAI's ViT-L/14 as open_clip fetches it (its 'openai' tag for ViT-L-14)
_VIT_L_14 = HubFile("timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors")
_VIT_L_14_CONFIG = {"make": "openai", "model": "ViT-L/14"}

PRETRAINED: dict[str, PretrainedRelease] = {
    "laion/dalle2": PretrainedRelease(
        "LAION's DALLE2-pytorch release: prior, 64 px decoder v1.0.2 and 64->256 upsampler, OpenAI CLIP ViT-L/14",
        _LAION_PRIOR, _LAION_PRIOR_CONFIG,
        ((_LAION_DECODER, (1,)), (_LAION_UPSAMPLER, (2,))), (None, _LAION_UPSAMPLER_CONFIG),
        _VIT_L_14_CONFIG, _VIT_L_14, aliases=("laion/dalle2-pytorch",),
    ),
    "laion/dalle2-64px": PretrainedRelease(
        "LAION's DALLE2-pytorch prior and 64 px decoder v1.0.2 (no upsampler), OpenAI CLIP ViT-L/14",
        _LAION_PRIOR, _LAION_PRIOR_CONFIG, ((_LAION_DECODER, (1,)),), (None,), _VIT_L_14_CONFIG, _VIT_L_14,
    ),
}


def register_pretrained(name: str, release: PretrainedRelease) -> None:
    """Adds a release under `name` (lower-cased) for the ``from_pretrained`` methods."""
    PRETRAINED[name.lower()] = release


def _release(name: str) -> PretrainedRelease | None:
    key = name.lower()
    if key in PRETRAINED:
        return PRETRAINED[key]
    return next((r for r in PRETRAINED.values() if key in r.aliases), None)


# ------------------------------------------------------------------------------------- CLIP specs
def parse_clip_spec(spec: str | os.PathLike | dict | None, base: str | os.PathLike | None = None) -> dict | None:
    """A CLIP spec: an ``AdapterConfig`` dict, a JSON file or inline JSON of one, or a saved x-clip
    folder; a relative x-clip folder is taken relative to `base` (the model folder)."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        cfg = dict(spec)
    elif isinstance(spec, str) and spec.lstrip().startswith("{"):  # inline JSON (may be too long for a path)
        try:
            cfg = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"inline CLIP spec is not valid JSON: {e}") from None
    else:
        p = Path(spec)
        if p.is_dir():
            cfg = {"make": "x-clip", "model": str(p)}
        elif p.is_file():
            try:
                cfg = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"CLIP spec file {p} is not valid JSON: {e}") from None
        else:
            try:
                cfg = json.loads(str(spec))
            except json.JSONDecodeError:
                raise ValueError(f"CLIP {str(spec)!r} is neither a folder, a JSON file nor inline JSON") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"a CLIP spec must be a JSON object (AdapterConfig fields), got {cfg!r}")
    model = cfg.get("model")
    if base is not None and cfg.get("make") in CLIP_FOLDER_MAKES and model and not Path(model).is_absolute():
        cfg["model"] = str(Path(base) / model)
    return cfg


#: adapter makes whose `model` may name a saved CLIP folder (small-CLIP or x-clip format)
CLIP_FOLDER_MAKES = ("x-clip", "x_clip", "small-clip")


def build_clip(spec: dict | None, device: Any = "cpu") -> Any:
    """A CLIP adapter from a spec (see :func:`parse_clip_spec`), or None. A bare saved CLIP folder
    (`{"make", "model": <folder>}`) is loaded directly, without the config layer, and its image tower
    is built on first use (text->image never builds it)."""
    if spec is None:
        return None
    model = spec.get("model")
    if (spec.get("make") in CLIP_FOLDER_MAKES and model and set(spec) <= {"make", "model"}
            and (Path(model) / "clip_config.json").is_file()):
        from dalle2_pytorch.clip_adapters.clip_folder import load_clip_folder

        try:
            return load_clip_folder(model, image_tower="lazy", device=device)
        except (OSError, ValueError) as e:
            raise ValueError(f"could not load the CLIP folder {model}: {e}") from e
    from dalle2_pytorch.config.clip import AdapterConfig

    try:
        return AdapterConfig.model_validate(spec).create().to(device)
    except (OSError, ValueError) as e:
        raise ValueError(f"could not build the CLIP adapter from {spec}: {e}") from e


# ---------------------------------------------------------------------------------- model folders
def read_model_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """The parts of a model folder: ``{"prior": Path | None, "decoder": Path, "clip": spec | None}``.

    A model folder holds ``dalle2.json`` (``{"prior": ..., "decoder": ..., "clip": ...}``, paths
    relative to the folder; optionally ``"chain"``: the DALLE2 sampling defaults
    ``prior_num_samples``, ``prior_sampler``, ``decoder_sampler``) or the subfolders ``prior/``,
    ``decoder/`` (our exports) and ``clip/`` (a saved x-clip model). Returns also ``"chain"``.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"a model folder must be a folder, got a file: {folder}")
    index = folder / MODEL_INDEX
    if index.exists():
        try:
            meta = json.loads(index.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{index} is not valid JSON: {e}") from e
        if not isinstance(meta, dict):
            raise ValueError(f"{index} must hold a JSON object with 'prior', 'decoder' and 'clip'")
        prior = meta.get("prior", "prior")
        chain = meta.get("chain") or {}
        return {
            "prior": None if prior is None else folder / prior,
            "decoder": folder / meta.get("decoder", "decoder"),
            "clip": parse_clip_spec(meta.get("clip"), folder),
            "chain": {k: v for k, v in chain.items() if k in _CHAIN_SETTINGS and v is not None},
        }
    if not (folder / "decoder").exists():
        raise ValueError(
            f"{folder} holds no {MODEL_INDEX} and no prior/ + decoder/ subfolders: not a model folder "
            "(a demo or training output folder, or one written by save_pretrained)"
        )
    return {
        "prior": folder / "prior" if (folder / "prior").exists() else None,
        "decoder": folder / "decoder",
        "clip": parse_clip_spec(str(folder / "clip")) if (folder / "clip").exists() else None,
        "chain": {},
    }


def _export_kind(folder: Path) -> str | None:
    """'prior' / 'decoder' for one of our export folders, else None."""
    cfg = folder / "config.json"
    if not (folder / "model.safetensors").exists() or not cfg.exists():
        return None
    try:
        return json.loads(cfg.read_text()).get("kind")
    except (json.JSONDecodeError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------- sources
@dataclass
class _Sources:
    """Resolved local sources of a pretrained model."""

    prior: Any = None  # path
    prior_config: Any = None
    decoder: Any = None  # path or list of (path, unet numbers)
    decoder_config: Any = None
    clip: dict | None = None
    clip_weights: tuple[str, HubFile, dict] | None = None  # (what, file, hub options), fetched if built
    chain: dict = field(default_factory=lambda: {"prior_num_samples": 2})  # DALLE2 keyword defaults
    origin: str = ""


def _resolve(name: str | os.PathLike, part: str, hub: dict) -> _Sources:
    """Local sources for `name` (see the module docstring); `part` is 'prior', 'decoder' or 'dalle2'."""
    text = os.fspath(name)
    release = _release(text) if isinstance(name, str) else None
    if release is not None:
        return _release_sources(text, release, part, hub)
    path = Path(text)
    if path.exists():
        return _local_sources(path, part)
    if isinstance(name, str) and _REPO_ID.match(text):
        folder = resolve_hub_snapshot(text, what=text, **hub)
        src = _local_sources(folder, part)
        src.origin = f"{text} (Hub, {folder})"
        return src
    raise ValueError(
        f"{text!r} is neither a known pretrained name ({', '.join(sorted(PRETRAINED))}), an existing folder or "
        "file, nor a Hub repo id (owner/name)"
    )


def _release_sources(name: str, release: PretrainedRelease, part: str, hub: dict) -> _Sources:
    def get(file: HubFile | None) -> Path | None:
        return None if file is None else resolve_hub_file(file, what=name, **hub)

    src = _Sources(chain={"prior_num_samples": release.prior_num_samples}, origin=f"{name} (Hub)")
    if part in ("prior", "dalle2"):
        if release.prior is None:
            raise ValueError(f"{name} has no prior")
        src.prior, src.prior_config = get(release.prior), get(release.prior_config)
    if part in ("decoder", "dalle2"):
        src.decoder = [(get(f), list(numbers)) for f, numbers in release.decoder]
        src.decoder_config = [get(c) for c in release.decoder_configs]
    src.clip = None if release.clip is None else dict(release.clip)
    if release.clip is not None and release.clip_weights is not None:
        src.clip_weights = (f"{name} (CLIP)", release.clip_weights, hub)
    return src


def _local_sources(path: Path, part: str) -> _Sources:
    src = _Sources(origin=str(path))
    if path.is_file() or _export_kind(path) is not None:  # one checkpoint file or export folder
        kind = _export_kind(path) if path.is_dir() else None
        if part == "dalle2" or (kind is not None and kind != part):
            raise ValueError(f"{path} holds one {kind or 'checkpoint'}, not a {part} model folder")
        setattr(src, part, path)
        return src
    parts = read_model_folder(path)
    if part in ("prior", "dalle2"):
        if parts["prior"] is None:
            raise ValueError(f"the model folder {path} has no prior")
        src.prior = parts["prior"]
    if part in ("decoder", "dalle2"):
        src.decoder = parts["decoder"]
    src.clip = parts["clip"]
    src.chain = {"prior_num_samples": 2, **parts["chain"]}
    return src


def _clip(clip: Any, src: _Sources, device: Any) -> Any:
    """The CLIP adapter to attach: the given object / spec, or (`clip="auto"`) the source's own."""
    if clip is None:
        return None
    if isinstance(clip, str) and clip == AUTO:
        if src.clip is None:
            return None
        spec = dict(src.clip)
        if src.clip_weights is not None:
            what, file, hub = src.clip_weights
            spec["pretrained"] = str(resolve_hub_file(file, what=what, **hub))
        return build_clip(spec, device)
    if isinstance(clip, (dict, os.PathLike)) or isinstance(clip, str):
        return build_clip(parse_clip_spec(clip), device)
    return clip


def _hub_kwargs(revision: str | None, cache_dir: Any, token: Any, verify: bool) -> dict:
    return {"revision": revision, "cache_dir": cache_dir, "token": token, "verify": verify}


# ---------------------------------------------------------------------------------------- loaders
def load_prior(
    name_or_path: str | os.PathLike,
    *,
    clip: Any = AUTO,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    verify: bool = True,
    map_location: Any = "cpu",
):
    """A :class:`~dalle2_pytorch.DiffusionPrior` by name, folder, file or Hub repo id (module docstring).

    Args:
        clip: "auto" (the release's / folder's CLIP; LAION's is OpenAI ViT-L/14, fetched through the
            Hub cache), None (no CLIP), an adapter, or a CLIP spec (AdapterConfig dict, x-clip folder).
        revision: Hub revision (branch, tag or commit) of every file fetched.
        cache_dir: huggingface_hub cache (default ``HF_HUB_CACHE``).
        token: Hub token for private repos.
        verify: checksum-verify fetched files.
        map_location: device the weights are loaded to.
    """
    src = _resolve(name_or_path, "prior", _hub_kwargs(revision, cache_dir, token, verify))
    prior = load_prior_checkpoint(src.prior, src.prior_config, clip=_clip(clip, src, map_location),
                                  map_location=map_location)
    prior.pretrained_from = src.origin
    return prior


def load_decoder(
    name_or_path: str | os.PathLike,
    *,
    clip: Any = AUTO,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    verify: bool = True,
    map_location: Any = "cpu",
):
    """A :class:`~dalle2_pytorch.Decoder` by name, folder, file or Hub repo id (see :func:`load_prior`)."""
    src = _resolve(name_or_path, "decoder", _hub_kwargs(revision, cache_dir, token, verify))
    decoder = load_decoder_checkpoint(src.decoder, src.decoder_config, clip=_clip(clip, src, map_location),
                                      map_location=map_location)
    decoder.pretrained_from = src.origin
    return decoder


def load_dalle2(
    name_or_path: str | os.PathLike,
    *,
    clip: Any = AUTO,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    verify: bool = True,
    map_location: Any = "cpu",
    **dalle2_kwargs: Any,
):
    """A :class:`~dalle2_pytorch.DALLE2` (prior + decoder sharing one CLIP) by name, model folder or
    Hub repo id. Arguments as :func:`load_prior`; other keyword arguments (`prior_num_samples`,
    `prior_sampler`, `decoder_sampler`) go to ``DALLE2`` and override the release's or the model
    folder's defaults (candidates per caption: 2 unless stored)."""
    from dalle2_pytorch.dalle2 import DALLE2

    src = _resolve(name_or_path, "dalle2", _hub_kwargs(revision, cache_dir, token, verify))
    adapter = _clip(clip, src, map_location)
    prior = load_prior_checkpoint(src.prior, src.prior_config, clip=adapter, map_location=map_location)
    decoder = load_decoder_checkpoint(src.decoder, src.decoder_config, clip=adapter, map_location=map_location)
    if adapter is None:
        logger.warning("%s: no CLIP attached (clip=None or none known): prompts and images cannot be embedded", src.origin)
    chain = DALLE2(prior=prior, decoder=decoder, **{**src.chain, **dalle2_kwargs})
    chain.pretrained_from = src.origin
    return chain.eval()

