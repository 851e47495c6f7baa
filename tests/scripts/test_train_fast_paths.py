"""`train_decoder.py` / `train_prior.py` with the speed options of issue 11 (train.compile, amp bf16,
channels_last, gradient checkpointing) on CPU. The same run on CUDA is in tests/gpu/."""

import math

import pytest

import train_decoder
from tests.scripts._script_helpers import decoder_argv, read_metrics, train_losses


def _run(tmp_path, *overrides: str, steps: int = 3) -> list[dict]:
    argv = decoder_argv(tmp_path / "run", "--max-steps", str(steps))
    for o in overrides:
        argv += ["--override", o]
    assert train_decoder.main(argv) == 0
    return read_metrics(tmp_path / "run")


@pytest.mark.slow
def test_decoder_script_with_bf16_channels_last_and_checkpointing(tmp_path):
    records = _run(tmp_path, "train.amp=bf16", "train.channels_last=true", "train.gradient_checkpointing=true")
    losses = train_losses(records)
    assert [s for s, _ in losses] == [1, 2, 3] and all(math.isfinite(v) for _, v in losses)
    assert not any("train/compile_seconds" in r for r in records)


@pytest.mark.heavy
def test_decoder_script_with_compile_and_bf16_on_cpu(tmp_path):
    """Inductor compiles the tiny Unet's blocks with the C++ backend: minutes on a shared 2-core box."""
    records = _run(tmp_path, "train.compile=true", "train.amp=bf16")
    losses = train_losses(records)
    assert [s for s, _ in losses] == [1, 2, 3] and all(math.isfinite(v) for _, v in losses)
    compile_s = [r["train/compile_seconds"] for r in records if "train/compile_seconds" in r]
    assert len(compile_s) == 1 and compile_s[0] > 0
