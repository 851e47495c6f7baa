"""The package's layering (.importlinter, docs/ARCHITECTURE.md) and the light base install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(REPO / ".importlinter")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_import_contracts_hold():
    result = _lint(REPO, REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, planted, message",
    [
        # the maths layer reaching up into an application
        ("diffusion/schedules.py", "from dalle2_pytorch.training import checkpoint",
         "dalle2_pytorch.diffusion is not allowed to import dalle2_pytorch.training"),
        # a model importing its loader (the cycle the layering removed)
        ("prior/diffusion_prior.py", "from dalle2_pytorch.compat import prior_loading",
         "dalle2_pytorch.prior is not allowed to import dalle2_pytorch.compat"),
        # the prior and the decoder are independent
        ("decoder/stage.py", "from dalle2_pytorch.prior import network",
         "dalle2_pytorch.decoder is not allowed to import dalle2_pytorch.prior"),
    ],
)
def test_a_planted_upward_import_breaks_the_contract(tmp_path, module, planted, message):
    copy = tmp_path / "dalle2_pytorch"
    shutil.copytree(REPO / "dalle2_pytorch", copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    result = _lint(tmp_path, tmp_path)
    assert result.returncode != 0
    assert message in result.stdout, result.stdout[-3000:]


_HEAVY = ("wandb", "webdataset", "torchmetrics", "accelerate", "ema_pytorch", "kornia", "open_clip", "x_clip")


def test_import_dalle2_pytorch_is_light():
    code = (
        "import sys, dalle2_pytorch\n"
        "from dalle2_pytorch import DALLE2, Decoder, DiffusionPrior, Unet\n"
        f"print(sorted(m for m in {_HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]", out.stdout


def test_an_application_without_its_extra_names_the_extra():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'accelerate':\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib.util\n"
        "importlib.util.find_spec = (lambda f: (lambda name, *a: None if name.split('.')[0] == 'accelerate' else f(name, *a)))(importlib.util.find_spec)\n"
        "try:\n"
        "    import dalle2_pytorch.training\n"
        "except ImportError as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERR dalle2_pytorch.training needs the optional package 'accelerate'" in out.stdout, out.stdout + out.stderr
    assert "pip install 'dalle2-pytorch[train]'" in out.stdout
