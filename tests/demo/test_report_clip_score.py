"""The demo report's CLIP score: 100 * max(cos, 0) per image, averaged, next to the mean CLIP similarity."""

from __future__ import annotations

import json

import pytest
import torch

from dalle2_pytorch.clip_adapters.score import clip_cosine
from dalle2_pytorch.demo import report
from tests.conftest import make_x_clip_adapter


def test_measure_gives_the_mean_clip_score():
    clip = make_x_clip_adapter()
    images, prompts = report.ground_truth([("red", "circle"), ("blue", "square")], 3, 32, seed=0)
    m = report.measure(images, prompts, clip)
    cos = clip_cosine(clip, images, prompts)
    assert m["clip_score"] == pytest.approx(float((100 * cos.clamp(min=0)).mean()), abs=1e-4)
    assert m["clip_similarity"] == pytest.approx(float(cos.mean()), abs=1e-6)
    if bool((cos < 0).any()):  # the clamp: the score is not 100 x the mean similarity
        assert m["clip_score"] > 100 * max(m["clip_similarity"], 0.0)
    assert 0.0 <= m["clip_score"] <= 100.0


@pytest.mark.slow  # uses the tiny demo run
def test_report_has_a_clip_score_column(tiny_demo):
    out = tiny_demo[0]
    saved = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert "| images | n | colour | shape | both | CLIP similarity | CLIP score |" in md
    for key in ("ground_truth", "decoder_alone", "prior_decoder", "seen_prior_decoder"):
        m = saved["measures"][key]
        # mean(max(cos, 0)) >= max(mean(cos), 0)
        assert 100 * max(m["clip_similarity"], 0.0) - 1e-4 <= m["clip_score"] <= 100.0
        assert f"| {m['clip_similarity']:.3f} | {m['clip_score']:.1f} |" in md
    assert any("CLIP score" in line for line in tiny_demo[2])  # the progress lines print it too
