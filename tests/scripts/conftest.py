"""Fixtures for the training-script tests: the tiny CPU configs on the reference shards."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _one_thread_and_fresh_accelerate():
    """One intra-op thread (tiny models on a shared 2-core machine run several times faster) and a
    clean accelerate state per test (it is process-wide)."""
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """Tiny CLIP folder + prior embeddings of the reference shards (prepare_tiny_data)."""
    from dalle2_pytorch.training.scripts.tiny_data import prepare_tiny_data

    return prepare_tiny_data(tmp_path_factory.mktemp("tiny_cpu"))
