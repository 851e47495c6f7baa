import logging

import pytest
import torch
from _training_toys import ToyDecoder

from dalle2_pytorch.trainer import DecoderTrainer as CompatTrainer
from dalle2_pytorch.training import DecoderTrainer


def _trainer(seed=0, num_unets=2, **kw):
    torch.manual_seed(seed)
    kw.setdefault("ema_update_after_step", 0)
    kw.setdefault("ema_update_every", 1)
    return DecoderTrainer(ToyDecoder(num_unets), **kw)


def _images(seed, b=4):
    return torch.rand(b, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def _run(t, start, n, unets=(1, 2)):
    for i in range(start, start + n):
        for u in unets:
            t(_images(10 * i + u), unet_number=u, max_batch_size=3)
            t.update(u)


def test_compat_module_exports_same_class():
    assert CompatTrainer is DecoderTrainer


def test_per_unet_settings():
    t = _trainer(lr=(1e-3, 2e-3), wd=(0.0, 0.1), eps=1e-7, warmup_steps=(None, 4), ema_beta=0.9)
    assert len(t.optimizers) == 2 and t.optim0 is t.optimizers[0] and t.sched1 is t.schedulers[1]
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3)
    assert t.optimizers[1].param_groups[0]["lr"] == pytest.approx(2e-3 / 4)  # warm-up
    assert len(t.optimizers[0].param_groups) == 1 and len(t.optimizers[1].param_groups) == 2
    assert all(e.beta == 0.9 for e in t.ema_unets)
    with pytest.raises(ValueError, match="expected 2 values"):
        _trainer(lr=(1e-3, 1e-3, 1e-3))
    with pytest.raises(TypeError, match="whatever"):
        _trainer(whatever=1)


def test_unet_number_validation():
    t = _trainer()
    with pytest.raises(ValueError, match="unet_number is required"):
        t(_images(0))
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        t(_images(0), unet_number=3)
    single = _trainer(num_unets=1)
    single(_images(0))
    single.update()
    assert single.num_steps_taken() == 1


def test_steps_counted_per_unet():
    t = _trainer()
    _run(t, 0, 2, unets=(1,))
    _run(t, 0, 1, unets=(2,))
    assert (t.num_steps_taken(1), t.num_steps_taken(2)) == (2, 1)
    assert t.steps.tolist() == [2, 1]


def test_unet_training_mask():
    t = _trainer(unet_training_mask=(False, True))
    assert t.optimizers[0] is None and t.schedulers[0] is None and t.optimizers[1] is not None
    assert isinstance(t.ema_unets[0], torch.nn.Identity)
    assert not any(p.requires_grad for p in t.unwrapped_decoder.unets[0].parameters())
    with pytest.raises(ValueError, match="not trained"):
        t(_images(0), unet_number=1)
    before = t.unwrapped_decoder.unets[0].conv_in.weight.clone()
    _run(t, 0, 2, unets=(2,))
    assert torch.equal(before, t.unwrapped_decoder.unets[0].conv_in.weight)
    with pytest.raises(ValueError, match="no unet to train"):
        _trainer(unet_training_mask=(False, False))


def test_grad_clipping_only_touches_that_unet(monkeypatch):
    t = _trainer(max_grad_norm=1e-3)
    dec = t.unwrapped_decoder
    t(_images(1), unet_number=1)
    for p in dec.unets[1].parameters():  # stray gradients on the other unet
        p.grad = torch.full_like(p, 10.0)
    other = [p.grad.clone() for p in dec.unets[1].parameters()]
    norms = []
    real_step = t.optimizers[0].step

    def recording_step(*a, **k):
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in dec.unets[0].parameters()]).item())
        return real_step(*a, **k)

    monkeypatch.setattr(t.optimizers[0], "step", recording_step)
    t.update(1)
    assert norms[0] <= 1e-3 * (1 + 1e-4)
    for g, p in zip(other, dec.unets[1].parameters()):
        assert torch.equal(g, p.grad)


def test_sample_swaps_ema_and_restores():
    t = _trainer()
    _run(t, 0, 3)
    dec = t.unwrapped_decoder
    online = list(dec.unets)
    out = t.sample(batch_size=5, max_batch_size=2)
    assert out.shape == (5, 3, 4, 4)
    assert all(a is b for a, b in zip(online, dec.unets)) and dec.training
    ema = [e.ema_model.eval() for e in t.ema_unets]
    x = torch.ones(1, 3, 4, 4)
    torch.testing.assert_close(out[:1], ema[1](ema[0](x)))
    non_ema = t.sample(batch_size=1, use_non_ema=True)
    torch.testing.assert_close(non_ema, online[1].eval()(online[0].eval()(x)))
    assert not torch.allclose(non_ema, out[:1])
    # conditional inputs are chunked and concatenated in order
    emb = torch.randn(5, 2)
    assert t.sample(image_embed=emb, max_batch_size=2).shape == (5, 3, 4, 4)
    assert [type(u) for u in t.unets] == [type(e.ema_model) for e in t.ema_unets]


def test_sample_restores_online_unets_on_error(monkeypatch):
    t = _trainer()
    dec = t.unwrapped_decoder
    online = list(dec.unets)
    monkeypatch.setattr(dec, "sample", lambda **kw: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        t.sample(batch_size=1)
    assert all(a is b for a, b in zip(online, dec.unets))


def test_return_lowres_cond_image():
    t = _trainer()
    loss, lowres = t(_images(3, b=5), unet_number=2, max_batch_size=2, return_lowres_cond_image=True)
    assert isinstance(loss, float)
    torch.testing.assert_close(lowres, _images(3, b=5) * 0.5)


def test_nonfinite_skip(caplog):
    t = _trainer()
    _run(t, 0, 1)
    before = {k: v.clone() for k, v in t.unwrapped_decoder.state_dict().items()}
    bad = _images(5)
    bad[0, 0, 0, 0] = float("inf")
    with caplog.at_level(logging.WARNING, logger="dalle2_pytorch.training"):
        t(bad, unet_number=2)
        t.update(2)
    assert t.steps.tolist() == [1, 1] and t.num_nonfinite_skips == 1
    for k, v in t.unwrapped_decoder.state_dict().items():
        assert torch.equal(before[k], v), k
    assert any("unet 2" in r.getMessage() for r in caplog.records)


def test_exact_resume(tmp_path):
    kw = dict(lr=(1e-3, 2e-3), warmup_steps=2, cosine_decay_max_steps=(None, 10))
    a = _trainer(**kw)
    _run(a, 0, 3)
    _run(a, 3, 1, unets=(2,))
    path = a.save(tmp_path, epoch=0, next_task="val", validation_losses=[0.5])
    assert path.name == "step_00000004"
    _run(a, 4, 2)

    b = _trainer(seed=7, **kw)
    meta = b.load(tmp_path)
    assert meta["steps"] == [3, 4] and meta["next_task"] == "val" and meta["validation_losses"] == [0.5]
    _run(b, 4, 2)
    for k, v in a.unwrapped_decoder.state_dict().items():
        assert torch.equal(v, b.unwrapped_decoder.state_dict()[k]), k
    for ea, eb in zip(a.ema_unets, b.ema_unets):
        for k, v in ea.state_dict().items():
            assert torch.equal(v, eb.state_dict()[k]), k
    assert b.steps.tolist() == [5, 6]


def test_masked_unet_checkpoint_roundtrip(tmp_path):
    a = _trainer(unet_training_mask=(False, True))
    _run(a, 0, 2, unets=(2,))
    a.save(tmp_path)
    b = _trainer(seed=3, unet_training_mask=(False, True))
    b.load(tmp_path)
    assert b.steps.tolist() == [0, 2]
    assert torch.equal(a.unwrapped_decoder.unets[1].conv_in.weight, b.unwrapped_decoder.unets[1].conv_in.weight)


def test_amp_bf16_on_cpu():
    t = _trainer(amp=True)
    assert t.accelerator.mixed_precision == "bf16"
    seen = []
    handle = t.unwrapped_decoder.unets[0].conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loss = t(_images(1), unet_number=1)
    handle.remove()
    t.update(1)
    assert seen == [torch.bfloat16] and loss == loss
    assert t.unwrapped_decoder.unets[0].conv_in.weight.dtype == torch.float32


def test_amp_rejects_bad_value():
    with pytest.raises(ValueError, match="amp"):
        _trainer(amp="fp8")


def test_dataloaders_are_prepared():
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(6, 3, 4, 4)), batch_size=2)
    t = _trainer(dataloaders={"train": loader, "val": loader})
    assert t.train_loader is t.dataloaders["train"] and len(list(t.train_loader)) == 3
