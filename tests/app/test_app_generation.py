"""The web page's actions without a browser: input checks, seeds, variations, interpolation, imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dalle2_pytorch import DALLE2, Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet
from dalle2_pytorch.app.generation import DEFAULT_SAMPLER, PageInputError, PageModel, sampler_choices
from dalle2_pytorch.dalle2 import to_pil_images
from tests.conftest import make_x_clip_adapter

REPO = Path(__file__).resolve().parents[2]
EMB = 32


@pytest.fixture(scope="module")
def model() -> PageModel:
    """A random tiny chain with a text-conditioned two-stage decoder (8 -> 16 px)."""
    torch.manual_seed(0)
    clip = make_x_clip_adapter()
    prior = DiffusionPrior(DiffusionPriorNetwork(dim=EMB, depth=1, dim_head=8, heads=2, max_text_len=clip.max_text_len),
                           clip=clip, timesteps=10, sample_timesteps=3, cond_drop_prob=0.2)
    base = Unet(dim=8, image_embed_dim=EMB, cond_dim=16, dim_mults=(1, 2), text_embed_dim=EMB,
                cond_on_text_encodings=True, attn_dim_head=8, attn_heads=2)
    upsampler = Unet(dim=8, dim_mults=(1, 2), lowres_cond=True, attn_dim_head=8, attn_heads=2)
    decoder = Decoder((base, upsampler), clip=clip, image_sizes=(8, 16), timesteps=10, sample_timesteps=3,
                      learned_variance=False)
    return PageModel(DALLE2(prior=prior, decoder=decoder), description="tiny", max_images=4)


def _pixels(items) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(pil, dtype=np.float32)) for pil, _ in items])


GOOD = dict(seed=0, steps="", sampler=DEFAULT_SAMPLER, prior_cond_scale=1.0, cond_scale=1.0, num_images=2)


def test_settings_are_checked_and_defaults_mean_the_models_own(model):
    s = model.check(**GOOD)
    assert (s.seed, s.steps, s.sampler, s.num_images) == (0, None, None, 2)
    s = model.check(**{**GOOD, "steps": " 7 ", "sampler": "dpmpp_2m:trailing", "seed": 12.0, "cond_scale": 0})
    assert (s.seed, s.steps, s.sampler, s.cond_scale) == (12, 7, "dpmpp_2m:trailing", 0.0)
    assert sampler_choices()[0] == DEFAULT_SAMPLER and "ddim" in sampler_choices()
    assert "dpmpp_2m:trailing" in sampler_choices()


@pytest.mark.parametrize("field, value, message", [
    ("steps", "0", "steps must be at least 1, got 0"),
    ("steps", "-3", "steps must be at least 1"),
    ("steps", "many", "steps must be a whole number"),
    ("steps", "2.5", "steps must be a whole number"),
    ("seed", None, "seed is empty"),
    ("seed", -1, "seed must be >= 0"),
    ("sampler", "nope", "unknown sampler 'nope'"),
    ("sampler", "ddim:sideways", "unknown timestep spacing 'sideways'"),
    ("prior_cond_scale", -0.5, "prior guidance scale must be a number >= 0"),
    ("cond_scale", float("nan"), "decoder guidance scale must be a number >= 0"),
    ("num_images", 5, "number of images must be between 1 and 4"),
    ("num_images", 0, "number of images must be between 1 and 4"),
])
def test_bad_settings_name_the_field(model, field, value, message):
    with pytest.raises(PageInputError, match=message.replace("(", r"\(")) as info:
        model.check(**{**GOOD, field: value})
    assert "\n" not in str(info.value)


def test_text_to_image_is_reproducible_with_a_seed(model):
    a = model.text_to_image("a red circle", model.check(**GOOD))
    b = model.text_to_image("a red circle", model.check(**GOOD))
    c = model.text_to_image("a red circle", model.check(**{**GOOD, "seed": 1}))
    assert len(a) == 2 and all(pil.size == (16, 16) for pil, _ in a)
    assert torch.equal(_pixels(a), _pixels(b)) and not torch.equal(_pixels(a), _pixels(c))
    score = float(a[0][1].split("CLIP score ")[1])
    assert 0.0 <= score <= 100.0
    # the page's images are the API's: DALLE2 with the same seed
    direct = model.chain(["a red circle"] * 2, generator=torch.Generator().manual_seed(0), return_pil_images=True)
    assert torch.equal(_pixels(a), _pixels([(p, "") for p in direct]))
    for prompt in ("", "   ", None):
        with pytest.raises(PageInputError, match="the prompt is empty"):
            model.text_to_image(prompt, model.check(**GOOD))


def test_variations_of_an_uploaded_image(model):
    photo = Image.new("RGB", (40, 30), (200, 30, 30))
    items = model.variations(photo, "a red square", model.check(**{**GOOD, "num_images": 3}))
    assert [c for _, c in items] == ["variation 1", "variation 2", "variation 3"]
    again = model.variations(photo, "a red square", model.check(**{**GOOD, "num_images": 3}))
    assert torch.equal(_pixels(items), _pixels(again))
    with pytest.raises(PageInputError, match="upload an image"):
        model.variations(None, "", model.check(**GOOD))


def test_interpolation_ends_are_the_endpoints_own_generations(model):
    chain, clip = model.chain, model.clip
    red, blue = Image.new("RGB", (32, 32), (220, 20, 20)), Image.new("RGB", (32, 32), (20, 20, 220))  # CLIP size
    s = model.check(**{**GOOD, "seed": 3})
    frames = model.interpolate(("", red), ("", blue), 4, s)
    assert [c for _, c in frames] == ["t = 0.00", "t = 0.33", "t = 0.67", "t = 1.00"]
    # frame 0: the red image's CLIP embedding decoded alone with the same seed (same noise)
    for index, image in ((0, red), (-1, blue)):
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        embed = clip.embed_image(pixels).image_embed
        alone = chain.decode(embed, tokens=clip.tokenize([""]), generator=torch.Generator().manual_seed(3))
        assert torch.equal(_pixels([frames[index]]), _pixels([(p, "") for p in to_pil_images(alone)]))
    # prompts and images mixed; a missing endpoint is named
    mixed = model.interpolate(("a red circle", None), ("", blue), 3, s)
    assert len(mixed) == 3
    with pytest.raises(PageInputError, match="end prompt"):
        model.interpolate(("a red circle", None), ("", None), 3, s)
    with pytest.raises(PageInputError, match="frames must be between 2 and 32"):
        model.interpolate(("a", None), ("b", None), 1, s)


def test_gradio_is_imported_only_when_the_page_is_asked_for():
    code = ("import sys, dalle2_pytorch, dalle2_pytorch.cli, dalle2_pytorch.app, dalle2_pytorch.app.generation; "
            "dalle2_pytorch.cli.build_parser(); print(sorted(m for m in ('gradio', 'fastapi', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


BLOCK_GRADIO = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gradio":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Refuse())
from dalle2_pytorch.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_without_gradio_is_one_line_naming_the_extra(tmp_path):
    out = subprocess.run([sys.executable, "-c", BLOCK_GRADIO, "--serve", "--model-dir", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert out.stderr.strip() == ("dream: error: the web page needs the optional package 'gradio', which is not "
                                  "installed: pip install 'dalle2-pytorch[web]'")


@pytest.mark.parametrize("entry", [["-m", "dalle2_pytorch.cli", "--serve"], ["-m", "dalle2_pytorch.app"]])
def test_serve_with_a_missing_model_folder_is_one_line(tmp_path, entry):
    missing = tmp_path / "no_such_model"
    out = subprocess.run([sys.executable, *entry, "--model-dir", str(missing), "--port", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == f"dream: error: --model-dir: model folder not found: {missing}"
