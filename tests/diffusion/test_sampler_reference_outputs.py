"""DDPM and DDIM reproduce the outputs recorded before the sampler registry existed (to float rounding:
see `_sampler_reference_cases`)."""

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
    # bit for bit where the recording CPU's kernels run; last-bit differences on other CPUs (3.3e-7 seen)
    diff = (out - recorded[name]).abs().max().item()
    assert diff <= 1e-6, f"{name}: max abs diff {diff:.3g}"
