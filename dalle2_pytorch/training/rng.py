"""Random-number-generator states as tensors and primitives (loadable with `weights_only=True`).

Exact resume needs the torch CPU, CUDA, NumPy and Python `random` states of every process
(reliability notes §1.2). The states are converted to tensors / ints / floats / strings so the
checkpoint file never contains a pickled object.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """Returns this process's RNG states as a dict of tensors and primitives."""
    np_key, np_state, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": str(np_key),
            "state": torch.from_numpy(np.asarray(np_state, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(list(py_state), dtype=torch.int64),
            "gauss_next": None if py_gauss is None else float(py_gauss),
        },
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores RNG states written by :func:`capture_rng_state`.

    CUDA states are restored only when the number of visible devices matches.
    """
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["key"],
            np_state["state"].cpu().numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    py_state = state["python"]
    random.setstate(
        (
            int(py_state["version"]),
            tuple(int(v) for v in py_state["state"].tolist()),
            py_state["gauss_next"],
        )
    )
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
