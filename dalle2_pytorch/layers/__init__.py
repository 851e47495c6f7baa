"""Building blocks shared by the prior and the decoder networks."""

from dalle2_pytorch.layers.embeddings import MLP, SinusoidalPosEmb
from dalle2_pytorch.layers.feedforward import FeedForward, SwiGLU
from dalle2_pytorch.layers.normalization import ChanLayerNorm, GroupNorm, LayerNorm, set_norm_upcast
from dalle2_pytorch.layers.rotary import RotaryEmbedding

__all__ = [
    "ChanLayerNorm", "FeedForward", "GroupNorm", "LayerNorm", "MLP", "RotaryEmbedding", "SinusoidalPosEmb", "SwiGLU",
    "set_norm_upcast",
]
