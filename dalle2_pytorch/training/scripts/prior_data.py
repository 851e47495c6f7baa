"""Data and evaluation helpers of the prior script: embedding readers, text conditioning through
CLIP, deterministic validation loss and the cosine-similarity report (unCLIP prior evaluation)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_pytorch.data import get_reader, make_splits
from dalle2_pytorch.training.scripts.cli import ConfigError
from dalle2_pytorch.training.scripts.runtime import no_cond_dropout

__all__ = ["PriorConditioner", "PriorData", "cosine_report", "first_batch", "iterate_batches", "validation_loss"]


class PriorConditioner:
    """Turns a batch's text part into the prior's conditioning.

    Captions (list of str) are tokenised and embedded by the CLIP adapter, giving the text
    embedding and, for priors conditioned on them, the per-token text encodings. Precomputed
    text embeddings ((b, d) float tensors) are used as they are.
    """

    def __init__(self, clip: Any, condition_on_text_encodings: bool, device: torch.device) -> None:
        self.clip = clip
        self.condition_on_text_encodings = condition_on_text_encodings
        self.device = device

    @torch.no_grad()
    def __call__(self, text: Any) -> dict[str, torch.Tensor]:
        """Returns `{"text_embed": (b, d)[, "text_encodings": (b, n, d)]}` on the run's device."""
        if isinstance(text, torch.Tensor) and text.is_floating_point():
            return {"text_embed": text.to(self.device)}
        if self.clip is None:
            raise ValueError("captions need a CLIP to embed them (prior.clip)")
        tokens = self.clip.tokenize(list(text))
        out = self.clip.embed_text(tokens)
        cond = {"text_embed": out.text_embed.float().to(self.device)}
        if self.condition_on_text_encodings:
            if out.text_encodings is None:
                raise ValueError("this CLIP adapter gives no per-token text encodings; the prior needs them")
            cond["text_encodings"] = out.text_encodings.float().to(self.device)
        return cond


class PriorData:
    """Train / val / test loaders over precomputed embeddings, cut per rank.

    Text-conditioned priors (and priors without precomputed text embeddings) read captions from
    `data.meta_url` and embed them with CLIP; otherwise text embeddings come from `data.text_url`
    (the reference's non-text-conditioned path, which was broken there).
    """

    @staticmethod
    def uses_clip(config: Any) -> bool:
        """Whether captions are embedded during training (else text embeddings are read)."""
        return bool(config.prior.condition_on_text_encodings or config.data.text_url is None)

    def __init__(self, config: Any, clip: Any, image_embed_dim: int, rank: int, world_size: int) -> None:
        data, prior = config.data, config.prior
        self.uses_captions = self.uses_clip(config)
        if self.uses_captions:
            if clip is None:
                reason = ("conditioned on text encodings" if prior.condition_on_text_encodings
                          else "trained without data.text_url")
                raise ConfigError(
                    f"the prior is {reason}, so captions are embedded during training: set prior.clip "
                    "(the CLIP the image embeddings were computed with)"
                )
            image_reader, text_reader = get_reader(True, data.image_url, meta_url=data.meta_url), None
        else:
            image_reader, text_reader = get_reader(False, data.image_url, txt_url=data.text_url)
        if image_reader.dimension != image_embed_dim:
            raise ConfigError(
                f"data.image_url holds {image_reader.dimension}-d embeddings but prior.image_embed_dim is "
                f"{image_embed_dim}"
            )
        if clip is not None and int(clip.dim_latent) != image_embed_dim:
            raise ConfigError(
                f"prior.clip embeds to {clip.dim_latent} dims but prior.image_embed_dim is {image_embed_dim}"
            )
        if clip is not None and prior.condition_on_text_encodings and int(clip.text_encodings_dim) != image_embed_dim:
            raise ConfigError(
                f"prior.clip gives {clip.text_encodings_dim}-d text encodings; the prior network needs "
                f"{image_embed_dim} (its width)"
            )
        self.train, self.val, self.test = make_splits(
            self.uses_captions, data.batch_size, data.num_data_points, data.splits.train, data.splits.val,
            image_reader, text_reader, rank=rank, world_size=world_size, tokenizer=None,
        )
        self.count = image_reader.count
        if self.sizes()["train"] == 0:
            raise ConfigError(
                f"the training split of this process is empty ({image_reader.count} embeddings, "
                f"num_data_points={data.num_data_points}, "
                f"splits={data.splits.train}/{data.splits.val}/{data.splits.test}, "
                f"{world_size} process(es))"
            )

    @property
    def train_dataset(self) -> Any:
        return self.train.dataset

    @property
    def skipped(self) -> Any:
        return self.train.dataset.skipped

    def sizes(self) -> dict[str, int]:
        return {name: loader.dataset.stop - loader.dataset.range_start for name, loader in
                (("train", self.train), ("val", self.val), ("test", self.test))}


def iterate_batches(loader: Any) -> Iterator[Any]:
    """Batches of a `make_splits` loader. In-process loaders are iterated through their dataset
    directly: a DataLoader iterator draws a seed from the global RNG when created, which would
    shift the random stream of a resumed run."""
    if getattr(loader, "num_workers", 0) == 0 and loader.dataset is not None:
        return iter(loader.dataset)
    return iter(loader)


def _rewind(loader: Any) -> None:
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "set_start"):
        dataset.set_start(dataset.range_start)


def first_batch(loader: Any) -> Any:
    """The first batch of a split (None if it is empty); the split stays at its beginning."""
    _rewind(loader)
    batch = next(iterate_batches(loader), None)
    _rewind(loader)
    return batch


@torch.no_grad()
def validation_loss(
    model: nn.Module, loader: Any, conditioner: PriorConditioner, seed: int, device: torch.device
) -> tuple[float, int]:
    """Mean loss over a split with a fixed generator, eval mode and no conditioning dropout.

    Returns:
        (mean loss, number of samples) of this process's part.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    total, count = 0.0, 0
    _rewind(loader)
    with no_cond_dropout(model):
        for image_embed, text in iterate_batches(loader):
            cond = conditioner(text)
            loss = model(image_embed=image_embed.to(device), generator=generator, **cond)
            b = image_embed.shape[0]
            total += float(loss) * b
            count += b
    return (total / count if count else float("nan")), count


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=-1).mean().item()


@torch.no_grad()
def cosine_report(
    sample_loop: Any,
    batch: Any,
    conditioner: PriorConditioner,
    timesteps: list[int],
    seed: int,
    device: torch.device,
    phase: str = "val",
) -> dict[str, float]:
    """Cosine similarities of sampled image embeddings (the reference's prior evaluation).

    For each sampling step count T: `sim_pred_image` (sample vs the true image embedding),
    `sim_pred_text` (sample vs its text), `sim_unrelated_caption` (text vs a sample drawn for the
    next caption of the batch, rolled by one) and `sim_pred_text_minus_baseline`; plus the
    baseline `sim_text_image` (text vs true image embedding). Higher image similarity and lower
    unrelated similarity are better.

    Args:
        sample_loop: `trainer.p_sample_loop` (EMA model): `(shape, text_cond, timesteps=, generator=)`.
        batch: `(image_embed (b, d), text)` from a prior loader.
    """
    image_embed, text = batch
    cond = conditioner(text)
    image = F.normalize(image_embed.to(device).float(), dim=-1)
    text_embed = F.normalize(cond["text_embed"].float(), dim=-1)
    rolled = {k: v.roll(1, dims=0) for k, v in cond.items()}
    shape = tuple(image.shape)
    out = {f"{phase}/sim_text_image": _cos(text_embed, image)}
    for steps in timesteps:
        gen = torch.Generator(device=device).manual_seed(seed)
        pred = F.normalize(sample_loop(shape, cond, timesteps=steps, generator=gen).float(), dim=-1)
        unrelated = F.normalize(sample_loop(shape, rolled, timesteps=steps, generator=gen).float(), dim=-1)
        tag = f"[steps={steps}]"
        out[f"{phase}/sim_pred_image{tag}"] = _cos(pred, image)
        out[f"{phase}/sim_pred_text{tag}"] = _cos(pred, text_embed)
        out[f"{phase}/sim_unrelated_caption{tag}"] = _cos(unrelated, text_embed)
        baseline = out[f"{phase}/sim_text_image"]
        out[f"{phase}/sim_pred_text_minus_baseline{tag}"] = out[f"{phase}/sim_pred_text{tag}"] - baseline
    return out
