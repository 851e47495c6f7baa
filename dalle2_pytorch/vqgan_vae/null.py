"""`NullVQGanVAE`: the identity "autoencoder" of decoder stages that work in pixel space."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NullVQGanVAE"]


class NullVQGanVAE(nn.Module):
    """Identity encode/decode with the `VQGanVAE` interface (no parameters, no state-dict keys).

    Args:
        channels: image channels (= `encoded_dim`).
    """

    def __init__(self, *, channels: int):
        super().__init__()
        self.channels = channels
        self.encoded_dim = channels
        self.layers = 0

    def get_encoded_fmap_size(self, size: int) -> int:
        return size

    def copy_for_eval(self) -> NullVQGanVAE:
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x
