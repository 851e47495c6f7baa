"""Training speed options shared by the trainers: torch.compile, channels-last Unets, gradient
checkpointing, and timing of the first (compiling) step.

Compile scopes (`compile_network`):

* ``"blocks"`` (what ``compile=True`` means): each repeated block is compiled on its own (the Unet's
  `ResnetBlock`s and attention blocks, the prior transformer's attention and feed-forward layers).
  Blocks of the same shape share one compiled graph, so a 12-layer prior compiles its layer once and
  a Unet compiles one graph per distinct block shape. Inside a block Inductor fuses the GroupNorm,
  its scale/shift and the SiLU (and the LayerNorms, residual adds, casts) into a few kernels.
  Compiling takes a fraction of a whole-network compile (the issue measured 133 s for the first step
  of a 188 M Unet compiled whole, on an H200).
* ``"model"``: each Unet / prior network compiled whole (more fusion across blocks, much longer
  compile, one recompile per new batch shape).

Everything uses `nn.Module.compile`, which compiles a module's call in place: parameter names,
state dicts, EMA copies and checkpoints are those of the eager modules. Shapes are static
(`dynamic=False`): a new batch size (a smaller last batch, `max_batch_size` chunks) compiles again,
within the recompile limit this module raises to `RECOMPILE_LIMIT` per block type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "COMPILE_SCOPES",
    "RECOMPILE_LIMIT",
    "FirstStepTimer",
    "compile_network",
    "compile_units",
    "enable_gradient_checkpointing",
    "to_channels_last",
]

logger = logging.getLogger("dalle2_pytorch.training")

COMPILE_SCOPES = ("blocks", "model")
# Block types are shared by modules of several shapes (each Unet stage has its own widths); each
# shape is one compiled entry of the same code object, so the default limit of 8 is too low.
RECOMPILE_LIMIT = 64


def _block_types() -> tuple[type[nn.Module], ...]:
    from dalle2_pytorch.decoder.attention import LinearAttention, Residual
    from dalle2_pytorch.decoder.blocks import ResnetBlock
    from dalle2_pytorch.layers.feedforward import FeedForward
    from dalle2_pytorch.prior.transformer import Attention

    return (ResnetBlock, Residual, LinearAttention, Attention, FeedForward)


def _network_types() -> tuple[type[nn.Module], ...]:
    from dalle2_pytorch.decoder.unet import Unet
    from dalle2_pytorch.prior.network import DiffusionPriorNetwork

    return (Unet, DiffusionPriorNetwork)


def compile_units(module: nn.Module, scope: str = "blocks") -> list[nn.Module]:
    """The submodules `compile_network` compiles: the outermost repeated blocks ("blocks") or the
    networks ("model"); nothing inside a unit is listed separately."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile scope must be one of {COMPILE_SCOPES}, got {scope!r}")
    kinds = _block_types() if scope == "blocks" else _network_types()
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        if isinstance(m, kinds):
            units.append(m)
            return
        for child in m.children():
            visit(child)

    visit(module)
    return units


def _raise_recompile_limit() -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            if getattr(dynamo_config, name) < RECOMPILE_LIMIT:
                setattr(dynamo_config, name, RECOMPILE_LIMIT)
            return


def compile_network(
    module: nn.Module, scope: str = "blocks", *, mode: str | None = None, dynamic: bool | None = False, **kwargs: Any
) -> int:
    """Compiles the units of `module` in place with `torch.compile` (see the module docstring).

    Compilation happens at the first call of each unit (and again for each new input shape).

    Args:
        module: a prior / decoder / network, or any module containing them.
        scope: "blocks" or "model".
        mode, dynamic, kwargs: passed to `torch.compile`.

    Returns:
        The number of modules compiled.

    Raises:
        ValueError: an unknown scope, or nothing to compile.
    """
    units = compile_units(module, scope)
    if not units:
        raise ValueError(f"found nothing to compile at scope {scope!r} in {type(module).__name__}")
    _raise_recompile_limit()
    for unit in units:
        unit.compile(mode=mode, dynamic=dynamic, **kwargs)
    return len(units)


def enable_gradient_checkpointing(module: nn.Module, enabled: bool = True) -> int:
    """Sets `checkpoint_during_training` on every Unet and prior transformer inside `module`.

    Returns the number of networks changed.
    """
    from dalle2_pytorch.decoder.unet import Unet
    from dalle2_pytorch.prior.transformer import CausalTransformer

    n = 0
    for m in module.modules():
        if isinstance(m, (Unet, CausalTransformer)):
            m.checkpoint_during_training = bool(enabled)
            n += 1
    return n


def to_channels_last(modules: Iterable[nn.Module]) -> None:
    """Stores the 4-d weights of these modules channels-last (NHWC), the layout cuDNN's bf16/fp16
    convolutions use; activations then stay NHWC from one convolution to the next."""
    for m in modules:
        m.to(memory_format=torch.channels_last)


class FirstStepTimer:
    """Measures the first training step after compiling (that step includes the compilation).

    `start()` / `stop()` around a step; after the first pair `seconds` holds its wall time (device
    work included) and the time is logged once.
    """

    def __init__(self, what: str, enabled: bool) -> None:
        self.what = what
        self.pending = enabled
        self.seconds: float | None = None
        self._t0: float | None = None

    def start(self) -> None:
        if self.pending:
            self._t0 = time.perf_counter()

    def stop(self, device: torch.device) -> None:
        if not self.pending or self._t0 is None:
            return
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds = time.perf_counter() - self._t0
        self.pending = False
        logger.info("torch.compile: the first %s step took %.1f s (compilation included)", self.what, self.seconds)
