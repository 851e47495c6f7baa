"""Fixtures of the demo tests: one tiny end-to-end demo run shared by the runner and dream tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.demo._demo_helpers import run_tiny_demo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    """A finished tiny demo: (output folder, report dict, progress lines). Do not modify it; copy it."""
    out = tmp_path_factory.mktemp("tiny_demo") / "demo_output"
    result, lines = run_tiny_demo(out)
    return out, result, lines
