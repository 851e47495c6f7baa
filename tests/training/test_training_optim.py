import math

import pytest
import torch
from torch import nn

from dalle2_pytorch.serialization import safe_torch_load
from dalle2_pytorch.training.optim import get_lr_scheduler, get_optimizer, lr_factor_fn


def _model():
    m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    m.frozen = nn.Parameter(torch.ones(3, 3), requires_grad=False)
    return m


def test_weight_decay_groups_by_ndim():
    m = _model()
    opt = get_optimizer(m.parameters(), lr=1e-3, wd=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and len(decay["params"]) == 2
    assert all(p.ndim < 2 for p in no_decay["params"]) and len(no_decay["params"]) == 4
    # the frozen parameter is filtered out
    assert not any(p is m.frozen for g in opt.param_groups for p in g["params"])


def test_zero_wd_or_no_grouping_gives_one_group():
    m = _model()
    assert len(get_optimizer(m.parameters(), wd=0.0).param_groups) == 1
    opt = get_optimizer(m.parameters(), wd=0.1, group_wd_params=False)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.1
    opt = get_optimizer(m.parameters(), wd=0.1, filter_by_requires_grad=False, group_wd_params=False)
    assert len(opt.param_groups[0]["params"]) == 7


def test_optimizer_arguments_are_used():
    opt = get_optimizer(_model(), lr=3e-4, betas=(0.8, 0.95), eps=1e-6)
    g = opt.param_groups[0]
    assert g["lr"] == 3e-4 and g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6


@pytest.mark.parametrize("kwargs, word", [({"lr": 0}, "lr"), ({"wd": -1}, "wd"), ({"eps": -1}, "eps")])
def test_bad_optimizer_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        get_optimizer(_model(), **kwargs)


def test_no_trainable_params():
    with pytest.raises(ValueError, match="no parameters"):
        get_optimizer([nn.Parameter(torch.ones(2), requires_grad=False)])


def test_warmup_then_constant():
    f = lr_factor_fn(warmup_steps=4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor_fn()(123) == 1.0


def test_warmup_times_cosine_decay():
    f = lr_factor_fn(warmup_steps=2, cosine_decay_max_steps=10)
    assert f(0) == pytest.approx(0.5 * 1.0)
    assert f(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(10) == pytest.approx(0.0, abs=1e-12) and f(50) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_drives_optimizer_lr_and_state_is_plain(tmp_path):
    m = _model()
    opt = get_optimizer(m, lr=1.0, wd=0.0)
    sched = get_lr_scheduler(opt, warmup_steps=4, cosine_decay_max_steps=8)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [lr_factor_fn(4, 8)(s) for s in range(5)]
    assert lrs == pytest.approx(expected)
    torch.save({"sched": sched.state_dict(), "opt": opt.state_dict()}, tmp_path / "s.pt")
    loaded = safe_torch_load(tmp_path / "s.pt")  # weights_only=True: no pickled objects inside
    assert loaded["sched"]["last_epoch"] == 5 and loaded["sched"]["lr_lambdas"] == [None]
    fresh = get_lr_scheduler(get_optimizer(_model(), lr=1.0, wd=0.0), warmup_steps=4, cosine_decay_max_steps=8)
    fresh.load_state_dict(loaded["sched"])
    assert fresh.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_factor_fn(warmup_steps=-1)
    with pytest.raises(ValueError, match="cosine_decay_max_steps"):
        lr_factor_fn(cosine_decay_max_steps=0)
