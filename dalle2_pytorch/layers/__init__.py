"""Building blocks shared by the prior and the decoder networks."""

from dalle2_pytorch.layers.embeddings import MLP, SinusoidalPosEmb
from dalle2_pytorch.layers.feedforward import FeedForward, SwiGLU
from dalle2_pytorch.layers.normalization import ChanLayerNorm, LayerNorm
from dalle2_pytorch.layers.rotary import RotaryEmbedding

__all__ = ["ChanLayerNorm", "FeedForward", "LayerNorm", "MLP", "RotaryEmbedding", "SinusoidalPosEmb", "SwiGLU"]
