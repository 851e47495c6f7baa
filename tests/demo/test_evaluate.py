"""The model-independent evaluator: accuracy on ground-truth renders, inputs, prompt parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dalle2_pytorch.demo.evaluate import Prediction, analyse, parse_prompt, score
from dalle2_pytorch.demo.shapes import COLOURS, SHAPES, render, sample_attributes


def _to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("image_size", [32, 64])
def test_ground_truth_renders_are_read_correctly(image_size):
    # full rotation range and clutter: harder than the dataset's default +-25 degrees
    rng = np.random.default_rng(100 + image_size)
    attrs = [sample_attributes(rng, max_rotation=180, max_clutter=3) for _ in range(150)]
    result = score([render(a, image_size) for a in attrs], attrs)
    assert result["n"] == 150
    assert result["colour_acc"] >= 0.97, result
    assert result["shape_acc"] >= 0.95, result
    assert result["size_acc"] >= 0.95, result
    assert result["position_acc"] >= 0.9, result
    # every shape and colour was exercised
    assert {a.shape for a in attrs} == set(SHAPES) and {a.colour for a in attrs} == set(COLOURS)


def test_evaluator_survives_noise_and_blur():
    rng = np.random.default_rng(7)
    attrs = [sample_attributes(rng) for _ in range(60)]
    images = torch.stack([_to_tensor(render(a, 32)) for a in attrs])
    noisy = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(images, scale_factor=0.5, mode="area"), scale_factor=2, mode="bilinear"
    )
    for batch in (noisy, blurred):
        result = score(batch, attrs)
        assert result["colour_acc"] >= 0.95 and result["shape_acc"] >= 0.9, result


def test_wrong_intent_scores_zero():
    rng = np.random.default_rng(1)
    attrs = [sample_attributes(rng, colour="red", shape="circle") for _ in range(8)]
    images = [render(a, 32) for a in attrs]
    assert score(images, [("blue", "square")] * 8)["colour_acc"] == 0.0
    assert score(images, ["a blue square"] * 8)["shape_acc"] == 0.0
    assert score(images, ["a red circle"] * 8)["both_acc"] == 1.0


def test_input_types_agree_and_blank_image_has_no_object():
    attrs = sample_attributes(np.random.default_rng(2))
    image = render(attrs, 32)
    from_pil = analyse(image)
    assert from_pil == analyse(_to_tensor(image)) == analyse(np.asarray(image))
    assert (from_pil.colour, from_pil.shape) == (attrs.colour, attrs.shape)
    assert from_pil.background == attrs.background
    blank = analyse(torch.full((3, 32, 32), 0.5))
    assert blank == Prediction(None, None, background="gray")
    with pytest.raises(ValueError, match=r"\(3, h, w\)"):
        analyse(torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match="PIL image"):
        analyse([[0.0]])
    with pytest.raises(ValueError, match="images but"):
        score([image], [])


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a green square", ("green", "square")),
        ("a small blue circle", ("blue", "circle")),
        ("blue circle on a yellow background", ("blue", "circle")),
        ("an image of a large orange cross on a white background", ("orange", "cross")),
        ("there is a purple star near the bottom", ("purple", "star")),
        ("the triangle in the top left is red", ("red", "triangle")),
        ("Two YELLOW Stars!", ("yellow", "star")),
        ("a violet disc", ("purple", "circle")),
        ("a red thing", ("red", None)),
        ("a triangle", (None, "triangle")),
        ("", (None, None)),
    ],
)
def test_parse_prompt(prompt, expected):
    assert parse_prompt(prompt) == expected


def test_parse_prompt_rejects_non_strings():
    with pytest.raises(TypeError, match="str"):
        parse_prompt(["a red star"])
