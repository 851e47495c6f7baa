"""Per-stage settings of the cascaded decoder: one value per Unet instead of parallel lists."""

from __future__ import annotations

from dataclasses import dataclass

from dalle2_pytorch.diffusion import Objective

__all__ = ["DecoderStage"]


@dataclass(frozen=True)
class DecoderStage:
    """Everything a decoder needs to know about one Unet of the cascade.

    Attributes:
        index: 0-based position in the cascade (the public API's `unet_number` is index + 1).
        image_size: output resolution of this stage.
        timesteps: training diffusion steps T.
        sample_timesteps: default sampling steps (None = T, DDPM; fewer = DDIM).
        beta_schedule: name of the beta schedule.
        objective: what the Unet predicts (noise, x_start or v).
        learned_variance: the Unet also outputs variance-interpolation values (improved DDPM).
        p2_loss_weight_gamma: P2 weighting exponent (0 disables).
        random_crop_size: random crop applied in training (None: none).
        lowres_cond: the stage is conditioned on the previous stage's image.
    """

    index: int
    image_size: int
    timesteps: int
    sample_timesteps: int | None
    beta_schedule: str
    objective: Objective
    learned_variance: bool
    p2_loss_weight_gamma: float
    random_crop_size: int | None
    lowres_cond: bool

    @property
    def unet_number(self) -> int:
        return self.index + 1
