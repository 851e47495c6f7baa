"""dalle2_pytorch: DALL-E 2 (unCLIP) in PyTorch."""

from dalle2_pytorch.version import __version__

__all__ = ["__version__"]
