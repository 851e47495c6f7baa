"""VQGAN-VAE for latent decoder stages (the reference's `dalle2_pytorch.vqgan_vae` module).

`NullVQGanVAE` needs nothing extra; `VQGanVAE` needs `vector-quantize-pytorch` (the `[vqgan]`
extra), imported when a `VQGanVAE` is built.

Files: `layers.py` (norm, residual and attention blocks), `resnet.py` / `vit.py` (encoder/decoder
types), `discriminator.py`, `losses.py` (GAN, gradient penalty, adaptive weight, VGG perceptual),
`vae.py` (`VQGanVAE`), `null.py` (`NullVQGanVAE`).
"""

from dalle2_pytorch.vqgan_vae.discriminator import Discriminator
from dalle2_pytorch.vqgan_vae.layers import (
    ContinuousPositionBias,
    GLUResBlock,
    LayerNormChan,
    ResBlock,
    VQGanAttention,
    leaky_relu,
)
from dalle2_pytorch.vqgan_vae.losses import (
    bce_discr_loss,
    bce_gen_loss,
    grad_layer_wrt_loss,
    gradient_penalty,
    hinge_discr_loss,
    hinge_gen_loss,
    load_vgg16,
)
from dalle2_pytorch.vqgan_vae.null import NullVQGanVAE
from dalle2_pytorch.vqgan_vae.resnet import ResnetEncDec
from dalle2_pytorch.vqgan_vae.vae import VQGanVAE
from dalle2_pytorch.vqgan_vae.vit import Attention, FeedForward, RearrangeImage, Transformer, ViTEncDec

__all__ = [
    "Attention",
    "ContinuousPositionBias",
    "Discriminator",
    "FeedForward",
    "GLUResBlock",
    "LayerNormChan",
    "NullVQGanVAE",
    "RearrangeImage",
    "ResBlock",
    "ResnetEncDec",
    "Transformer",
    "VQGanAttention",
    "VQGanVAE",
    "ViTEncDec",
    "bce_discr_loss",
    "bce_gen_loss",
    "grad_layer_wrt_loss",
    "gradient_penalty",
    "hinge_discr_loss",
    "hinge_gen_loss",
    "leaky_relu",
    "load_vgg16",
]
