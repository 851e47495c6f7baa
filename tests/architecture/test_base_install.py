"""The base install (no extras) loads saved exports and samples images through DALLE2.

A real base-only virtualenv needs a second torch install (minutes, gigabytes); instead the sampling
runs in a subprocess whose import system refuses every optional package of setup.py's extras, so any
import of one on the sampling path fails the test. `setup.py`'s base requirements are checked too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch

from dalle2_pytorch.compat.decoder_loading import build_decoder_from_config
from dalle2_pytorch.compat.prior_loading import build_prior_from_config
from dalle2_pytorch.training.export import export_model

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OPTIONAL = ("accelerate", "ema_pytorch", "webdataset", "wandb", "torchmetrics", "kornia", "open_clip", "x_clip",
            "torchvision", "gradio", "vector_quantize_pytorch", "hypothesis")

PRIOR = {"net": {"dim": 16, "depth": 1, "dim_head": 8, "heads": 2, "max_text_len": 8, "num_timesteps": 50},
         "image_embed_dim": 16, "timesteps": 50, "sample_timesteps": 3, "cond_drop_prob": 0.2}
DECODER = {"unets": [{"dim": 16, "image_embed_dim": 16, "text_embed_dim": 16, "cond_on_text_encodings": True,
                      "dim_mults": [1, 2], "max_text_len": 8, "attn_heads": 2, "attn_dim_head": 8}],
           "image_sizes": [16], "timesteps": 50, "sample_timesteps": 3, "learned_variance": False}

SCRIPT = """
import sys
BLOCKED = set(sys.argv[3].split(","))
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in the base install)", name=name)
sys.meta_path.insert(0, Refuse())
import torch
from _tiny_clip import HashClipAdapter
from dalle2_pytorch import DALLE2, Decoder, DiffusionPrior
clip = HashClipAdapter()
prior = DiffusionPrior.from_checkpoint(sys.argv[1], clip=clip)
decoder = Decoder.from_checkpoint(sys.argv[2], clip=clip)
images = DALLE2(prior=prior, decoder=decoder)(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(0))
assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all(), images.shape
print("OK", sorted(m for m in BLOCKED if m in sys.modules))
"""


def test_base_install_samples_from_exports(tmp_path):
    prior = build_prior_from_config(PRIOR)
    decoder = build_decoder_from_config(DECODER)
    export_model(prior, tmp_path / "prior")
    export_model(decoder, tmp_path / "decoder")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "prior"), str(tmp_path / "decoder"), ",".join(OPTIONAL)],
        cwd=HERE, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": f"{HERE}:{REPO}", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK []")


def test_setup_py_base_requirements_are_the_light_set():
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    requires = next(k.value for k in call.keywords if k.arg == "install_requires")
    names = {ast.literal_eval(e).split(">")[0].split("<")[0].split("=")[0].split("[")[0] for e in requires.elts}
    assert names == {"torch", "numpy", "einops", "safetensors", "pydantic", "tqdm", "packaging", "pillow"}
