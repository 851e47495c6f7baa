"""`Decoder.from_checkpoint`: reference files (1.1.0 and 1.15.6 layouts), our exports, stitching.

LAION's released decoder (`decoder/v1.0.2/latest.pth`) was saved by dalle2-pytorch 1.1.0: its
downsample layers are 4x4 strided convolutions and its cross-attention keys sit under `.fn.`. The
reference 1.15.6 silently loads it wrongly; here the file's key generation is detected and the Unets
are built with the matching `layout`, then loaded strictly.

Stitching: LAION pairs its base decoder with an upsampler saved in another file. Pass a list of
sources, each a path or `(path, [unet numbers])`, to assemble one cascade in the order given.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch

from dalle2_pytorch.compat.decoder_keys import (
    convert_decoder_state_dict,
    detect_decoder_layout,
    detect_own_decoder_layout,
    split_unet_state_dicts,
)
from dalle2_pytorch.compat.files import read_weights, resolve_config_source
from dalle2_pytorch.compat.keys import check_state_dict
from dalle2_pytorch.compat.schedules import check_schedule_buffers

__all__ = ["build_decoder_from_config", "load_decoder"]

logger = logging.getLogger(__name__)


def _decoder_config(config: Any):
    from dalle2_pytorch.config.decoder import DecoderConfig

    if isinstance(config, DecoderConfig):
        return config
    if isinstance(config, dict):
        return DecoderConfig.model_validate(config)
    raise TypeError(f"config must be a dict, a JSON path or a decoder config object, got {type(config).__name__}")


def build_decoder_from_config(config: Any, *, layout: str | None = None, clip: Any = None, load_vae_weights: bool = True):
    """Builds a Decoder (without CLIP unless `clip` is given); `layout` overrides every unet's layout;
    `load_vae_weights=False` builds latent stages' VAEs without reading their files (a checkpoint's
    `vaes.N.*` weights follow)."""
    cfg = _decoder_config(config)
    if layout is not None:
        unets = [u if u.layout == layout else u.model_copy(update={"layout": layout}) for u in cfg.unets]
        cfg = cfg.model_copy(update={"unets": unets})
    decoder = cfg.create(clip=clip, build_clip=False, load_vae_weights=load_vae_weights)
    decoder.config = cfg.model_dump(mode="json")
    return decoder


def _load_one(path, config, *, map_location, strict):
    loaded = read_weights(path, map_location=map_location)
    if loaded.kind in ("export", "trainer-checkpoint"):
        # our own files: our key names whatever the layout (an export of LAION's 1.1.0 decoder included)
        layout = detect_own_decoder_layout(loaded.state_dict)
        unet_state, schedules, other = convert_decoder_state_dict(loaded.state_dict, "1.15.6")
    else:
        layout = detect_decoder_layout(loaded.state_dict)
        unet_state, schedules, other = convert_decoder_state_dict(loaded.state_dict, layout)
    cfg = _reference_lowres_mode(_decoder_config(resolve_config_source(config, loaded.config, "decoder", "decoder")), loaded)
    vae_state = {k: v for k, v in other.items() if k.startswith("vaes.")}
    decoder = build_decoder_from_config(cfg, layout=layout, load_vae_weights=not vae_state)
    _check_vae_stages(decoder, vae_state, loaded.source)
    per_unet = split_unet_state_dicts(unet_state)
    for i, unet in enumerate(decoder.unets):
        state = per_unet.get(i, {})
        context = f"{loaded.source}: unet {i + 1} (layout {layout})"
        if strict:
            check_state_dict({k: tuple(v.shape) for k, v in unet.state_dict().items()}, state, context)
        unet.load_state_dict(state, strict=strict)
    extra = sorted(set(per_unet) - set(range(decoder.num_unets)))
    if extra:
        raise ValueError(f"{loaded.source} holds weights for unets {[i + 1 for i in extra]} the config does not define")
    _check_schedules(decoder, schedules, loaded.source)
    _load_vaes(decoder, vae_state, loaded.source, strict)
    return decoder, loaded, layout, {k: v for k, v in other.items() if k.startswith("clip.")}


def _check_vae_stages(decoder, vae_state: dict, source: str) -> None:
    """The file's VQGAN-VAE stages (`vaes.N.*` keys) must be latent stages of the config."""
    latent = {i for i, s in enumerate(decoder.stage_settings) if s.latent}
    missing = sorted({int(k.split(".")[1]) for k in vae_state} - latent)
    if missing:
        raise ValueError(
            f"{source} has VQGAN-VAE stages (vaes.{missing[0]}.*) but the config defines none for unet "
            f"{missing[0] + 1}: give a decoder config whose `vaes` lists each latent stage's VAE "
            '(e.g. {"config": <VQGanVAE constructor fields>})'
        )


def _load_vaes(decoder, vae_state: dict, source: str, strict: bool) -> None:
    """The `vaes.N.*` weights of latent stages (a discriminator the file may carry is dropped)."""
    latent = [i for i, s in enumerate(decoder.stage_settings) if s.latent]
    for i in latent:
        prefix = f"vaes.{i}."
        state = {k[len(prefix):]: v for k, v in vae_state.items() if k.startswith(prefix) and not k.startswith(prefix + "discr.")}
        if not state:
            continue  # the VAE's weights came from its own file (config `path`)
        vae = decoder.vaes[i]
        if strict:
            check_state_dict({k: tuple(v.shape) for k, v in vae.state_dict().items()}, state, f"{source}: vae of unet {i + 1}")
        vae.load_state_dict(state, strict=strict)


def _reference_lowres_mode(cfg, loaded):
    """Files written by the reference (1.1.0 or 1.15.6, LAION's included) were trained on low-res
    conditions made by nearest-neighbour down- and up-sampling: keep that for them unless the config
    says otherwise (our own exports always record `lowres_downsample_mode`)."""
    if loaded.kind.startswith("reference") and "lowres_downsample_mode" not in cfg.model_fields_set:
        loaded.notes.append("reference file: low-res conditioning downsamples with nearest neighbour, as it was trained")
        return cfg.model_copy(update={"lowres_downsample_mode": "nearest"})
    return cfg


def _check_schedules(decoder, schedules: dict, source: str) -> None:
    for i, ns in enumerate(decoder.noise_schedulers):
        prefix = f"noise_schedulers.{i}."
        got = {k[len(prefix) :]: v for k, v in schedules.items() if k.startswith(prefix)}
        check_schedule_buffers(ns, got, f"{source}: unet {i + 1} noise schedule vs config")


def _sources(path) -> list[tuple[Any, list[int] | None]]:
    if isinstance(path, (str, os.PathLike)):
        return [(path, None)]
    out = []
    for entry in path:
        if isinstance(entry, (tuple, list)) and len(entry) == 2 and not isinstance(entry[1], (str, os.PathLike)):
            out.append((entry[0], [int(n) for n in entry[1]]))
        else:
            out.append((entry, None))
    if not out:
        raise ValueError("no decoder checkpoint given")
    return out


def _stitch(parts: list[tuple[Any, list[int]]]):
    """One Decoder from chosen stages of several decoders (settings of the first for the rest)."""
    from dalle2_pytorch.decoder import Decoder

    unets, stages = [], []
    for decoder, numbers in parts:
        for n in numbers:
            unets.append(decoder.get_unet(n))
            stages.append(decoder.stages[n - 1])
    if len({s.timesteps for s in stages}) > 1:
        logger.info("stitched stages use different training timesteps: %s", [s.timesteps for s in stages])
    first = parts[0][0]
    return Decoder(
        unets,
        image_sizes=[s.image_size for s in stages],
        channels=first.channels,
        timesteps=[s.timesteps for s in stages],
        sample_timesteps=[s.sample_timesteps for s in stages],
        beta_schedule=[s.beta_schedule for s in stages],
        predict_x_start=[s.objective.value == "x_start" for s in stages],
        predict_v=[s.objective.value == "v" for s in stages],
        learned_variance=[s.learned_variance for s in stages],
        p2_loss_weight_gamma=[s.p2_loss_weight_gamma for s in stages],
        random_crop_sizes=[None] + [s.random_crop_size for s in stages[1:]],
        sampler=[s.sampler for s in stages],
        image_cond_drop_prob=first.image_cond_drop_prob,
        text_cond_drop_prob=first.text_cond_drop_prob,
        learned_variance_constrain_frac=first.learned_variance_constrain_frac,
        use_dynamic_thres=first.use_dynamic_thres,
        dynamic_thres_percentile=first.dynamic_thres_percentile,
        ddim_sampling_eta=first.ddim_sampling_eta,
        lowres_noise_sample_level=first.lowres_noise_sample_level,
        use_noise_for_lowres_cond=any(u.lowres_noise_cond for u in unets),
        lowres_downsample_mode=first.lowres_downsample_mode,
        unconditional=first.unconditional,
        auto_normalize_img=first.auto_normalize_img,
        clip_denoised=first.clip_denoised,
        loss_type=first.noise_schedulers[0].loss_type,
        vb_loss_weight=first.vb_loss_weight,
        p2_loss_weight_k=first.noise_schedulers[0].p2_loss_weight_k,
        **_lowres_settings(parts),
    )


def _lowres_settings(parts) -> dict:
    """Blur settings of the first stitched upsampler (the conditioners of its source decoder)."""
    from dalle2_pytorch.decoder.lowres import LowresConditioner

    for decoder, numbers in parts:
        for n in numbers:
            cond = decoder.lowres_conds[n - 1]
            if isinstance(cond, LowresConditioner):
                return dict(use_blur_for_lowres_cond=cond.use_blur, blur_prob=cond.blur_prob, blur_sigma=cond.blur_sigma,
                            blur_kernel_size=cond.blur_kernel_size, lowres_downsample_first=cond.downsample_first)
    return {}


def load_decoder(
    path: str | os.PathLike | Sequence[Any],
    config: Any = None,
    *,
    clip: Any = None,
    map_location: Any = "cpu",
    strict: bool = True,
):
    """Loads a decoder, in eval mode, with strictly checked weights.

    Args:
        path: a reference "model" file (embeds its config), a reference trainer checkpoint (EMA
            Unets preferred), our export folder or trainer checkpoint folder; or a list of sources,
            each a path or `(path, [unet numbers])`, stitched into one cascade in order.
        config: the decoder config (dict, JSON path, config object) for files that carry none;
            with several sources, one config per source (a list) or None.
        clip: CLIP adapter to attach.
        strict: refuse any missing / unexpected / mis-shaped key (readable diff).
    """
    sources = _sources(path)
    configs = config if isinstance(config, (list, tuple)) else [config] * len(sources)
    if len(configs) != len(sources):
        raise ValueError(f"{len(configs)} configs given for {len(sources)} checkpoint sources")
    parts = []
    clip_state: dict = {}
    for (src, numbers), cfg in zip(sources, configs):
        decoder, loaded, layout, clip_keys = _load_one(src, cfg, map_location=map_location, strict=strict)
        clip_state = clip_state or clip_keys
        numbers = numbers or list(range(1, decoder.num_unets + 1))
        for n in numbers:
            decoder.stage_index(n)
        parts.append((decoder, numbers))
        for note in loaded.notes:
            logger.info("%s: %s", loaded.source, note)
    if len(parts) == 1 and parts[0][1] == list(range(1, parts[0][0].num_unets + 1)):
        decoder = parts[0][0]
    else:
        decoder = _stitch(parts)
        decoder.config = None
    if clip is not None:
        from dalle2_pytorch.clip_adapters import wrap_clip

        decoder.clip = wrap_clip(clip, {})
        decoder.clip.requires_grad_(False)
        if clip_state:
            decoder.clip.load_state_dict({k[len("clip.") :]: v for k, v in clip_state.items()}, strict=strict)
    decoder.loaded_from = [str(s) for s, _ in sources]
    return decoder.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
