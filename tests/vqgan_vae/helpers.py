"""Shared pieces of the VQGAN-VAE tests."""

import torch

#: a VQGanVAE small enough for unit tests (16 px, one stage, 16 codes)
TINY = dict(dim=16, image_size=16, layers=1, vq_codebook_size=16, vq_codebook_dim=8, discr_layers=1,
            encdec_attn_heads=2, encdec_attn_dim_head=8)


class StandInVGG(torch.nn.Module):
    """A random 'perceptual network' (tests never download VGG16)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).flatten(1)
