"""slerp, text-diff directions and weighted mixes of CLIP embeddings (unCLIP sec. 3.2-3.3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dalle2_pytorch.diffusion import slerp, text_diff_direction, weighted_mix
from dalle2_pytorch.diffusion.clip_latents import check_fractions


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_slerp_endpoints_are_exact_and_the_path_stays_on_the_sphere():
    a, b = _unit(16, seed=1), _unit(16, seed=2)
    ts = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]
    path = slerp(a, b, ts)
    assert path.shape == (6, 16) and path.dtype == a.dtype
    assert torch.equal(path[0], a) and torch.equal(path[-1], b)
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(6), atol=1e-6, rtol=0)
    # constant angular speed: the angle to `a` grows linearly with t
    omega = math.acos(float(a @ b))
    angles = torch.arccos((path @ a).clamp(-1, 1))
    torch.testing.assert_close(angles, torch.tensor(ts) * omega, atol=1e-4, rtol=0)
    # a scalar position gives one vector; a non-unit input keeps exact endpoints too
    assert slerp(a, b, 0.5).shape == (16,)
    assert torch.equal(slerp(3 * a, b, [0.0])[0], 3 * a)


def test_slerp_batched_and_degenerate_cases():
    a, b = _unit(3, 8, seed=3), _unit(3, 8, seed=4)
    out = slerp(a, b, [0.0, 0.5, 1.0])
    assert out.shape == (3, 3, 8)
    for i in range(3):
        torch.testing.assert_close(out[1, i], slerp(a[i], b[i], 0.5))
    # parallel vectors: linear interpolation (no division by sin 0)
    same = slerp(a[0], a[0], [0.3, 0.7])
    assert torch.isfinite(same).all()
    torch.testing.assert_close(same, a[0].expand(2, -1))
    with pytest.raises(ValueError, match="one width"):
        slerp(a, _unit(8, 4), 0.5)


def test_text_diff_direction_is_the_normalised_difference():
    z_from, z_to = _unit(2, 12, seed=5), _unit(2, 12, seed=6)
    d = text_diff_direction(z_from, z_to)
    torch.testing.assert_close(d, F.normalize(z_to - z_from, dim=-1))
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="different captions"):
        text_diff_direction(z_from, z_from.clone())


def test_weighted_mix():
    e = _unit(3, 10, seed=7)
    # one-hot weights give that input back (up to rounding); the result is unit norm
    torch.testing.assert_close(weighted_mix(e, [0, 1, 0]), e[1])
    m = weighted_mix(e, [0.2, 0.3, 0.5])
    torch.testing.assert_close(m.norm(), torch.tensor(1.0))
    torch.testing.assert_close(m, F.normalize(0.2 * e[0] + 0.3 * e[1] + 0.5 * e[2], dim=-1))
    # weights need not sum to one; scaling them changes nothing
    torch.testing.assert_close(weighted_mix(e, [2, 3, 5]), m)
    for bad, match in (([1, 2], "3 inputs"), ([0, 0, 0], "not all 0"), ([1, -1, 1], ">= 0"), ([1, float("nan"), 1], "finite")):
        with pytest.raises(ValueError, match=match):
            weighted_mix(e, bad)
    with pytest.raises(ValueError, match="cancel out"):
        weighted_mix(torch.stack([e[0], -e[0]]), [1, 1])


def test_check_fractions():
    assert check_fractions([0, 0.5, 1], "amounts") == [0.0, 0.5, 1.0]
    for bad in ([], [1.5], [-0.1], ["x"], [True]):
        with pytest.raises(ValueError, match="amounts"):
            check_fractions(bad, "amounts")
