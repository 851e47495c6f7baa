"""DDPM and DDIM reproduce, bit for bit, the outputs recorded before the sampler registry existed."""

import pytest
import torch
from safetensors.torch import load_file

from _sampler_reference_cases import CASES, FIXTURE, run_case


@pytest.fixture(scope="module")
def recorded():
    return load_file(str(FIXTURE))


def test_fixture_holds_every_case(recorded):
    assert sorted(recorded) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ddpm_ddim_outputs_are_unchanged(name, recorded):
    out = run_case(name)
    assert out.dtype == recorded[name].dtype and out.shape == recorded[name].shape
    assert torch.equal(out, recorded[name]), f"{name}: max abs diff {(out - recorded[name]).abs().max().item():.3g}"
