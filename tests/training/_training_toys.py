"""Tiny stand-ins with the DiffusionPrior / Decoder training interface (tests of the trainer
mechanics only; tests with the real models live in test_training_real_models.py)."""

from __future__ import annotations

import torch
from torch import nn


class ToyPrior(nn.Module):
    """forward(text_embed=, image_embed=) -> scalar loss, with diffusion-like randomness (global
    RNG noise + dropout) so exact-resume tests exercise the RNG state."""

    def __init__(self, dim: int = 8, dropout: float = 0.1, noisy: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, dim))
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("derived", torch.linspace(0, 1, 5), persistent=False)
        self.clip = None
        self.noisy = noisy
        self.config = {"dim": dim, "dropout": dropout}

    def forward(self, text=None, image=None, text_embed=None, image_embed=None, text_encodings=None):
        x = text_embed
        if self.noisy:
            x = x + 0.1 * torch.randn_like(x)
        return ((self.norm(self.net(x)) - image_embed) ** 2).mean()

    @torch.no_grad()
    def sample(self, text_embed, num_samples_per_batch=2, cond_scale=1.0, timesteps=None, generator=None):
        return self.norm(self.net(text_embed))

    @torch.no_grad()
    def p_sample_loop(self, shape, text_cond=None, cond_scale=1.0):
        return self.net(torch.ones(shape, device=self.norm.weight.device))


class ToyUnet(nn.Module):
    def __init__(self, channels: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, hidden, 3, padding=1)
        self.norm = nn.GroupNorm(2, hidden)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x):
        return self.conv_out(torch.nn.functional.silu(self.norm(self.conv_in(x))))


class ToyDecoder(nn.Module):
    """Two-unet cascade stand-in: forward(image, unet_number=) -> loss of that unet."""

    def __init__(self, num_unets: int = 2, channels: int = 3, noisy: bool = True) -> None:
        super().__init__()
        self.unets = nn.ModuleList(ToyUnet(channels) for _ in range(num_unets))
        self.clip = None
        self.noisy = noisy
        self.config = {"num_unets": num_unets, "channels": channels}

    @property
    def num_unets(self) -> int:
        return len(self.unets)

    def get_unet(self, unet_number: int) -> nn.Module:
        return self.unets[unet_number - 1]

    def forward(self, image, text=None, image_embed=None, text_encodings=None, unet_number=None, return_lowres_cond_image=False):
        unet = self.unets[(unet_number or 1) - 1]
        noise = torch.randn_like(image) if self.noisy else torch.zeros_like(image)
        x = image * 2 - 1
        loss = ((unet(x + 0.5 * noise) - noise) ** 2).mean()
        if return_lowres_cond_image:
            return loss, image * 0.5
        return loss

    @torch.no_grad()
    def sample(self, image=None, image_embed=None, text=None, text_encodings=None, batch_size=1, cond_scale=1.0,
               start_at_unet_number=1, stop_at_unet_number=None, generator=None):
        if image_embed is not None:
            batch_size = image_embed.shape[0]
        x = torch.ones(batch_size, 3, 4, 4, device=self.unets[0].conv_in.weight.device)
        for unet in self.unets:
            x = unet(x)
        return x
