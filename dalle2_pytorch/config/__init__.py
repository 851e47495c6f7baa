"""Pydantic v2 configs for models and training runs (schema-compatible with dalle2-pytorch 1.15.6)."""

from .base import LegacyConfigKeyWarning, StrictModel
from .clip import AdapterConfig
from .decoder import (
    DecoderConfig,
    DecoderDataConfig,
    DecoderEvaluateConfig,
    DecoderTrainConfig,
    TrainDecoderConfig,
)
from .prior import (
    DiffusionPriorConfig,
    DiffusionPriorDataConfig,
    DiffusionPriorNetworkConfig,
    DiffusionPriorTrainConfig,
    TrainDiffusionPriorConfig,
)
from .tracker import (
    TrackerConfig,
    TrackerLoadConfig,
    TrackerLogConfig,
    TrackerSaveConfig,
    TrainSplitConfig,
)
from .unet import UnetConfig

__all__ = [
    "LegacyConfigKeyWarning",
    "StrictModel",
    "AdapterConfig",
    "TrainSplitConfig",
    "TrackerLogConfig",
    "TrackerLoadConfig",
    "TrackerSaveConfig",
    "TrackerConfig",
    "DiffusionPriorNetworkConfig",
    "DiffusionPriorConfig",
    "DiffusionPriorTrainConfig",
    "DiffusionPriorDataConfig",
    "TrainDiffusionPriorConfig",
    "UnetConfig",
    "DecoderConfig",
    "DecoderDataConfig",
    "DecoderTrainConfig",
    "DecoderEvaluateConfig",
    "TrainDecoderConfig",
]
