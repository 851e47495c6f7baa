import logging

import numpy as np
import pytest
import torch
from _training_toys import ToyPrior

from dalle2_pytorch.trainer import DiffusionPriorTrainer as CompatTrainer
from dalle2_pytorch.training import DiffusionPriorTrainer


def _trainer(seed=0, deterministic=False, **kw):
    torch.manual_seed(seed)
    kw.setdefault("ema_update_after_step", 0)
    kw.setdefault("ema_update_every", 1)
    prior = ToyPrior(dropout=0.0, noisy=False) if deterministic else ToyPrior()
    return DiffusionPriorTrainer(prior, lr=1e-2, **kw)


def _batch(seed, b=6, dim=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, dim, generator=g), torch.randn(b, dim, generator=g)


def _params(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_compat_module_exports_same_class():
    assert CompatTrainer is DiffusionPriorTrainer


def test_kwargs_routing():
    t = _trainer(ema_beta=0.5, ema_update_after_step=3, ema_update_every=2, betas=(0.8, 0.9), accelerator_cpu=True)
    ema = t.ema_diffusion_prior
    assert (ema.beta, ema.update_after_step, ema.update_every) == (0.5, 3, 2)
    assert ema.include_online_model is False
    assert t.optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    assert t.accelerator.device.type == "cpu"
    assert t.optimizer.param_groups[0]["eps"] == 1e-6  # the prior trainer's default eps


@pytest.mark.parametrize(
    "kwargs, name",
    [({"bogus": 1}, "bogus"), ({"ema_bogus": 1}, "ema_bogus"), ({"accelerator_bogus": 1}, "accelerator_bogus")],
)
def test_unknown_kwargs_raise(kwargs, name):
    with pytest.raises(TypeError, match=name):
        _trainer(**kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        DiffusionPriorTrainer("prior")


def test_chunked_forward_matches_full_batch_gradients():
    x, y = _batch(1)
    grads = []
    for mbs in (None, 4, 1):
        t = _trainer(use_ema=False, deterministic=True)
        loss = t(text_embed=x, image_embed=y, max_batch_size=mbs)
        grads.append((loss, [p.grad.clone() for p in t.unwrapped_prior.parameters()]))
    (l0, g0), *rest = grads
    for loss, g in rest:
        assert loss == pytest.approx(l0, rel=1e-5)
        for a, b in zip(g0, g):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_numpy_inputs_and_eval_mode_no_grad():
    t = _trainer()
    x, y = _batch(2)
    t.eval()
    loss = t(text_embed=x.numpy(), image_embed=y.numpy())
    assert isinstance(loss, float)
    assert all(p.grad is None for p in t.unwrapped_prior.parameters())


def test_update_steps_everything_in_order():
    t = _trainer(warmup_steps=4)
    lr0 = t.optimizer.param_groups[0]["lr"]
    assert lr0 == pytest.approx(1e-2 / 4)
    before = _params(t.unwrapped_prior)
    t(*(), text_embed=_batch(3)[0], image_embed=_batch(3)[1])
    t.update()
    assert t.num_steps_taken() == 1 and int(t.step) == 1
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(2e-2 / 4)
    assert any(not torch.equal(before[k], v) for k, v in t.unwrapped_prior.state_dict().items())
    assert all(p.grad is None for p in t.unwrapped_prior.parameters())
    assert t.ema_diffusion_prior.step.item() == 1 and t.ema_diffusion_prior.initted.item()


def test_max_grad_norm_clips(monkeypatch):
    t = _trainer(max_grad_norm=1e-3)
    norms = []
    real_step = t.optimizer.step

    def recording_step(*a, **k):
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in t.unwrapped_prior.parameters()]).item())
        return real_step(*a, **k)

    monkeypatch.setattr(t.optimizer, "step", recording_step)
    x, y = _batch(4)
    t(text_embed=x * 100, image_embed=y)
    t.update()
    assert norms and norms[0] <= 1e-3 * (1 + 1e-4)


def test_gradient_accumulation_equals_big_batch():
    x, y = _batch(5, b=8)
    a = _trainer(use_ema=False, gradient_accumulation_steps=2, deterministic=True)
    b = _trainer(use_ema=False, deterministic=True)
    a(text_embed=x[:4], image_embed=y[:4])
    a.update()
    assert a.num_steps_taken() == 0  # first micro-step only accumulates
    a(text_embed=x[4:], image_embed=y[4:])
    a.update()
    b(text_embed=x, image_embed=y)
    b.update()
    assert a.num_steps_taken() == b.num_steps_taken() == 1
    for (k, pa), pb in zip(a.unwrapped_prior.state_dict().items(), b.unwrapped_prior.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=k)


def test_nonfinite_loss_is_skipped(caplog):
    t = _trainer()
    x, y = _batch(6)
    t(text_embed=x, image_embed=y)
    t.update()
    before = _params(t.unwrapped_prior)
    opt_state = {k: v["exp_avg"].clone() for k, v in enumerate(t.optimizer.state.values())}
    lr = t.optimizer.param_groups[0]["lr"]
    y_bad = y.clone()
    y_bad[0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="dalle2_pytorch.training"):
        loss = t(text_embed=x, image_embed=y_bad)
        t.update()
    assert loss != loss  # NaN is reported to the caller
    assert t.num_steps_taken() == 1 and t.num_nonfinite_skips == 1
    assert t.optimizer.param_groups[0]["lr"] == lr
    for k, v in t.unwrapped_prior.state_dict().items():
        assert torch.equal(before[k], v), k
    for k, v in enumerate(t.optimizer.state.values()):
        assert torch.equal(opt_state[k], v["exp_avg"])
    assert any("skipped" in r.getMessage() for r in caplog.records)
    # training continues normally afterwards
    t(text_embed=x, image_embed=y)
    t.update()
    assert t.num_steps_taken() == 2 and t.consecutive_nonfinite_skips == 0


def test_save_refuses_nonfinite_parameters(tmp_path):
    t = _trainer()
    with torch.no_grad():
        t.unwrapped_prior.net[0].weight[0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite"):
        t.save(tmp_path)
    assert not any(tmp_path.iterdir())


def _run(t, start, n):
    for i in range(start, start + n):
        x, y = _batch(100 + i)
        t(text_embed=x, image_embed=y, max_batch_size=4)
        t.update()


def test_exact_resume(tmp_path):
    kwargs = dict(warmup_steps=3, cosine_decay_max_steps=20, max_grad_norm=1.0, ema_update_after_step=1, ema_update_every=2)
    a = _trainer(**kwargs)
    _run(a, 0, 4)
    a.save(tmp_path, epoch=1, samples_seen=24)
    _run(a, 4, 3)

    b = _trainer(seed=123, **kwargs)  # different init: everything must come from the checkpoint
    torch.manual_seed(999)  # and different RNG state
    meta = b.load(tmp_path)
    assert meta["step"] == 4 and meta["epoch"] == 1 and meta["samples_seen"] == 24
    _run(b, 4, 3)

    assert a.num_steps_taken() == b.num_steps_taken() == 7
    for k, v in a.unwrapped_prior.state_dict().items():
        assert torch.equal(v, b.unwrapped_prior.state_dict()[k]), k
    for k, v in a.ema_diffusion_prior.state_dict().items():
        assert torch.equal(v, b.ema_diffusion_prior.state_dict()[k]), k
    assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"]
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


def test_resume_without_rng_restore_differs(tmp_path):
    """Guards the exact-resume test: the toy's randomness really depends on the RNG state."""
    a = _trainer()
    _run(a, 0, 2)
    a.save(tmp_path)
    _run(a, 2, 2)
    b = _trainer()
    b.load(tmp_path)
    torch.manual_seed(4321)
    _run(b, 2, 2)
    assert not torch.equal(a.unwrapped_prior.net[0].weight, b.unwrapped_prior.net[0].weight)


def test_only_model_load_and_kind_check(tmp_path):
    a = _trainer()
    _run(a, 0, 2)
    a.save(tmp_path)
    b = _trainer(seed=5)
    b.load(tmp_path, only_model=True)
    assert b.num_steps_taken() == 0 and len(b.optimizer.state) == 0
    assert torch.equal(a.unwrapped_prior.net[0].weight, b.unwrapped_prior.net[0].weight)
    assert torch.equal(a.ema_diffusion_prior.ema_model.net[0].weight, b.ema_diffusion_prior.ema_model.net[0].weight)


def test_sample_uses_ema_model():
    t = _trainer()  # EMA lags behind the online weights
    x, y = _batch(7)
    for _ in range(3):
        t(text_embed=x, image_embed=y)
        t.update()
    ema_out = t.sample(x, max_batch_size=4)
    assert ema_out.shape == (6, 8)
    ema_model = t.ema_diffusion_prior.ema_model
    assert ema_model.training  # sample() switched to eval mode and back
    torch.testing.assert_close(ema_out, ema_model.eval().sample(x))
    online = t.sample(x, use_non_ema=True)
    assert not torch.allclose(ema_out, online)
    assert t.p_sample_loop((2, 8)).shape == (2, 8)
    with pytest.raises(ValueError, match="CLIP"):
        t.embed_text(["a"])


def test_overwrite_lr_on_load(tmp_path):
    a = _trainer()
    _run(a, 0, 1)
    a.save(tmp_path)
    b = DiffusionPriorTrainer(ToyPrior(), lr=5e-4)
    b.load(tmp_path, overwrite_lr=True)
    assert b.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_numpy_rng_restored(tmp_path):
    t = _trainer()
    np.random.seed(3)
    t.save(tmp_path)
    expected = np.random.rand(3)
    np.random.seed(99)
    t.load(tmp_path)
    np.testing.assert_array_equal(np.random.rand(3), expected)


def _scaled_trainer(init_scale):
    """A trainer whose accelerator uses a (CPU) fp16-style GradScaler, as accelerate does on GPU."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
    torch.manual_seed(0)
    return DiffusionPriorTrainer(ToyPrior(dropout=0.0, noisy=False), accelerator=acc, lr=1e-2, max_grad_norm=0.5,
                                 warmup_steps=10, ema_update_after_step=0, ema_update_every=1)


def test_grad_scaler_paths(tmp_path):
    x, y = _batch(8)
    plain = _trainer(deterministic=True, max_grad_norm=0.5, warmup_steps=10)
    scaled = _scaled_trainer(init_scale=2.0**8)
    for t in (plain, scaled):
        t(text_embed=x, image_embed=y)
        t.update()
    # gradients were unscaled before clipping: same update as without a scaler
    for (k, a), b in zip(plain.unwrapped_prior.state_dict().items(), scaled.unwrapped_prior.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)

    # a NaN loss: skipped by us; the scaler's iteration is closed so the next step works
    y_bad = y.clone()
    y_bad[0, 0] = float("nan")
    scaled(text_embed=x, image_embed=y_bad)
    scaled.update()
    assert scaled.num_nonfinite_skips == 1 and scaled.num_steps_taken() == 1
    assert scaled.accelerator.scaler.get_scale() == 2.0**7  # backed off on the NaN gradients
    scaled(text_embed=x, image_embed=y)
    scaled.update()
    assert scaled.num_steps_taken() == 2

    # an fp16-style overflow (finite loss, inf scaled grads): the scaler skips the optimiser step
    # and the LR schedule does not advance; this is not counted as a non-finite skip
    scaled.accelerator.scaler.update(new_scale=3e38)
    before = {k: v.clone() for k, v in scaled.unwrapped_prior.state_dict().items()}
    last_epoch = scaled.scheduler.last_epoch
    scaled(text_embed=x, image_embed=y)
    scaled.update()
    assert scaled.optimizer.step_was_skipped and scaled.scheduler.last_epoch == last_epoch
    assert scaled.num_nonfinite_skips == 1
    for k, v in scaled.unwrapped_prior.state_dict().items():
        assert torch.equal(before[k], v), k
    assert scaled.accelerator.scaler.get_scale() < 3e38

    # the scaler state is checkpointed
    scaled.save(tmp_path)
    other = _scaled_trainer(init_scale=1.0)
    other.load(tmp_path)
    assert other.accelerator.scaler.get_scale() == scaled.accelerator.scaler.get_scale()
