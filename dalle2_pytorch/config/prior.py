"""Diffusion prior configs: the network, the prior, its data and training settings.

Field names and defaults follow the reference's `train_configs.py` and the constructor signatures
of `DiffusionPriorNetwork` / `DiffusionPrior`, so the reference's JSON files (and LAION's
`prior_config.json`) parse unchanged. Every constructor argument is an explicit field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .base import (
    BetaSchedule,
    FiniteFloat,
    Flag,
    Layout,
    LossType,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Layers,
    Probability,
    SamplerName,
    Seed,
    Steps,
    StrictModel,
    TrainingConfig,
    constructor_kwargs,
)
from .clip import AdapterConfig
from .tracker import TrackerConfig, TrainSplitConfig

__all__ = [
    "DiffusionPriorNetworkConfig",
    "DiffusionPriorConfig",
    "DiffusionPriorTrainConfig",
    "DiffusionPriorDataConfig",
    "TrainDiffusionPriorConfig",
]

class DiffusionPriorNetworkConfig(StrictModel):
    """`DiffusionPriorNetwork` (the causal transformer of the prior)."""

    dim: PositiveInt
    """Model width; equals the CLIP image-embedding dim and the text-encoding width."""
    num_timesteps: Steps | None = None
    """None: continuous time embedding (MLP); int: learned embedding table of that size."""
    num_time_embeds: PositiveInt = 1
    """Tokens the time embedding is split into."""
    num_image_embeds: PositiveInt = 1
    """Tokens the noised image embedding is split into."""
    num_text_embeds: PositiveInt = 1
    """Tokens the text embedding is split into."""
    max_text_len: PositiveInt = 256
    """Text encodings are truncated / padded to this many tokens (77 for OpenAI CLIP)."""
    self_cond: Flag = False
    """Self-conditioning: one extra token holding the previous x0 estimate."""
    depth: Layers
    """Number of transformer layers."""
    dim_head: PositiveInt = 64
    """Width of one attention head."""
    heads: PositiveInt = 8
    """Query heads (keys/values are one shared head)."""
    ff_mult: PositiveInt = 4
    """Feed-forward inner width multiplier (SwiGLU)."""
    norm_in: Flag = False
    """LayerNorm on the input tokens."""
    norm_out: Flag = True
    """Final (stable) LayerNorm."""
    attn_dropout: Probability = 0.0
    """Dropout on attention probabilities."""
    ff_dropout: Probability = 0.0
    """Dropout inside the feed-forward."""
    final_proj: Flag = True
    """Final bias-free projection."""
    normformer: Flag = False
    """NormFormer LayerNorm after the feed-forward activation."""
    rotary_emb: Flag = True
    """Rotary position embedding on queries and keys."""
    linear_text_skip: Flag = False
    """(Extension) add a learned linear map of the text embedding to the output (held-out text-image
    combinations generalise better; see `DiffusionPriorNetwork`)."""
    layout: Layout = "1.15.6"
    """(Extension) module/operation layout to build: '1.15.6' or '1.1.0' (LAION-era checkpoints)."""

    def create(self) -> Any:
        """Builds `dalle2_pytorch.prior.network.DiffusionPriorNetwork` from these fields."""
        from dalle2_pytorch.prior.network import DiffusionPriorNetwork

        return DiffusionPriorNetwork(**constructor_kwargs(self))


class DiffusionPriorConfig(StrictModel):
    """`DiffusionPrior`: the network plus the diffusion settings and an optional CLIP."""

    clip: AdapterConfig | None = None
    """CLIP used to embed raw text/images; None: embeddings are given to the prior directly."""
    net: DiffusionPriorNetworkConfig
    """The denoising network."""
    image_embed_dim: PositiveInt
    """CLIP image-embedding dim; must equal `net.dim`."""
    image_size: PositiveInt | None = None
    """Accepted for compatibility; unused."""
    image_channels: PositiveInt = 3
    """Image channels (used by CoCa adapters)."""
    timesteps: Steps = 1000
    """Training diffusion steps."""
    sample_timesteps: Steps | None = None
    """Sampling steps; fewer than `timesteps` switches sampling to DDIM. None: `timesteps`."""
    cond_drop_prob: Probability = 0.0
    """Default for both `text_cond_drop_prob` and `image_cond_drop_prob`."""
    text_cond_drop_prob: Probability | None = None
    """Probability of dropping the text conditioning in training (classifier-free guidance)."""
    image_cond_drop_prob: Probability | None = None
    """Probability of dropping the image-embedding conditioning in training."""
    loss_type: LossType = "l2"
    """'l1', 'l2' (MSE) or 'huber'."""
    predict_x_start: Flag = True
    """Network predicts the clean embedding x0 (unCLIP); False: predicts the noise."""
    predict_v: Flag = False
    """Network predicts v (takes precedence over predict_x_start)."""
    beta_schedule: BetaSchedule = "cosine"
    """Noise schedule: cosine, linear, quadratic, jsd or sigmoid."""
    condition_on_text_encodings: Flag = True
    """Also condition on per-token CLIP text encodings."""
    sampling_clamp_l2norm: Flag = False
    """(x0 objective) l2-normalise and rescale x0 at every sampling step."""
    sampling_final_clamp_l2norm: Flag = False
    """(x0 objective) l2-normalise and rescale the final sample."""
    training_clamp_l2norm: Flag = False
    """(x0 objective) l2-normalise and rescale the prediction before the loss."""
    init_image_embed_l2norm: Flag = False
    """Start sampling from l2-normalised, rescaled noise."""
    image_embed_scale: PositiveFloat | None = None
    """Scale of the unit-norm CLIP embeddings in diffusion space; None: sqrt(image_embed_dim)."""
    clip_adapter_overrides: dict[str, Any] | None = None
    """Extra keyword arguments for x-clip / CoCa adapters."""
    ddim_sampling_eta: NonNegativeFloat = 1.0
    """(Extension) DDIM eta when `sample_timesteps` < `timesteps` (the reference fixed it at 1)."""
    sampler: SamplerName | None = None
    """(Extension) default sampler (`dalle2_pytorch.diffusion.sampler_names()`); None: the reference's
    rule, DDPM at `timesteps` steps and DDIM with fewer."""

    @model_validator(mode="after")
    def _check_consistency(self) -> DiffusionPriorConfig:
        if self.net.dim != self.image_embed_dim:
            raise ValueError(
                f"prior.net.dim ({self.net.dim}) must equal prior.image_embed_dim ({self.image_embed_dim})"
            )
        if self.sample_timesteps is not None and self.sample_timesteps > self.timesteps:
            raise ValueError(
                f"prior.sample_timesteps ({self.sample_timesteps}) must not exceed "
                f"prior.timesteps ({self.timesteps})"
            )
        if self.net.num_timesteps is not None and self.net.num_timesteps < self.timesteps:
            raise ValueError(
                f"prior.net.num_timesteps ({self.net.num_timesteps}) is smaller than prior.timesteps "
                f"({self.timesteps}); the learned time embedding would be indexed out of range"
            )
        return self

    def create(self, *, clip: Any = None, build_clip: bool = True) -> Any:
        """Builds `dalle2_pytorch.prior.diffusion_prior.DiffusionPrior`.

        Args:
            clip: an already-built CLIP adapter to attach (takes precedence over `self.clip`).
            build_clip: build `self.clip` when `clip` is None. Pass False to build without CLIP,
                e.g. to load a checkpoint (checkpoints never contain CLIP weights).

        Returns:
            The `DiffusionPrior` module.
        """
        from dalle2_pytorch.prior.diffusion_prior import DiffusionPrior

        if clip is None and build_clip and self.clip is not None:
            clip = self.clip.create()
        return DiffusionPrior(net=self.net.create(), clip=clip, **constructor_kwargs(self, {"clip", "net"}))


class DiffusionPriorTrainConfig(StrictModel):
    """Optimisation, EMA and bookkeeping settings of `train_prior.py`."""

    _legacy_keys = {"save_every": "step-based saving was replaced by save_every_seconds"}

    epochs: PositiveInt = 1
    """Passes over the training split."""
    lr: PositiveFloat = 1.1e-4
    """Learning rate."""
    wd: NonNegativeFloat = 6.02e-2
    """AdamW weight decay (0: Adam)."""
    max_grad_norm: PositiveFloat | None = 0.5
    """Gradient-norm clipping; None: no clipping."""
    use_ema: Flag = True
    """Keep an EMA copy of the prior (used for validation, sampling and 'model' saves)."""
    ema_beta: Probability = 0.99
    """EMA decay."""
    ema_update_after_step: NonNegativeInt = 100
    """Optimizer steps before the EMA starts tracking."""
    ema_update_every: PositiveInt = 10
    """Update the EMA every this many steps."""
    amp: Flag | Literal["auto", "no", "fp16", "bf16"] = "auto"
    """Mixed precision (autocast via accelerate). "auto": bf16 on GPUs with native bf16 (Ampere and
    newer), float32 on CPU and older GPUs, or what `accelerate launch` was configured with; true: bf16
    where supported, else fp16; false / "no": float32; "fp16" / "bf16": that."""
    compile: Flag | Literal["blocks", "model"] = False
    """torch.compile the trained networks: true / "blocks" (each repeated block; fast to compile),
    "model" (each network whole). The first step includes the compilation (logged as
    train/compile_seconds)."""
    gradient_checkpointing: Flag = False
    """Recompute activations in backward (less memory, roughly one more forward per step)."""
    warmup_steps: NonNegativeInt | None = None
    """Linear learning-rate warmup steps; None: no warmup."""
    cosine_decay_max_steps: PositiveInt | None = None
    """Cosine learning-rate decay over this many steps; None: constant lr."""
    save_every_seconds: PositiveInt = 3600
    """Save the latest checkpoint this often (wall-clock seconds)."""
    eval_timesteps: list[Steps] = Field(default_factory=lambda: [64])
    """Sampling step counts used for the cosine-similarity metrics."""
    best_validation_loss: FiniteFloat = 1e9
    """Best validation loss so far (restored on resume)."""
    current_epoch: NonNegativeInt = 0
    """Epoch to start at (restored on resume)."""
    num_samples_seen: NonNegativeInt = 0
    """Training samples seen so far (restored on resume)."""
    random_seed: Seed = 0
    """Seed for model initialisation and data order (0 <= seed < 2**31)."""


class DiffusionPriorDataConfig(StrictModel):
    """Precomputed CLIP embeddings (EmbeddingReader layout) for prior training."""

    image_url: str
    """Folder of image-embedding .npy files (local path or fsspec URL)."""
    meta_url: str | None = None
    """Folder of parquet metadata with a `caption` column (text-conditioned training)."""
    text_url: str | None = None
    """(Extension) folder of text-embedding .npy files, for training without text encodings."""
    splits: TrainSplitConfig
    """Train / val / test fractions."""
    batch_size: PositiveInt
    """Batch size per process."""
    num_data_points: PositiveInt = 250_000_000
    """Number of embeddings to use."""
    eval_every_seconds: PositiveInt = 3600
    """Run validation this often (wall-clock seconds)."""

    @model_validator(mode="after")
    def _check_sources(self) -> DiffusionPriorDataConfig:
        if self.meta_url is None and self.text_url is None:
            raise ValueError("prior data needs data.meta_url (captions) or data.text_url (text embeddings)")
        return self


class TrainDiffusionPriorConfig(TrainingConfig):
    """Full `train_prior.py` config: `prior`, `data`, `train`, `tracker`."""

    _legacy_keys = {"load": "pre-1.0 schema; checkpoint loading moved to tracker.load"}
    _data_path_fields = ("data.image_url", "data.meta_url", "data.text_url")

    prior: DiffusionPriorConfig
    """The model."""
    data: DiffusionPriorDataConfig
    """The embedding data."""
    train: DiffusionPriorTrainConfig
    """Optimisation settings."""
    tracker: TrackerConfig
    """Logging / loading / saving."""

    @model_validator(mode="after")
    def _check_training(self) -> TrainDiffusionPriorConfig:
        too_many = [t for t in self.train.eval_timesteps if t > self.prior.timesteps]
        if too_many:
            raise ValueError(
                f"train.eval_timesteps {too_many} exceed prior.timesteps ({self.prior.timesteps})"
            )
        if self.prior.condition_on_text_encodings and self.data.meta_url is None:
            raise ValueError(
                "prior.condition_on_text_encodings=true needs captions: set data.meta_url"
            )
        return self
