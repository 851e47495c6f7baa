"""Compatibility module: the reference's config classes under their old import path.

`from dalle2_pytorch.train_configs import TrainDecoderConfig, DecoderConfig, ...` keeps working
(LAION's dalle2-laion imports from here). The implementations live in `dalle2_pytorch.config`.
"""

from dalle2_pytorch.config import (
    AdapterConfig,
    DecoderConfig,
    DecoderDataConfig,
    DecoderEvaluateConfig,
    DecoderTrainConfig,
    DiffusionPriorConfig,
    DiffusionPriorDataConfig,
    DiffusionPriorNetworkConfig,
    DiffusionPriorTrainConfig,
    LegacyConfigKeyWarning,
    TrackerConfig,
    TrackerLoadConfig,
    TrackerLogConfig,
    TrackerSaveConfig,
    TrainDecoderConfig,
    TrainDiffusionPriorConfig,
    TrainSplitConfig,
    UnetConfig,
)

__all__ = [
    "AdapterConfig",
    "DecoderConfig",
    "DecoderDataConfig",
    "DecoderEvaluateConfig",
    "DecoderTrainConfig",
    "DiffusionPriorConfig",
    "DiffusionPriorDataConfig",
    "DiffusionPriorNetworkConfig",
    "DiffusionPriorTrainConfig",
    "LegacyConfigKeyWarning",
    "TrackerConfig",
    "TrackerLoadConfig",
    "TrackerLogConfig",
    "TrackerSaveConfig",
    "TrainDecoderConfig",
    "TrainDiffusionPriorConfig",
    "TrainSplitConfig",
    "UnetConfig",
]
