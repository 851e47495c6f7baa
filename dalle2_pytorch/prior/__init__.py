"""The diffusion prior: the causal-transformer network and the DiffusionPrior wrapper."""

from dalle2_pytorch.prior.diffusion_prior import DiffusionPrior
from dalle2_pytorch.prior.network import DiffusionPriorNetwork
from dalle2_pytorch.prior.transformer import Attention, CausalTransformer, RelPosBias

__all__ = ["Attention", "CausalTransformer", "DiffusionPrior", "DiffusionPriorNetwork", "RelPosBias"]
