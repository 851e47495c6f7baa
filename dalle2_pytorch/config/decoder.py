"""Decoder configs: the cascade, its webdataset data, training and evaluation settings.

Field names and defaults follow the reference's `train_configs.py` and the `Decoder` constructor,
so reference JSON files and the `config` dumps embedded in decoder checkpoints (pydantic-1 dumps of
1.1.0 included) parse unchanged. Options that can differ per unet take a scalar or a list with one
value per unet.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import (
    BetaSchedule,
    Flag,
    LossType,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    SamplerName,
    Seed,
    Steps,
    StrictModel,
    TrainingConfig,
    constructor_kwargs,
    nearest_key,
)
from .clip import AdapterConfig
from .tracker import TrackerConfig, TrainSplitConfig
from .unet import UnetConfig
from .vqgan import VQGanVAEConfig

__all__ = [
    "UnetConfig",
    "DecoderConfig",
    "DecoderDataConfig",
    "DecoderTrainConfig",
    "DecoderEvaluateConfig",
    "TrainDecoderConfig",
]

# DecoderConfig fields that may hold one value per unet
_PER_UNET = (
    "timesteps",
    "sample_timesteps",
    "beta_schedule",
    "predict_x_start",
    "predict_v",
    "learned_variance",
    "p2_loss_weight_gamma",
    "random_crop_sizes",
)

# image transforms accepted in DecoderDataConfig.preprocessing (torchvision.transforms names)
_TRANSFORMS = ("RandomResizedCrop", "RandomHorizontalFlip", "Resize", "CenterCrop", "ToTensor")


class DecoderVAEConfig(StrictModel):
    """The VQGAN-VAE of a latent decoder stage: a trained file and/or its constructor fields."""

    path: str | None = None
    """Trained VAE weights: an export / trainer checkpoint folder, or a reference `vae.N.pt`."""
    config: VQGanVAEConfig | None = None
    """`VQGanVAE` constructor fields (required when `path` carries none, or when there is no `path`)."""

    @model_validator(mode="after")
    def _check_source(self) -> DecoderVAEConfig:
        if self.path is None and self.config is None:
            raise ValueError("a decoder VAE needs `path` (trained weights) or `config` (constructor fields)")
        return self

    def create(self, *, load_weights: bool = True) -> Any:
        """The VAE: weights from `path` when `load_weights`, else freshly built from the config (whose
        weights a decoder checkpoint then provides)."""
        from dalle2_pytorch.vqgan_vae import VQGanVAE

        config = None if self.config is None else self.config.constructor_kwargs()
        if self.path is not None and (load_weights or config is None):
            vae = VQGanVAE.from_checkpoint(self.path, config)
            return vae
        return VQGanVAE(**{**config, "use_vgg_and_gan": False})


class DecoderConfig(StrictModel):
    """`Decoder`: a cascade of unets plus diffusion settings. Defaults equal the constructor's."""

    unets: list[UnetConfig] = Field(min_length=1)
    """The unets, lowest resolution first."""
    clip: AdapterConfig | None = None
    """CLIP used when image embeddings / text encodings are not given."""
    image_size: PositiveInt | None = None
    """Output size of a single-unet decoder; exclusive with `image_sizes`."""
    channels: PositiveInt = 3
    """Image channels."""
    timesteps: Steps | tuple[Steps, ...] = 1000
    """Training diffusion steps (per unet allowed)."""
    sample_timesteps: Steps | tuple[Steps | None, ...] | None = None
    """Sampling steps per unet; fewer than `timesteps` means DDIM. None: `timesteps`."""
    image_cond_drop_prob: Probability = 0.1
    """Probability of dropping the image embedding in training (classifier-free guidance)."""
    text_cond_drop_prob: Probability = 0.5
    """Probability of dropping the text encodings in training."""
    loss_type: LossType = "l2"
    """'l1', 'l2' (MSE) or 'huber'."""
    beta_schedule: BetaSchedule | tuple[BetaSchedule, ...] | None = None
    """Noise schedule (per unet allowed). None: cosine, and linear for the last of several unets."""
    predict_x_start: Flag | tuple[Flag, ...] = False
    """Unet predicts x0 instead of the noise (per unet allowed)."""
    predict_v: Flag | tuple[Flag, ...] = False
    """Unet predicts v (per unet allowed)."""
    predict_x_start_for_latent_diffusion: Flag = False
    """Predict x0 in latent (VQGAN) stages."""
    image_sizes: tuple[PositiveInt, ...] | None = None
    """Output size of each unet, increasing; exclusive with `image_size`."""
    random_crop_sizes: tuple[PositiveInt | None, ...] | None = None
    """Per-unet random crop size in training (must be null for unet 1)."""
    use_noise_for_lowres_cond: Flag = False
    """Noise augmentation of the low-res conditioning image (Imagen)."""
    use_blur_for_lowres_cond: Flag = True
    """Gaussian-blur augmentation of the low-res conditioning image."""
    lowres_downsample_first: Flag = True
    """Downsample to the previous unet's size before blurring and resizing back."""
    blur_prob: Probability = 0.5
    """Probability of blurring the low-res condition in training."""
    blur_sigma: PositiveFloat | tuple[PositiveFloat, PositiveFloat] = 0.6
    """Blur sigma, or a (low, high) range to draw from."""
    blur_kernel_size: PositiveInt | tuple[PositiveInt, PositiveInt] = 3
    """Blur kernel size, or a (low, high) range to draw from."""
    lowres_noise_sample_level: Probability = 0.2
    """Noise level of the low-res condition at sampling time (noise augmentation)."""
    clip_denoised: Flag = True
    """Clamp predicted x0 to [-1, 1] while sampling."""
    clip_x_start: Flag = True
    """Accepted for compatibility."""
    clip_adapter_overrides: dict[str, Any] | None = None
    """Extra keyword arguments for x-clip / CoCa adapters."""
    learned_variance: Flag | tuple[Flag, ...] = True
    """Learn the reverse-process variance (improved DDPM), per unet allowed."""
    learned_variance_constrain_frac: Flag = False
    """Sigmoid on the variance interpolation fraction."""
    vb_loss_weight: NonNegativeFloat = 0.001
    """Weight of the variational-bound loss with learned variance."""
    unconditional: Flag = False
    """No CLIP conditioning at all."""
    auto_normalize_img: Flag = True
    """Inputs and outputs are in [0, 1] (mapped to [-1, 1] internally)."""
    use_dynamic_thres: Flag = False
    """Imagen dynamic thresholding of x0."""
    dynamic_thres_percentile: Probability = 0.95
    """Percentile used by dynamic thresholding."""
    p2_loss_weight_gamma: NonNegativeFloat | tuple[NonNegativeFloat, ...] = 0.0
    """P2 loss weighting exponent (0 disables it), per unet allowed."""
    p2_loss_weight_k: NonNegativeFloat = 1
    """P2 loss weighting offset k."""
    ddim_sampling_eta: NonNegativeFloat = 0.0
    """DDIM eta (0: deterministic)."""
    lowres_downsample_mode: Literal["antialias", "nearest"] = "antialias"
    """(Extension) how training targets / low-res conditions are downsampled: 'antialias', or
    'nearest' as the reference did (e.g. to fine-tune a LAION upsampler)."""
    sampler: SamplerName | tuple[SamplerName | None, ...] | None = None
    """(Extension) default sampler, one or one per unet (`dalle2_pytorch.diffusion.sampler_names()`);
    None: the reference's rule, DDPM at `timesteps` steps and DDIM with fewer."""
    vaes: list[DecoderVAEConfig | None] | None = None
    """(Extension; the reference's configs had none) one entry per unet, null for pixel stages: the
    VQGAN-VAE of a latent stage, as `{"path": <trained VAE: export folder or vae.pt>}` (its config
    from the file, or `config` alongside) or as VQGanVAE constructor fields (`{"config": {...}}`)."""

    @model_validator(mode="after")
    def _check_sizes(self) -> DecoderConfig:
        num_unets = len(self.unets)
        if self.image_size is not None and self.image_sizes is not None:
            raise ValueError("give decoder.image_size or decoder.image_sizes, not both")
        if self.image_size is None and self.image_sizes is None and self.clip is None:
            raise ValueError(
                "decoder needs image_sizes (one per unet) or image_size, or a clip to take the size from"
            )
        if self.image_sizes is not None and len(self.image_sizes) != num_unets:
            raise ValueError(
                f"decoder.image_sizes has {len(self.image_sizes)} entries for {num_unets} unets"
            )
        if self.image_size is not None and num_unets != 1:
            raise ValueError(f"decoder.image_size is for a single unet; use image_sizes for {num_unets}")
        if self.vaes is not None and len(self.vaes) > num_unets:
            raise ValueError(f"decoder.vaes has {len(self.vaes)} entries for {num_unets} unets")
        for name in _PER_UNET:
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) > num_unets:
                raise ValueError(f"decoder.{name} has {len(value)} entries for {num_unets} unets")
        if self.random_crop_sizes is not None and self.random_crop_sizes[0] is not None:
            raise ValueError("decoder.random_crop_sizes[0] must be null: the first unet is not cropped")
        sizes = self.output_image_sizes
        if sizes is not None:
            if any(b <= a for a, b in zip(sizes, sizes[1:])):
                raise ValueError(f"decoder.image_sizes must be strictly increasing, got {list(sizes)}")
            for i, (size, unet) in enumerate(zip(sizes, self.unets)):
                _check_divisible(f"decoder.image_sizes[{i}]" if self.image_sizes else "decoder.image_size", size, unet, i)
        for i, (size, unet) in enumerate(zip(self.random_crop_sizes or (), self.unets)):
            if size is not None:
                _check_divisible(f"decoder.random_crop_sizes[{i}]", size, unet, i)
                if sizes is not None and size > sizes[i]:
                    raise ValueError(f"decoder.random_crop_sizes[{i}] = {size} is larger than unet {i + 1}'s image ({sizes[i]})")
        return self

    @property
    def output_image_sizes(self) -> tuple[int, ...] | None:
        """Image size of each unet, or None when it comes from CLIP."""
        if self.image_sizes is not None:
            return self.image_sizes
        return None if self.image_size is None else (self.image_size,)

    def create(self, *, clip: Any = None, build_clip: bool = True, load_vae_weights: bool = True) -> Any:
        """Builds `dalle2_pytorch.decoder.decoder.Decoder` with one `Unet` per unet config.

        Args:
            clip: an already-built CLIP adapter to attach (takes precedence over `self.clip`).
            build_clip: build `self.clip` when `clip` is None. Pass False to build without CLIP,
                e.g. to load a checkpoint (checkpoints never contain CLIP weights).
            load_vae_weights: read latent stages' VAE weights from their `path` (False when a
                decoder checkpoint, which holds the `vaes.N.*` weights, is loaded next).

        Returns:
            The `Decoder` module.
        """
        from dalle2_pytorch.decoder.decoder import Decoder

        if clip is None and build_clip and self.clip is not None:
            clip = self.clip.create()
        if clip is None and self.output_image_sizes is None:
            raise ValueError("decoder image size comes from CLIP here; set image_sizes or build with clip")
        unets = tuple(unet.create() for unet in self.unets)
        with warnings.catch_warnings():
            # the Decoder rebuilds unets whose flags (lowres_cond, channels_out, ...) differ from what
            # their place in the cascade needs and warns that weights are lost; these are fresh
            warnings.filterwarnings("ignore", message=r"unet \d+ was rebuilt", category=UserWarning)
            vaes = tuple(None if v is None else v.create(load_weights=load_vae_weights) for v in self.vaes or ())
            return Decoder(unet=unets, clip=clip, vae=vaes, **constructor_kwargs(self, {"unets", "clip", "vaes"}))


def _check_divisible(name: str, size: int, unet: UnetConfig, index: int) -> None:
    factor = unet.downsample_factor
    if size % factor:
        lower, upper = size - size % factor, size - size % factor + factor
        hint = f"{lower} or {upper}" if lower > 0 else str(upper)
        raise ValueError(
            f"{name} = {size} is not a multiple of {factor}: unet {index + 1} halves the image "
            f"{factor.bit_length() - 1} time(s) ({len(unet.dim_mults)} stages in dim_mults"
            f"{', memory_efficient' if unet.memory_efficient else ''}); use e.g. {hint}"
        )


class DecoderDataConfig(StrictModel):
    """Webdataset shards of images (+ optional precomputed CLIP embeddings) for decoder training."""

    _renamed_keys = {"embeddings_url": "img_embeddings_url"}

    webdataset_base_url: str
    """Shard URL with `{}` for the zero-padded shard number, e.g. 'data/{}.tar' or 'pipe:...'."""
    img_embeddings_url: str | None = None
    """Folder of image-embedding .npy files, one per shard; None: run CLIP on the fly."""
    text_embeddings_url: str | None = None
    """Folder of text-embedding .npy files, one per shard; None: run CLIP on the fly."""
    num_workers: NonNegativeInt = 4
    """DataLoader worker processes."""
    batch_size: PositiveInt = 64
    """Batch size per process."""
    start_shard: NonNegativeInt = 0
    """First shard number."""
    end_shard: NonNegativeInt = 9999999
    """Last shard number (inclusive)."""
    shard_width: PositiveInt = 6
    """Digits of the zero-padded shard number."""
    index_width: PositiveInt = 4
    """Trailing digits of a sample key that index into its shard's embedding file."""
    splits: TrainSplitConfig
    """Train / val / test fractions of the shards."""
    shuffle_train: Flag = True
    """Shuffle the training shards."""
    resample_train: Flag = False
    """Sample training shards with replacement (infinite stream; set train.epoch_samples)."""
    preprocessing: dict[str, Flag | dict[str, Any]] = Field(default_factory=lambda: {"ToTensor": True})
    """Image transforms in order: name -> true or keyword arguments (torchvision names:
    RandomResizedCrop, RandomHorizontalFlip, Resize, CenterCrop, ToTensor); false skips one."""
    cache_in_memory: bool = False
    """(Extension) decode each split once and serve shuffled batches from memory every epoch
    (datasets that fit in RAM; needs deterministic preprocessing and no `resample_train`)."""

    @field_validator("preprocessing")
    @classmethod
    def _check_transforms(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = [name for name in value if name not in _TRANSFORMS]
        if unknown:
            hints = ", ".join(f"{n!r} (nearest: {nearest_key(n, _TRANSFORMS)!r})" for n in unknown)
            raise ValueError(f"unknown data.preprocessing transform {hints}; supported: {', '.join(_TRANSFORMS)}")
        return value

    @model_validator(mode="after")
    def _check_shards(self) -> DecoderDataConfig:
        if self.end_shard < self.start_shard:
            raise ValueError(f"data.end_shard ({self.end_shard}) is before data.start_shard ({self.start_shard})")
        if self.cache_in_memory:
            random = [n for n, spec in self.preprocessing.items() if spec is not False and n.startswith("Random")]
            if random:
                raise ValueError(f"data.cache_in_memory keeps decoded images, so random preprocessing ({', '.join(random)}) "
                                 "would be frozen: remove one or the other")
            if self.resample_train:
                raise ValueError("data.cache_in_memory and data.resample_train exclude each other")
        return self

    @property
    def img_preproc(self) -> Any:
        """The `preprocessing` transforms as a `torchvision.transforms.Compose`."""
        from torchvision import transforms as T

        steps = []
        for name, spec in self.preprocessing.items():
            if spec is False:
                continue
            kwargs = spec if isinstance(spec, dict) else {}
            steps.append(getattr(T, name)(**kwargs))
        return T.Compose(steps)


class DecoderTrainConfig(StrictModel):
    """Optimisation, EMA and bookkeeping settings of `train_decoder.py` (per unet where noted)."""

    _legacy_keys = {
        "save_all": "pre-1.0 schema; saving moved to tracker.save",
        "save_latest": "pre-1.0 schema; saving moved to tracker.save",
        "save_best": "pre-1.0 schema; saving moved to tracker.save",
    }

    epochs: PositiveInt = 20
    """Passes over the training shards."""
    lr: PositiveFloat | tuple[PositiveFloat, ...] = 1e-4
    """Learning rate (per unet allowed)."""
    wd: NonNegativeFloat | tuple[NonNegativeFloat, ...] = 0.01
    """AdamW weight decay (per unet allowed; 0: Adam)."""
    warmup_steps: NonNegativeInt | tuple[NonNegativeInt | None, ...] | None = None
    """Linear learning-rate warmup steps (per unet allowed); None: none."""
    cosine_decay_max_steps: PositiveInt | tuple[PositiveInt | None, ...] | None = None
    """Cosine learning-rate decay over this many steps (per unet allowed); None: constant."""
    find_unused_parameters: Flag = True
    """DDP find_unused_parameters."""
    static_graph: Flag = True
    """DDP static_graph."""
    max_grad_norm: PositiveFloat | tuple[PositiveFloat, ...] | None = 0.5
    """Gradient-norm clipping (per unet allowed); None: none."""
    save_every_n_samples: PositiveInt = 100000
    """Save a checkpoint (and sample grid) every this many training samples."""
    n_sample_images: PositiveInt = 6
    """Images in each train / test sample grid."""
    cond_scale: NonNegativeFloat | tuple[NonNegativeFloat, ...] = 1.0
    """Classifier-free guidance scale for sample grids (per unet allowed; >= 0, 1: no guidance)."""
    device: str = "cuda:0"
    """Kept for schema compatibility; the device comes from accelerate."""
    epoch_samples: PositiveInt | None = None
    """Training samples per epoch; None: the whole split (required with resample_train)."""
    validation_samples: PositiveInt | None = None
    """Validation samples per evaluation; None: the whole split."""
    save_immediately: Flag = False
    """Save a checkpoint before the first step."""
    use_ema: Flag = True
    """Keep EMA copies of the unets (used for sampling and 'model' saves)."""
    ema_beta: Probability = 0.999
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
    channels_last: Flag = False
    """Store the unets (and their EMA copies) channels-last (NHWC): the layout of cuDNN's bf16
    convolutions on GPUs (best with compile), and faster oneDNN convolutions on CPUs (the demo's base
    unet trains about 12% faster)."""
    unet_training_mask: tuple[Flag, ...] | None = None
    """Which unets to train (one bool per unet); None: all."""


class DecoderEvaluateConfig(StrictModel):
    """Sample-quality metrics computed on the validation split (torchmetrics)."""

    n_evaluation_samples: PositiveInt = 1000
    """Images generated per evaluation."""
    FID: dict[str, Any] | None = None
    """Keyword arguments of torchmetrics FrechetInceptionDistance; None: skip."""
    IS: dict[str, Any] | None = None
    """Keyword arguments of torchmetrics InceptionScore; None: skip."""
    KID: dict[str, Any] | None = None
    """Keyword arguments of torchmetrics KernelInceptionDistance; None: skip."""
    LPIPS: dict[str, Any] | None = None
    """Keyword arguments of torchmetrics LearnedPerceptualImagePatchSimilarity; None: skip."""
    CLIP_SCORE: dict[str, Any] | None = None
    """Extension: `{}` logs the mean CLIP score, 100 * max(cos(image_embed, text_embed), 0) (Hessel et al.
    2021), of generated validation images against their captions under `decoder.clip`; None: skip."""


class TrainDecoderConfig(TrainingConfig):
    """Full `train_decoder.py` config: `decoder`, `data`, `train`, `evaluate`, `tracker`, `seed`."""

    _legacy_keys = {"load": "pre-1.0 schema; checkpoint loading moved to tracker.load"}
    _data_path_fields = ("data.webdataset_base_url", "data.img_embeddings_url", "data.text_embeddings_url")

    decoder: DecoderConfig
    """The model."""
    data: DecoderDataConfig
    """The image data."""
    train: DecoderTrainConfig = Field(default_factory=DecoderTrainConfig)
    """Optimisation settings."""
    evaluate: DecoderEvaluateConfig = Field(default_factory=DecoderEvaluateConfig)
    """Evaluation metrics."""
    tracker: TrackerConfig
    """Logging / loading / saving."""
    seed: Seed = 0
    """Random seed (0 <= seed < 2**31)."""

    @model_validator(mode="after")
    def _check_has_embeddings(self) -> TrainDecoderConfig:
        """Checks that the embeddings training needs can be obtained, without redundancy."""
        decoder, data = self.decoder, self.data
        uses_text = not decoder.unconditional and any(u.cond_on_text_encodings for u in decoder.unets)
        has_clip = decoder.clip is not None
        img_url, text_url = data.img_embeddings_url, data.text_embeddings_url
        if uses_text and not has_clip and text_url is None:
            raise ValueError(
                "text-conditioned unets need text encodings: set decoder.clip or data.text_embeddings_url"
            )
        if has_clip and img_url is not None and (not uses_text or text_url is not None):
            raise ValueError(
                "decoder.clip is set but every embedding is precomputed (data.img_embeddings_url"
                + (", data.text_embeddings_url" if uses_text else "")
                + "); remove decoder.clip or the embedding urls"
            )
        if text_url is not None and not uses_text:
            raise ValueError(
                "data.text_embeddings_url is set but no unet has cond_on_text_encodings; remove it"
            )
        return self

    @model_validator(mode="after")
    def _check_per_unet(self) -> TrainDecoderConfig:
        num_unets = len(self.decoder.unets)
        mask = self.train.unet_training_mask
        if mask is not None and len(mask) != num_unets:
            raise ValueError(f"train.unet_training_mask has {len(mask)} entries for {num_unets} unets")
        for name in ("lr", "wd", "warmup_steps", "cosine_decay_max_steps", "max_grad_norm", "cond_scale"):
            value = getattr(self.train, name)
            if isinstance(value, tuple) and len(value) != num_unets:
                raise ValueError(f"train.{name} has {len(value)} entries for {num_unets} unets")
        if self.data.resample_train and self.train.epoch_samples is None:
            raise ValueError("data.resample_train=true gives an endless stream: set train.epoch_samples")
        return self
