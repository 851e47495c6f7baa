"""Random draws that take an explicit `torch.Generator` (reproducible sampling and training)."""

from __future__ import annotations

import torch

__all__ = ["rand_tensor", "randn_like", "randn_tensor"]


def _gen_device(generator: torch.Generator | None, device) -> torch.device:
    return generator.device if generator is not None else torch.device(device if device is not None else "cpu")


def randn_tensor(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of `shape`, drawn on the generator's device then moved to `device`.

    Drawing in float32 on the generator's device makes a seeded CPU generator give the same noise
    whatever the target device and dtype.
    """
    noise = torch.randn(tuple(shape), generator=generator, device=_gen_device(generator, device), dtype=torch.float32)
    return noise.to(device=device if device is not None else noise.device, dtype=dtype)


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like `x` (same device and dtype)."""
    if generator is None:
        return torch.randn_like(x)
    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def rand_tensor(
    shape: tuple[int, ...] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Uniform [0, 1) float32 values (conditioning-dropout masks, self-conditioning coin flips)."""
    u = torch.rand(tuple(shape), generator=generator, device=_gen_device(generator, device))
    return u.to(device if device is not None else u.device)
