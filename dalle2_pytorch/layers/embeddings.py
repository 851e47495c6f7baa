"""Time embeddings: sinusoidal positions and the small MLP used for continuous prior time.

Sinusoidal embedding: Vaswani et al. 2017, "Attention Is All You Need", §3.5 (here sin first, then
cos, with frequencies exp(-ln(10000)·k/(half-1)), k = 0..half-1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP", "SinusoidalPosEmb"]


class SinusoidalPosEmb(nn.Module):
    """Maps (b,) timesteps (int or float) to (b, dim) float32 features [sin(t·f), cos(t·f)].

    Args:
        dim: output width (even).
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2 != 0:
            raise ValueError(f"SinusoidalPosEmb needs an even dim >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        scale = math.log(10000) / (half - 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -scale)
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=-1)


class MLP(nn.Module):
    """`depth` hidden layers of width `expansion_factor·dim_out` with SiLU, then a linear output.

    Keys: `net.{i}.0.{weight,bias}` for hidden layers, `net.{depth}.{weight,bias}` for the output.
    Input is cast to float32. x: (b, dim_in) -> (b, dim_out).
    """

    def __init__(self, dim_in: int, dim_out: int, *, expansion_factor: float = 2.0, depth: int = 2):
        super().__init__()
        hidden = int(expansion_factor * dim_out)
        layers: list[nn.Module] = []
        width = dim_in
        for _ in range(depth):
            layers.append(nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Identity()))
            width = hidden
        layers.append(nn.Linear(width, dim_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())
