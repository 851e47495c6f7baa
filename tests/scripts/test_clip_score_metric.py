"""The decoder script's CLIP score: the metric over batches and processes' sums, its config, and the log of a tiny run."""

from __future__ import annotations

import math

import pytest
import torch

import train_decoder
from dalle2_pytorch.config import DecoderEvaluateConfig
from dalle2_pytorch.training.scripts.image_metrics import build_image_metrics
from tests.clip_adapters._colour_clip import ColourClipAdapter, solid
from tests.scripts._script_helpers import decoder_argv, read_metrics


def test_metric_is_the_mean_score_over_every_batch():
    metrics = build_image_metrics(DecoderEvaluateConfig(CLIP_SCORE={}), clip=ColourClipAdapter())
    assert list(metrics.metrics) == ["CLIP_SCORE"] and not metrics.skipped
    red, orange = solid((1, 0, 0), 16), solid((1, 0.5, 0), 16)
    real = torch.rand(2, 3, 16, 16)  # the real images do not enter the CLIP score
    metrics.update(torch.stack([red, red]), real, ["red", "yellow"])  # 100, 70.71
    metrics.update(torch.stack([orange, red]), real, ["red", "green"])  # 89.44, 0
    values, errors = metrics.compute()
    assert not errors
    expected = (100 + 100 / math.sqrt(2) + 100 / math.sqrt(1.25) + 0) / 4
    assert values == {"CLIP_SCORE": pytest.approx(expected, abs=1e-3)}
    metrics.reset()
    metrics.update(red[None], real[:1], ["red"])
    assert metrics.compute()[0]["CLIP_SCORE"] == pytest.approx(100.0, abs=1e-3)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric AdapterCLIPScore was called before")
def test_without_captions_the_score_is_reported_as_failed_not_zero():
    metrics = build_image_metrics(DecoderEvaluateConfig(CLIP_SCORE={}), clip=ColourClipAdapter())
    metrics.update(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    values, errors = metrics.compute()
    assert values == {} and "no (image, caption) pair" in errors["CLIP_SCORE"]


def test_skipped_without_a_clip_and_refuses_options():
    metrics = build_image_metrics(DecoderEvaluateConfig(CLIP_SCORE={}))
    assert not metrics and "decoder.clip" in metrics.skipped["CLIP_SCORE"]
    with pytest.raises(ValueError, match="CLIP_SCORE takes no options"):
        build_image_metrics(DecoderEvaluateConfig(CLIP_SCORE={"model": "ViT-B/32"}), clip=ColourClipAdapter())
    assert not build_image_metrics(DecoderEvaluateConfig(), clip=ColourClipAdapter())  # not configured: not built


@pytest.mark.slow  # a one-epoch decoder run
def test_tiny_decoder_run_logs_the_clip_score(tmp_path):
    run = tmp_path / "run"
    assert train_decoder.main(decoder_argv(run, "--override", "train.epochs=1")) == 0
    records = read_metrics(run)
    scores = [r["eval/CLIP_SCORE"] for r in records if "eval/CLIP_SCORE" in r]
    assert len(scores) == 1 and 0.0 <= scores[0] <= 100.0
    assert not [r for r in records if r.get("metric") == "CLIP_SCORE"]  # neither skipped nor failed
