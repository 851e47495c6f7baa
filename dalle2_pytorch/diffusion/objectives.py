"""What the network predicts, and how to turn its output back into x_0 and eps.

* ``noise``: eps-prediction (Ho et al. 2020), the decoder's default.
* ``x_start``: x_0-prediction, the unCLIP prior's choice (Ramesh et al. 2022, sec. 2.2).
* ``v``: v-prediction (Salimans & Ho 2022).
"""

from __future__ import annotations

from enum import Enum

import torch

from dalle2_pytorch.diffusion.noise_scheduler import NoiseScheduler

__all__ = ["Objective", "objective_from_flags"]


class Objective(str, Enum):
    NOISE = "noise"
    X_START = "x_start"
    V = "v"

    def target(self, scheduler: NoiseScheduler, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The regression target for this objective (same shape as x_start)."""
        if self is Objective.NOISE:
            return noise
        if self is Objective.X_START:
            return x_start
        return scheduler.calculate_v(x_start, t, noise)

    def to_x_start(self, scheduler: NoiseScheduler, x_t: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """x_0 implied by the network output `pred` at (x_t, t)."""
        if self is Objective.NOISE:
            return scheduler.predict_start_from_noise(x_t, t, pred)
        if self is Objective.X_START:
            return pred
        return scheduler.predict_start_from_v(x_t, t, pred)


def objective_from_flags(predict_x_start: bool, predict_v: bool) -> Objective:
    """The reference's flags: predict_v takes precedence over predict_x_start."""
    if predict_v:
        return Objective.V
    return Objective.X_START if predict_x_start else Objective.NOISE
