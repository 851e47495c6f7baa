"""Shared test helpers: CPU only, tiny random-weight models, nothing downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
import torch  # noqa: E402

# open_clip / x-clip models small enough for CPU tests; text width == embedding width so a prior
# can take the per-token encodings directly (the reference network has no text projection)
TINY_OPEN_CLIP = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=8, head_width=16),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
)
TINY_X_CLIP = dict(
    dim_text=32, dim_image=32, dim_latent=32, num_text_tokens=49408, text_enc_depth=1,
    text_seq_len=16, visual_enc_depth=1, visual_image_size=32, visual_patch_size=8,
    text_heads=2, visual_heads=2, text_dim_head=16, visual_dim_head=16,
)


def make_open_clip_adapter(seed: int = 0):
    from dalle2_pytorch import OpenClipAdapter

    torch.manual_seed(seed)
    return OpenClipAdapter("ViT-B/32", pretrained=None, model_kwargs=TINY_OPEN_CLIP)


def make_x_clip_adapter(seed: int = 0):
    from x_clip import CLIP

    from dalle2_pytorch import XClipAdapter

    torch.manual_seed(seed)
    return XClipAdapter(CLIP(**TINY_X_CLIP))


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(1234)
    yield


def pytest_collection_modifyitems(config, items):
    """`heavy` tests (several minutes each) run only with RUN_HEAVY=1 (`make test-all`)."""
    if os.environ.get("RUN_HEAVY") == "1":
        return
    skip = pytest.mark.skip(reason="heavy full-size run; set RUN_HEAVY=1 (make test-all) to run it")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)
