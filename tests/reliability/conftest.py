"""Fixtures of the reliability tests (issue 12): the training-script fixtures, a tiny model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.scripts.conftest import _one_thread_and_fresh_accelerate, tiny_data  # noqa: F401  (fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    """A `dream --model-dir` folder of random-weight tiny models (do not modify it; copy it)."""
    from tests.reliability._tiny_models import make_model_folder

    return make_model_folder(tmp_path_factory.mktemp("models") / "tiny")
