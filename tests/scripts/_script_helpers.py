"""Helpers of the training-script tests (argv builders, metrics readers, shard copies)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "train_configs"
REFERENCE_SHARDS = REPO / "tests" / "fixtures" / "reference_shards"


def prior_argv(tiny_data: dict[str, str], run_dir: Path, *extra: str) -> list[str]:
    """argv for train_prior.main: the shipped tiny config pointed at the fixture data."""
    return [
        "--config_file", str(CONFIGS / "prior_tiny_cpu.json"),
        "--override", f"prior.clip.model={tiny_data['clip']}",
        "--override", f"data.image_url={tiny_data['image_url']}",
        "--override", f"data.meta_url={tiny_data['meta_url']}",
        "--override", f"tracker.data_path={run_dir}",
        *extra,
    ]


def decoder_argv(run_dir: Path, *extra: str, shards: Path = REFERENCE_SHARDS) -> list[str]:
    """argv for train_decoder.main: the shipped tiny config on `shards`."""
    return [
        "--config_file", str(CONFIGS / "decoder_tiny_cpu.json"),
        "--override", f"data.webdataset_base_url={shards}/{{}}.tar",
        "--override", f"tracker.data_path={run_dir}",
        *extra,
    ]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def train_losses(records: list[dict], key: str = "train/loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in records if r.get(key) is not None]


def copy_shards(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for tar in REFERENCE_SHARDS.glob("*.tar"):
        shutil.copy(tar, dst / tar.name)
    return dst
