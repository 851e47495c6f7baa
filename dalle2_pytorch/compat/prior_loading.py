"""`DiffusionPrior.from_checkpoint`: reference files (1.1.0 and 1.15.6 layouts) and our exports."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from dalle2_pytorch.compat.files import read_weights, resolve_config_source
from dalle2_pytorch.compat.schedules import check_schedule_buffers
from dalle2_pytorch.compat.prior_keys import check_prior_network_state, convert_prior_state_dict

__all__ = ["build_prior_from_config", "load_prior"]

logger = logging.getLogger(__name__)


def _prior_config(config: Any):
    from dalle2_pytorch.config.prior import DiffusionPriorConfig

    if isinstance(config, DiffusionPriorConfig):
        return config
    if isinstance(config, dict):
        return DiffusionPriorConfig.model_validate(config)
    raise TypeError(f"config must be a dict, a JSON path or a prior config object, got {type(config).__name__}")


def build_prior_from_config(config: Any, *, layout: str | None = None, clip: Any = None):
    """Builds a DiffusionPrior (without CLIP unless `clip` is given) from a prior config."""
    cfg = _prior_config(config)
    if layout is not None and cfg.net.layout != layout:
        cfg = cfg.model_copy(update={"net": cfg.net.model_copy(update={"layout": layout})})
    prior = cfg.create(clip=clip, build_clip=False)
    prior.config = cfg.model_dump(mode="json")
    return prior


def load_prior(
    path: str | os.PathLike,
    config: Any = None,
    *,
    clip: Any = None,
    map_location: Any = "cpu",
    strict: bool = True,
):
    """Loads a prior, in eval mode, with strictly checked weights.

    Args:
        path: a reference "model" file (LAION's `prior/latest.pth`), a reference trainer
            checkpoint (EMA weights preferred), our export folder, or our trainer checkpoint folder.
        config: the prior config (dict, JSON file such as LAION's `prior_config.json`, or config
            object). Reference prior files carry none, so it is required for them.
        clip: a CLIP adapter to attach (files never carry CLIP, except full trainer checkpoints,
            whose `clip.*` weights are then loaded into it).
        strict: refuse any missing / unexpected / mis-shaped key (readable diff).

    Raises:
        NotACheckpointError / UnsafeCheckpointError: unreadable or unsafe file.
        StateDictMismatchError: the weights do not fit the configured network.
        TensorValueMismatchError: the file's noise schedule differs from the config's.
    """
    loaded = read_weights(path, map_location=map_location)
    converted = convert_prior_state_dict(loaded.state_dict)
    cfg = resolve_config_source(config, loaded.config, "prior", "prior")
    prior = build_prior_from_config(cfg, layout=converted.layout, clip=clip)
    check_schedule_buffers(prior.noise_scheduler, converted.noise_scheduler, f"{loaded.source}: noise schedule vs config")
    if strict:
        check_prior_network_state(prior.net, converted, context=f"{loaded.source} (layout {converted.layout})")
    prior.net.load_state_dict(converted.network_state_dict(), strict=strict)
    if converted.clip:
        if prior.clip is not None:
            clip_state = {k[len("clip.") :]: v for k, v in converted.clip.items()}
            prior.clip.load_state_dict(clip_state, strict=strict)
        else:
            logger.info("%s: ignoring %d clip.* weights (no clip adapter given)", loaded.source, len(converted.clip))
    for note in loaded.notes:
        logger.info("%s: %s", loaded.source, note)
    prior.loaded_from = {"path": loaded.source, "kind": loaded.kind, "version": loaded.version, "layout": converted.layout}
    return prior.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
