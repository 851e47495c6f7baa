"""Low-resolution conditioning of upsampler stages (cascaded diffusion).

Training degrades the full image into the previous stage's resolution and back up, with optional
Gaussian-blur augmentation (Ho et al. 2021, "Cascaded Diffusion Models", sec. 4.1; unCLIP sec. 2.1)
or Gaussian-noise augmentation at a random level that the network is told about (Saharia et al.
2022, Imagen, sec. 2.5). At sampling time the previous stage's output is resized up, with noise at
a fixed level when noise augmentation was used, and never blurred.

Difference from the reference: downsampling is antialiased (area-weighted bilinear) by default; the
reference used nearest-neighbour resizes for training targets and conditions, which aliases.
`downsample_mode="nearest"` restores the reference behaviour; `Decoder.from_checkpoint` selects it for
files written by the reference (LAION's included), whose upsamplers were trained on it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_pytorch._extras import import_optional
from dalle2_pytorch.diffusion import NoiseScheduler
from dalle2_pytorch.rng import rand_tensor

__all__ = ["LowresConditioner", "resize_image_to"]

DownsampleMode = Literal["antialias", "nearest"]


def resize_image_to(
    image: torch.Tensor,
    size: int,
    *,
    clamp_range: tuple[float, float] | None = None,
    downsample_mode: DownsampleMode = "antialias",
) -> torch.Tensor:
    """Resizes (b, c, h, w) to (b, c, size, size).

    Upsampling is nearest-neighbour (as the reference, which its trained upsamplers expect);
    downsampling is antialiased bilinear unless `downsample_mode="nearest"`.
    """
    if downsample_mode not in ("antialias", "nearest"):
        raise ValueError(f"downsample_mode must be 'antialias' or 'nearest', got {downsample_mode!r}")
    h, w = image.shape[-2:]
    if (h, w) == (size, size):
        out = image
    elif downsample_mode == "antialias" and (h > size or w > size):
        out = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    else:
        out = F.interpolate(image, size=(size, size), mode="nearest")
    if clamp_range is not None:
        out = out.clamp(*clamp_range)
    return out


def _pick(value, generator) -> float:
    """A float, or a uniform draw from a (low, high) range."""
    if isinstance(value, (tuple, list)):
        low, high = value
        return low + (high - low) * rand_tensor((), generator=generator).item()
    return float(value)


class LowresConditioner(nn.Module):
    """Builds the conditioning image of an upsampler stage.

    Args:
        downsample_first: in training, downsample the full image to the previous stage's size before
            blurring and resizing up (otherwise start from the full image).
        use_blur: blur augmentation in training, with probability `blur_prob`.
        blur_sigma, blur_kernel_size: a value or a (low, high) range drawn per call.
        use_noise: Imagen noise augmentation (a separate linear 1000-step schedule).
        downsample_mode: 'antialias' (default) or 'nearest' (reference behaviour).
    """

    def __init__(
        self,
        *,
        downsample_first: bool = True,
        use_blur: bool = True,
        blur_prob: float = 0.5,
        blur_sigma: float | tuple[float, float] = 0.6,
        blur_kernel_size: int | tuple[int, int] = 3,
        use_noise: bool = False,
        downsample_mode: DownsampleMode = "antialias",
    ):
        super().__init__()
        if not 0 <= blur_prob <= 1:
            raise ValueError(f"blur_prob must be in [0, 1], got {blur_prob}")
        self.downsample_first = downsample_first
        self.use_blur = use_blur
        self.blur_prob = blur_prob
        self.blur_sigma = blur_sigma
        self.blur_kernel_size = blur_kernel_size
        self.use_noise = use_noise
        self.downsample_mode = downsample_mode
        self.noise_scheduler = NoiseScheduler(beta_schedule="linear", timesteps=1000) if use_noise else None

    def _blur(self, image, sigma, kernel_size, generator):
        kornia = import_optional("kornia", "train", "blur augmentation of low-resolution conditions")

        sigma = _pick(self.blur_sigma if sigma is None else sigma, generator)
        k = int(round(_pick(self.blur_kernel_size if kernel_size is None else kernel_size, generator)))
        k = k + 1 if k % 2 == 0 else k  # gaussian kernels need an odd size
        return kornia.filters.gaussian_blur2d(image, (k, k), (sigma, sigma))

    def forward(
        self,
        image: torch.Tensor,
        *,
        target_image_size: int,
        downsample_image_size: int | None = None,
        should_blur: bool = True,
        blur_sigma: float | None = None,
        blur_kernel_size: int | None = None,
        noise_level: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Conditioning for an image in [0, 1].

        Args:
            image: (b, c, h, w) in [0, 1]: the full training image, or the previous stage's output.
            target_image_size: this stage's resolution.
            downsample_image_size: the previous stage's resolution (training with downsample_first).
            should_blur: apply blur augmentation (training only).
            noise_level: fixed noise-augmentation timestep (sampling); None draws a random one.

        Returns:
            (conditioning image (b, c, target, target) in [-1, 1], noise levels (b,) long or None).
        """
        x = image
        if self.downsample_first and downsample_image_size is not None:
            x = resize_image_to(x, downsample_image_size, clamp_range=(0.0, 1.0), downsample_mode=self.downsample_mode)
        if should_blur and self.use_blur and rand_tensor((), generator=generator).item() < self.blur_prob:
            x = self._blur(x, blur_sigma, blur_kernel_size, generator)
        x = resize_image_to(x, target_image_size, clamp_range=(0.0, 1.0), downsample_mode=self.downsample_mode)
        x = x * 2 - 1
        levels = None
        if self.noise_scheduler is not None:
            b = x.shape[0]
            if noise_level is None:
                levels = self.noise_scheduler.sample_random_times(b, device=x.device, generator=generator)
            else:
                levels = torch.full((b,), int(noise_level), device=x.device, dtype=torch.long)
            x = self.noise_scheduler.q_sample(x, levels, generator=generator)
        return x, levels
