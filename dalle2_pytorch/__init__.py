"""dalle2_pytorch: DALL-E 2 (unCLIP) in PyTorch, a drop-in for dalle2-pytorch 1.15.6.

Public names match the reference package. Heavy optional pieces (trainers, x-clip, the VQGAN-VAE and
its vector-quantize-pytorch dependency) are imported on first access, so `import dalle2_pytorch`
stays light and has no side effects.
"""

from dalle2_pytorch.clip_adapters import BaseClipAdapter, OpenAIClipAdapter, OpenClipAdapter, XClipAdapter
from dalle2_pytorch.dalle2 import DALLE2
from dalle2_pytorch.decoder import Decoder, Unet
from dalle2_pytorch.prior import DiffusionPrior, DiffusionPriorNetwork
from dalle2_pytorch.version import __version__

__all__ = [
    "BaseClipAdapter",
    "CLIP",
    "DALLE2",
    "Decoder",
    "DecoderTrainer",
    "DiffusionPrior",
    "DiffusionPriorNetwork",
    "DiffusionPriorTrainer",
    "OpenAIClipAdapter",
    "OpenClipAdapter",
    "Unet",
    "VQGanVAE",
    "XClipAdapter",
    "__version__",
]


def __getattr__(name: str):
    if name == "CLIP":
        from x_clip import CLIP

        return CLIP
    if name == "VQGanVAE":
        from dalle2_pytorch.vqgan_vae import VQGanVAE

        return VQGanVAE
    if name in ("DiffusionPriorTrainer", "DecoderTrainer"):
        from dalle2_pytorch import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'dalle2_pytorch' has no attribute {name!r}")
