"""Issue 12, defect 5: reproducible exports, damaged-checkpoint warnings once, `--max-steps N` writes
`step_N` once, no offline FID ERROR from the tiny decoder config, a start-of-run summary line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

import train_decoder
import train_prior
from dalle2_pytorch.config import TrainDecoderConfig
from dalle2_pytorch.decoder import Decoder
from dalle2_pytorch.training.export import export_model, export_reference_model
from tests.reliability._cli import digest
from tests.scripts._script_helpers import CONFIGS, REPO, decoder_argv, prior_argv

_EXPORT_SCRIPT = """
import sys, torch
from dalle2_pytorch.decoder import Decoder
from dalle2_pytorch.training.export import export_model, export_reference_model
d = Decoder.from_checkpoint(sys.argv[1])
export_model(d, sys.argv[2] + "/export", kind="decoder")
export_reference_model(d, sys.argv[2] + "/model.pth", kind="decoder")
"""


def _export(decoder: Decoder, out: Path) -> dict[str, str]:
    export_model(decoder, out / "export", kind="decoder")
    export_reference_model(decoder, out / "model.pth", kind="decoder")
    return digest(out)


def test_exports_are_byte_reproducible(model_folder, tmp_path):
    """Same weights -> same bytes, in one process (safetensors draws a new random order for its
    metadata map on every save) and in another process."""
    decoder = Decoder.from_checkpoint(model_folder / "decoder")
    runs = [_export(decoder, tmp_path / f"in_process_{i}") for i in range(6)]
    assert all(r == runs[0] for r in runs)
    assert sorted(runs[0]) == ["export/config.json", "export/manifest.json", "export/model.safetensors",
                               "model.pth", "model.pth.sha256"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, str(model_folder / "decoder"), str(tmp_path / "other")],
                   check=True, env=env, timeout=300, capture_output=True)
    assert digest(tmp_path / "other") == runs[0]


def _messages(caplog, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def test_damaged_checkpoint_warning_is_printed_once(tiny_data, tmp_path, caplog):
    run = tmp_path / "run"
    assert train_prior.main(prior_argv(tiny_data, run, "--max-steps", "14", "--save-every-steps", "7")) == 0
    newest = run / "checkpoints" / "step_00000014" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-4:] = b"\x00\x00\x00\x00"
    newest.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert train_prior.main(prior_argv(tiny_data, run, "--max-steps", "16")) == 0
    warnings = _messages(caplog, "skipping damaged checkpoint")
    assert len(warnings) == 1 and "step_00000014" in warnings[0] and "sha256" in warnings[0]


def test_prior_max_steps_writes_the_last_checkpoint_once(tiny_data, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert train_prior.main(prior_argv(tiny_data, run, "--max-steps", "10")) == 0
    assert len(_messages(caplog, f"saved checkpoint {run / 'checkpoints' / 'step_00000010'}")) == 1


def test_decoder_run_saves_step_n_once_logs_its_setup_and_no_error(tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert train_decoder.main(decoder_argv(run, "--max-steps", "10")) == 0
    # --max-steps 10 (in epoch 2 of 7 steps): the halted save; the final save has nothing new
    assert len(_messages(caplog, f"saved checkpoint {run / 'checkpoints' / 'step_00000010'}")) == 1
    # the tiny config computes no metric that needs downloaded weights: no ERROR line offline
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    (start,) = _messages(caplog, "run folder ")
    assert f"run folder {run.resolve()} (starting at step 0)" in start
    assert "device cpu" in start and "precision fp32" in start and "world size 1" in start
    config = TrainDecoderConfig.from_json_path(CONFIGS / "decoder_tiny_cpu.json")
    torch.manual_seed(0)
    total = sum(p.numel() for p in config.decoder.create(build_clip=False).parameters())
    assert f"decoder parameters: {total:,} trainable / {total:,} total" in start and "(frozen)" in start


def test_tiny_decoder_config_asks_for_no_downloaded_metric():
    evaluate = json.loads((CONFIGS / "decoder_tiny_cpu.json").read_text())["evaluate"]
    assert not {"FID", "IS", "KID", "LPIPS"} & set(evaluate)
