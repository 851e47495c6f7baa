"""CLIP score (Hessel et al. 2021, weight 100): known answers with a hand-built adapter, and the real adapters."""

from __future__ import annotations

import math

import pytest
import torch

from dalle2_pytorch.clip_adapters.score import clip_cosine, clip_score, clip_score_from_cosine
from tests.clip_adapters._colour_clip import ColourClipAdapter, solid
from tests.conftest import make_x_clip_adapter


def _solid(*rgb: float) -> torch.Tensor:
    return solid(rgb, 16)


def test_known_answers():
    clip = ColourClipAdapter()
    red, orange = _solid(1, 0, 0), _solid(1, 0.5, 0)
    images = torch.stack([red, red, red, red, orange])
    scores = clip_score(clip, images, ["red", "green", "yellow", "not red", "red"])
    expected = [100.0, 0.0, 100 / math.sqrt(2), 0.0, 100 / math.sqrt(1.25)]  # cos(orange, red) = 1 / |(1, .5)|
    assert scores.tolist() == pytest.approx(expected, abs=1e-4)
    # the clamp at 0 keeps negative similarities out of the score, not out of the cosine
    assert clip_cosine(clip, red[None], ["not red"]).item() == pytest.approx(-1.0, abs=1e-6)
    assert clip_score(clip, _solid(0.5, 0.5, 0.5)[None], ["grey"]).item() == pytest.approx(100.0, abs=1e-4)


def test_score_from_cosine_is_100_times_the_clamped_cosine():
    cos = torch.tensor([-0.3, 0.0, 0.25, 1.0])
    assert clip_score_from_cosine(cos).tolist() == pytest.approx([0.0, 0.0, 25.0, 100.0])


def test_real_adapter_matches_its_embeddings():
    clip = make_x_clip_adapter()
    torch.manual_seed(0)
    images, captions = torch.rand(3, 3, 32, 32), ["a red circle", "a blue square", "a green star"]
    scores = clip_score(clip, images, captions)
    image_embed = clip.embed_image(images).image_embed
    text_embed = clip.embed_text(clip.tokenize(captions)).text_embed
    expected = 100 * (image_embed * text_embed).sum(-1).clamp(min=0)  # both are unit vectors
    assert torch.allclose(scores, expected, atol=1e-4)
    assert scores.shape == (3,) and bool(((scores >= 0) & (scores <= 100)).all())


def test_one_caption_per_image():
    with pytest.raises(ValueError, match="one caption per image"):
        clip_score(ColourClipAdapter(), torch.rand(2, 3, 8, 8), ["red"])


def test_images_smaller_than_the_clip_input_are_enlarged():
    clip = make_x_clip_adapter()  # 32 px input
    small = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    big = torch.nn.functional.interpolate(small, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    captions = ["a red circle", "a blue square"]
    assert torch.allclose(clip_score(clip, small, captions), clip_score(clip, big, captions), atol=1e-5)
    assert clip_score(ColourClipAdapter(), solid((0, 1, 0), 4)[None], ["green"]).item() == pytest.approx(100.0, abs=1e-4)
