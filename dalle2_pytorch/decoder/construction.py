"""From the reference's `Decoder(...)` keyword arguments (scalars or per-Unet tuples) to one
:class:`~dalle2_pytorch.decoder.stage.StageSettings` per stage, and Unets cast to their place.

The reference gives per-Unet options as a scalar (repeated, or for `learned_variance` applied to
the first Unet only) or as a tuple; :func:`per_stage` is the one place that expands them.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from dalle2_pytorch.decoder.stage import StageSettings
from dalle2_pytorch.decoder.unet import Unet
from dalle2_pytorch.diffusion import objective_from_flags
from dalle2_pytorch.diffusion.steps import check_steps
from dalle2_pytorch.vqgan_vae.null import NullVQGanVAE
from dalle2_pytorch.vqgan_vae.vae import VQGanVAE

__all__ = ["build_stage_settings", "cast_unet", "per_stage", "resolve_image_sizes", "stage_vaes"]


def per_stage(value: Any, n: int, name: str, fill: Any = None) -> tuple:
    """A scalar repeated n times, or a sequence of length n (shorter ones padded with `fill`, if given;
    with `fill`, a scalar applies to the first stage only)."""
    if isinstance(value, (list, tuple)):
        value = tuple(value)
        if fill is not None and len(value) < n:
            value = value + (fill,) * (n - len(value))
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values but the decoder has {n} unets")
        return value
    if fill is not None:
        return (value,) + (fill,) * (n - 1)
    return (value,) * n


def resolve_image_sizes(image_size: int | None, image_sizes: Sequence[int] | None, n: int, clip: Any) -> tuple[int, ...]:
    """One output size per stage: `image_sizes`, or `image_size` (or the CLIP's) for a single Unet."""
    if image_size is not None and image_sizes is not None:
        raise ValueError("give either image_size or image_sizes, not both")
    if image_sizes is None:
        if image_size is None:
            if clip is None:
                raise ValueError("the decoder needs image_size or image_sizes (or a clip to take the size from)")
            image_size = clip.image_size
        if n > 1:
            raise ValueError(f"a cascade of {n} unets needs image_sizes, one size per unet")
        image_sizes = (image_size,)
    sizes = tuple(int(s) for s in image_sizes)
    if len(sizes) != n:
        raise ValueError(f"image_sizes has {len(sizes)} sizes but there are {n} unets")
    if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
        raise ValueError(f"image_sizes must be positive and strictly increasing, got {list(sizes)}")
    return sizes


def build_stage_settings(
    n: int,
    *,
    image_sizes: tuple[int, ...],
    channels: int,
    timesteps: Any,
    sample_timesteps: Any,
    beta_schedule: Any,
    predict_x_start: Any,
    predict_v: Any,
    learned_variance: Any,
    p2_loss_weight_gamma: Any,
    random_crop_sizes: Any,
    sampler: Any = None,
    vaes: Sequence[Any] = (),
    predict_x_start_for_latent_diffusion: bool = False,
    **shared: Any,
) -> tuple[StageSettings, ...]:
    """StageSettings for n stages from the reference's arguments; `shared` holds the decoder-wide
    options copied into every stage (eta, thresholding, learned-variance and low-res options).

    `vaes`: one VQGAN-VAE or `NullVQGanVAE` per stage (see :func:`stage_vaes`); a stage with a real
    VAE is latent: its Unet diffuses the VAE's latent map (channels `encoded_dim`, side
    `get_encoded_fmap_size(image_size)`), with x_0 prediction when
    `predict_x_start_for_latent_diffusion` (the reference's option)."""
    schedules = per_stage(beta_schedule, n, "beta_schedule") if beta_schedule is not None else (
        ("cosine",) * (n - 1) + ("linear",) if n > 1 else ("cosine",)
    )
    objectives = [
        objective_from_flags(x, v)
        for x, v in zip(per_stage(predict_x_start, n, "predict_x_start"), per_stage(predict_v, n, "predict_v"))
    ]
    crops = per_stage(random_crop_sizes, n, "random_crop_sizes")
    if crops[0] is not None:
        raise ValueError("random_crop_sizes must be None for the first unet")
    T = per_stage(timesteps, n, "timesteps")
    steps = per_stage(sample_timesteps, n, "sample_timesteps")
    learned = per_stage(learned_variance, n, "learned_variance", fill=False)
    gammas = per_stage(p2_loss_weight_gamma, n, "p2_loss_weight_gamma")
    samplers = per_stage(sampler, n, "sampler")
    settings = []
    for i in range(n):
        if steps[i] is not None:
            check_steps(steps[i], int(T[i]), f"unet {i + 1}: sample_timesteps")
        latent = i < len(vaes) and not isinstance(vaes[i], NullVQGanVAE)
        objective = objectives[i]
        if latent and predict_x_start_for_latent_diffusion:
            objective = objective_from_flags(True, False)
        settings.append(StageSettings(
            index=i, image_size=image_sizes[i], timesteps=int(T[i]), sample_timesteps=steps[i],
            beta_schedule=schedules[i], objective=objective, learned_variance=bool(learned[i]),
            p2_loss_weight_gamma=float(gammas[i]), random_crop_size=crops[i], lowres_cond=i > 0,
            channels=int(vaes[i].encoded_dim) if latent else channels, sampler=samplers[i],
            latent_size=int(vaes[i].get_encoded_fmap_size(image_sizes[i])) if latent else None, **shared,
        ))
    return tuple(settings)


def stage_vaes(vae: Any, n: int, channels: int, *, use_noise_for_lowres_cond: bool) -> tuple[Any, ...]:
    """One frozen, eval-mode VAE per stage: the given VQGAN-VAEs (copied without discriminator and
    perceptual network, as the reference), padded with `NullVQGanVAE` (pixel stages)."""
    given = tuple(vae) if isinstance(vae, (list, tuple)) else (vae,)
    if len(given) > n:
        raise ValueError(f"vae has {len(given)} entries but the decoder has {n} unets")
    out = []
    for i, v in enumerate(given + (None,) * (n - len(given))):
        if v is None or isinstance(v, NullVQGanVAE):
            out.append(NullVQGanVAE(channels=channels))
            continue
        if not isinstance(v, VQGanVAE):
            raise TypeError(f"vae[{i}] must be a VQGanVAE, a NullVQGanVAE or None, got {type(v).__name__}")
        if v.channels != channels:
            raise ValueError(f"vae[{i}] encodes {v.channels}-channel images but the decoder has channels={channels}")
        if i > 0 and use_noise_for_lowres_cond:
            raise ValueError("noise augmentation of low-res conditions (use_noise_for_lowres_cond) is not supported "
                             "with latent (VQGAN-VAE) stages")
        copy = v.copy_for_eval()
        copy.requires_grad_(False)
        out.append(copy)
    return tuple(out)


def cast_unet(unet: Unet, settings: StageSettings, *, lowres_noise: bool, unconditional: bool, clip: Any) -> Unet:
    """`unet` with the flags its place needs (the reference's `cast_model_parameters`); a trained
    Unet that must be rebuilt loses its weights, which is warned about."""
    first = settings.index == 0
    channels = settings.channels
    wanted = dict(
        lowres_cond=not first,
        lowres_noise_cond=(not first) and lowres_noise,
        channels=channels,
        channels_out=channels * (2 if settings.learned_variance else 1),
        cond_on_image_embeds=first and not unconditional,
        cond_on_text_encodings=(not unconditional) and bool(unet.cond_on_text_encodings),
    )
    if wanted["cond_on_image_embeds"] and unet.image_embed_dim is None:
        if clip is None:
            raise ValueError(
                f"unet {settings.unet_number} is conditioned on image embeddings: give it image_embed_dim "
                "(or attach a clip to the decoder)"
            )
        wanted["image_embed_dim"] = clip.dim_latent
    cast = unet.cast_model_parameters(**wanted)
    # a fresh Unet has a zero-initialised output conv: rebuilding it loses nothing
    fresh = all(not p.any() for p in unet.to_out.parameters()) if hasattr(unet, "to_out") else False
    if cast is not unet and not fresh:
        warnings.warn(
            f"unet {settings.unet_number} was rebuilt with {wanted} to fit its place in the decoder; its weights "
            "were re-initialised (build it with these settings to keep its weights)",
            UserWarning,
            stacklevel=4,
        )
    return cast
