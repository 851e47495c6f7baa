"""A `dream` model folder of random-weight tiny models (built in about a second, nothing trained)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "train_configs"


def make_model_folder(out: Path, seed: int = 0) -> Path:
    """`out/` with `dalle2.json`, `prior/` and `decoder/` (exports) and `clip/` (a tiny x-clip)."""
    from dalle2_pytorch.config import TrainDecoderConfig, TrainDiffusionPriorConfig
    from dalle2_pytorch.training.export import export_model
    from dalle2_pytorch.training.scripts.tiny_data import make_tiny_clip

    out.mkdir(parents=True, exist_ok=True)
    make_tiny_clip(out / "clip", seed=seed)
    prior_cfg = TrainDiffusionPriorConfig.from_json_path(CONFIGS / "prior_tiny_cpu.json").prior
    prior_cfg = prior_cfg.model_copy(update={"sample_timesteps": 4})
    decoder_cfg = TrainDecoderConfig.from_json_path(CONFIGS / "decoder_tiny_cpu.json").decoder
    decoder_cfg = decoder_cfg.model_copy(update={"sample_timesteps": (4,)})
    torch.manual_seed(seed)
    prior = prior_cfg.create(build_clip=False)
    prior.config = prior_cfg.model_dump(mode="json")
    decoder = decoder_cfg.create(build_clip=False)
    decoder.config = decoder_cfg.model_dump(mode="json")
    export_model(prior, out / "prior", kind="prior")
    export_model(decoder, out / "decoder", kind="decoder")
    (out / "dalle2.json").write_text(json.dumps({"prior": "prior", "decoder": "decoder",
                                                 "clip": {"make": "x-clip", "model": "clip"}}))
    return out
