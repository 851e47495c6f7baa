"""Trainers with the real (tiny) DiffusionPrior and Decoder, and reference checkpoint files."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from dalle2_pytorch.config import DecoderConfig, DiffusionPriorConfig
from dalle2_pytorch.decoder.decoder import Decoder
from dalle2_pytorch.decoder.unet import Unet
from dalle2_pytorch.prior.diffusion_prior import DiffusionPrior
from dalle2_pytorch.prior.network import DiffusionPriorNetwork
from dalle2_pytorch.serialization import safe_torch_load
from dalle2_pytorch.training import DecoderTrainer, DiffusionPriorTrainer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compat"
DIM = 16


def _prior(seed=0):
    torch.manual_seed(seed)
    net = DiffusionPriorNetwork(dim=DIM, depth=1, dim_head=8, heads=2, max_text_len=4, num_timesteps=None)
    return DiffusionPrior(net, image_embed_dim=DIM, timesteps=20, sample_timesteps=4, cond_drop_prob=0.2)


def _decoder(seed=0):
    torch.manual_seed(seed)
    unet_kwargs = dict(dim=8, dim_mults=(1, 2), cond_dim=8, image_embed_dim=DIM, cond_on_image_embeds=True,
                       attn_heads=2, attn_dim_head=4, num_resnet_blocks=1)
    unets = (Unet(**unet_kwargs), Unet(**unet_kwargs, lowres_cond=True))
    return Decoder(unets, image_sizes=(8, 16), timesteps=20, sample_timesteps=(3, 3), learned_variance=False)


def _prior_batch(i, b=4):
    g = torch.Generator().manual_seed(i)
    emb = torch.nn.functional.normalize(torch.randn(b, DIM, generator=g), dim=-1)
    return dict(text_embed=torch.nn.functional.normalize(torch.randn(b, DIM, generator=g), dim=-1),
                image_embed=emb, text_encodings=torch.randn(b, 4, DIM, generator=g))


def _decoder_batch(i, b=2):
    g = torch.Generator().manual_seed(i)
    return torch.rand(b, 3, 16, 16, generator=g), torch.nn.functional.normalize(torch.randn(b, DIM, generator=g), dim=-1)


def _train_prior(t, start, n):
    for i in range(start, start + n):
        t(**_prior_batch(i), max_batch_size=3)
        t.update()


def _train_decoder(t, start, n):
    for i in range(start, start + n):
        for u in (1, 2):
            image, emb = _decoder_batch(10 * i + u)
            t(image, image_embed=emb, unet_number=u)
            t.update(u)


def test_prior_trainer_exact_resume_and_sample(tmp_path):
    kw = dict(lr=1e-3, warmup_steps=2, max_grad_norm=0.5, ema_update_after_step=1, ema_update_every=1)
    a = DiffusionPriorTrainer(_prior(), **kw)
    _train_prior(a, 0, 3)
    a.save(tmp_path)
    _train_prior(a, 3, 2)

    b = DiffusionPriorTrainer(_prior(seed=5), **kw)
    b.load(tmp_path)
    _train_prior(b, 3, 2)
    for k, v in a.unwrapped_prior.state_dict().items():
        assert torch.equal(v, b.unwrapped_prior.state_dict()[k]), k
    for k, v in a.ema_diffusion_prior.state_dict().items():
        assert torch.equal(v, b.ema_diffusion_prior.state_dict()[k]), k

    batch = _prior_batch(99, b=5)
    gen = torch.Generator().manual_seed(0)
    out = a.sample(text_embed=batch["text_embed"], text_encodings=batch["text_encodings"], max_batch_size=2,
                   num_samples_per_batch=2, generator=gen)
    assert out.shape == (5, DIM) and torch.isfinite(out).all()


def test_decoder_trainer_exact_resume_sample_and_reference_export(tmp_path):
    kw = dict(lr=(1e-3, 2e-3), ema_update_after_step=0, ema_update_every=1)
    a = DecoderTrainer(_decoder(), **kw)
    _train_decoder(a, 0, 1)
    a.save(tmp_path / "ckpt")
    _train_decoder(a, 1, 1)

    b = DecoderTrainer(_decoder(seed=4), **kw)
    b.load(tmp_path / "ckpt")
    _train_decoder(b, 1, 1)
    assert b.steps.tolist() == [2, 2]
    for k, v in a.unwrapped_decoder.state_dict().items():
        assert torch.equal(v, b.unwrapped_decoder.state_dict()[k]), k

    _, emb = _decoder_batch(0, b=3)
    images = a.sample(image_embed=emb, max_batch_size=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 16, 16)

    path = a.export_reference_model(tmp_path / "model.pth")
    obj = safe_torch_load(path)
    assert obj["version"] == "1.15.6" and isinstance(obj["config"], dict)
    assert any(k.startswith("noise_schedulers.1.") for k in obj["model"])  # derived buffers included
    for k, v in a.ema_unets[1].ema_model.state_dict().items():
        assert torch.equal(obj["model"][f"unets.1.{k}"], v), k
    fresh = DecoderTrainer(_decoder(seed=8))
    fresh.load(path)
    for k, v in a.ema_unets[0].ema_model.state_dict().items():
        assert torch.equal(fresh.ema_unets[0].ema_model.state_dict()[k], v), k


def test_loads_reference_prior_trainer_checkpoint():
    """LAION-era (1.1.0) prior trainer checkpoint: online weights from `model`, EMA from `ema_model`."""
    case = FIXTURES / "prior_laion_1.1.0"
    cfg = json.loads((case / "config.json").read_text())["prior"]
    cfg.pop("clip")
    cfg["net"]["layout"] = "1.1.0"
    trainer = DiffusionPriorTrainer(DiffusionPriorConfig(**cfg).create())
    with pytest.warns(UserWarning, match="NOT restored"):
        meta = trainer.load(case / "trainer_checkpoint.pth")
    assert meta["step"] == 2 and meta["version"] == "1.1.0" and meta["samples_seen"] == 6
    ref = safe_torch_load(case / "trainer_checkpoint.pth")
    online = trainer.unwrapped_prior.state_dict()
    ema = trainer.ema_diffusion_prior.ema_model.state_dict()
    for k, v in online.items():
        assert torch.equal(v, ref["model"][k]), k
        assert torch.equal(ema[k], ref["ema_model"][k]), k
    assert any(not torch.equal(ref["model"][k], ref["ema_model"][k]) for k in online)  # really two sets
    assert trainer.ema_diffusion_prior.step.item() == int(ref["ema"]["step"])
    assert len(trainer.optimizer.state) == 0  # optimizer state deliberately not taken


def test_reference_prior_layout_mismatch_is_explained():
    case = FIXTURES / "prior_laion_1.1.0"
    cfg = json.loads((case / "config.json").read_text())["prior"]
    cfg.pop("clip")
    trainer = DiffusionPriorTrainer(DiffusionPriorConfig(**cfg).create())  # built with the 1.15.6 layout
    with pytest.raises(ValueError, match="layout"):
        trainer.load(case / "trainer_checkpoint.pth")


def test_loads_reference_decoder_model_file():
    case = FIXTURES / "decoder_laion_1.1.0"
    ref = safe_torch_load(case / "checkpoint.pth")
    cfg = dict(ref["config"]["decoder"])
    cfg["unets"] = [{**u, "layout": "1.1.0"} for u in cfg["unets"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoder = DecoderConfig(**cfg).create(build_clip=False)
    trainer = DecoderTrainer(decoder)
    meta = trainer.load(case / "checkpoint.pth")
    assert meta["version"] == "1.1.0" and "decoder" in meta["config"]
    state = trainer.unwrapped_decoder.state_dict()
    ema_state = trainer.ema_unets[0].ema_model.state_dict()
    for k, v in ref["model"].items():
        if k.startswith("unets.0."):
            ours = k.replace(".cross_attn.fn.", ".cross_attn.")
            assert torch.equal(state[ours], v), k
            assert torch.equal(ema_state[ours[len("unets.0."):]], v), k
