"""The decoder: conditional U-Net, its building blocks, and the cascaded Decoder."""

from dalle2_pytorch.decoder.unet import Unet
from dalle2_pytorch.decoder.decoder import Decoder  # noqa: E402  (imports Unet)

__all__ = ["Decoder", "Unet"]
