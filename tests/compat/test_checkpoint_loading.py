"""from_checkpoint on the reference's own files (tests/fixtures/compat, written by dalle2-pytorch)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle2_pytorch.compat.keys import StateDictMismatchError, TensorValueMismatchError
from dalle2_pytorch.decoder import Decoder
from dalle2_pytorch.prior import DiffusionPrior
from dalle2_pytorch.serialization import NotACheckpointError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compat"


def load_io(case):
    return {k: v.clone() for k, v in load_file(str(FIXTURES / case / "io.safetensors")).items()}


def assert_matches(actual, expected, factor=1e-4):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=factor * expected.abs().max().item())


@pytest.mark.parametrize("case", ["prior_laion_1.1.0", "prior_1.15.6"])
@pytest.mark.parametrize("config_form", ["path", "dict", "object"])
def test_prior_from_checkpoint_reproduces_reference(case, config_form):
    from dalle2_pytorch.config.prior import TrainDiffusionPriorConfig

    path = FIXTURES / case / "config.json"
    config = {"path": path, "dict": json.loads(path.read_text()), "object": TrainDiffusionPriorConfig.from_json_path(path)}[config_form]
    prior = DiffusionPrior.from_checkpoint(FIXTURES / case / "checkpoint.pth", config)
    assert not prior.training
    io = load_io(case)
    kwargs = dict(text_embed=io["in.text_embed"], text_encodings=io["in.text_encodings"])
    with torch.no_grad():
        assert_matches(prior.net(io["in.image_embed_noisy"], io["in.timesteps"], **kwargs), io["out.net"])
        mean, var, log_var = prior.noise_scheduler.q_posterior(io["out.net"], io["in.image_embed_noisy"], io["in.timesteps"])
    assert_matches(mean, io["out.posterior_mean"])
    assert_matches(var, io["out.posterior_variance"])
    assert_matches(log_var, io["out.posterior_log_variance_clipped"])
    for name, value in prior.noise_scheduler.schedule_buffers().items():
        assert_matches(value, io[f"out.schedule.{name}"])
    assert prior.loaded_from["layout"] == case.split("_")[-1]


def test_prior_trainer_checkpoint_prefers_ema_weights():
    case = "prior_laion_1.1.0"
    prior = DiffusionPrior.from_checkpoint(FIXTURES / case / "trainer_checkpoint.pth", FIXTURES / case / "config.json")
    io = load_io(case)
    with torch.no_grad():
        out = prior.net(io["in.image_embed_noisy"], io["in.timesteps"], text_embed=io["in.text_embed"],
                        text_encodings=io["in.text_encodings"])
    assert_matches(out, io["out.net"])
    assert (out - io["out.net_online"]).abs().max() > 1e-3  # the online weights differ


def test_laion_era_prior_warns_that_guidance_has_no_effect():
    case = "prior_laion_1.1.0"
    prior = DiffusionPrior.from_checkpoint(FIXTURES / case / "checkpoint.pth", FIXTURES / case / "config.json")
    io = load_io(case)
    with pytest.warns(UserWarning, match="no effect"):
        prior.sample(text_embed=io["in.text_embed"], text_encodings=io["in.text_encodings"], cond_scale=2.0,
                     timesteps=3, generator=torch.Generator().manual_seed(0))


def test_prior_without_config_is_a_clear_error():
    with pytest.raises(ValueError, match="carries no config"):
        DiffusionPrior.from_checkpoint(FIXTURES / "prior_1.15.6" / "checkpoint.pth")


def test_prior_config_mismatch_lists_keys(tmp_path):
    config = json.loads((FIXTURES / "prior_1.15.6" / "config.json").read_text())
    config["prior"]["net"]["depth"] = 3
    with pytest.raises(StateDictMismatchError, match="layers.2"):
        DiffusionPrior.from_checkpoint(FIXTURES / "prior_1.15.6" / "checkpoint.pth", config)
    config["prior"]["net"]["depth"] = 2
    config["prior"]["beta_schedule"] = "linear"
    with pytest.raises(TensorValueMismatchError):
        DiffusionPrior.from_checkpoint(FIXTURES / "prior_1.15.6" / "checkpoint.pth", config)


@pytest.mark.parametrize("content", [b"", b"hello, this is text", b"PK\x03\x04truncated-zip"])
def test_not_a_checkpoint(tmp_path, content):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    with pytest.raises(NotACheckpointError):
        DiffusionPrior.from_checkpoint(bad, FIXTURES / "prior_1.15.6" / "config.json")
    with pytest.raises(NotACheckpointError, match="not found"):
        Decoder.from_checkpoint(tmp_path / "missing.pth")


def test_truncated_reference_file(tmp_path):
    data = (FIXTURES / "decoder_1.15.6" / "checkpoint.pth").read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(NotACheckpointError):
        Decoder.from_checkpoint(bad)


DECODER_CASES = ["decoder_laion_1.1.0", "decoder_1.15.6", "decoder_upsampler_1.1.0"]


@pytest.mark.parametrize("case", DECODER_CASES)
def test_decoder_from_checkpoint_reproduces_reference(case):
    decoder = Decoder.from_checkpoint(FIXTURES / case / "checkpoint.pth")
    assert not decoder.training
    io = load_io(case)
    text = io.get("in.text_encodings")
    unet = decoder.unets[0]
    with torch.no_grad():
        kwargs = dict(image_embed=io["in.image_embed"], text_encodings=text)
        assert_matches(unet(io["in.unet1.x_t"], io["in.timesteps"], **kwargs), io["out.unet1.cond"])
        assert_matches(unet(io["in.unet1.x_t"], io["in.timesteps"], **kwargs, image_cond_drop_prob=1.0,
                            text_cond_drop_prob=1.0), io["out.unet1.null"])
        assert_matches(unet.forward_with_cond_scale(io["in.unet1.x_t"], io["in.timesteps"], **kwargs, cond_scale=1.7),
                       io["out.unet1.guided"])
        pmv = decoder.p_mean_variance(1, io["in.unet1.x_t"], io["in.timesteps"], **kwargs)
    for name in ("model_mean", "posterior_variance", "posterior_log_variance", "x_start"):
        key = f"out.unet1.p_mean_variance.{name}"
        if key in io:
            assert_matches(pmv[name], io[key], factor=1e-3 if name == "x_start" else 1e-4)
    for name, value in decoder.noise_schedulers[0].schedule_buffers().items():
        assert_matches(value, io[f"out.unet1.schedule.{name}"])


def test_upsampler_case_with_lowres_conditioning():
    case = "decoder_upsampler_1.1.0"
    decoder = Decoder.from_checkpoint(FIXTURES / case / "checkpoint.pth")
    io = load_io(case)
    assert decoder.image_sizes == (16, 32)
    with torch.no_grad():
        out = decoder.unets[1](io["in.unet2.x_t"], io["in.timesteps"], image_embed=io["in.image_embed"],
                               lowres_cond_img=io["in.unet2.lowres_cond_img"])
        pmv = decoder.p_mean_variance(2, io["in.unet2.x_t"], io["in.timesteps"], lowres_cond_img=io["in.unet2.lowres_cond_img"])
    assert_matches(out, io["out.unet2.cond"])
    for name in ("model_mean", "posterior_variance", "posterior_log_variance"):
        assert_matches(pmv[name], io[f"out.unet2.p_mean_variance.{name}"])
    for name, value in decoder.noise_schedulers[1].schedule_buffers().items():
        assert_matches(value, io[f"out.unet2.schedule.{name}"])
    # the reference's nearest-neighbour conditioning is available for its trained upsamplers
    from dalle2_pytorch.decoder.lowres import LowresConditioner, resize_image_to

    nearest = LowresConditioner(use_blur=False, downsample_mode="nearest")
    cond, _ = nearest(io["in.image_hr"], target_image_size=32, downsample_image_size=16, should_blur=False)
    assert_matches((cond + 1) / 2, io["out.unet2.lowres_cond_01"])
    assert_matches(resize_image_to(io["in.image_hr"], 32, downsample_mode="nearest"), io["out.unet2.train_target_01"])
    sample_cond, _ = nearest(io["in.prev_unet_output"], target_image_size=32, should_blur=False)
    assert_matches((sample_cond + 1) / 2, io["out.sample_lowres_cond_01"])


def test_stitching_unets_from_two_files():
    base = FIXTURES / "decoder_laion_1.1.0" / "checkpoint.pth"
    cascade = FIXTURES / "decoder_upsampler_1.1.0" / "checkpoint.pth"
    # base 32 px unet from one file + the 32 px upsampler can't chain; take unet 1 of the cascade
    # file and its upsampler from the same file through two sources to exercise stitching
    stitched = Decoder.from_checkpoint([(cascade, [1]), (cascade, [2])])
    whole = Decoder.from_checkpoint(cascade)
    for a, b in zip(stitched.unets, whole.unets):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    assert stitched.image_sizes == whole.image_sizes
    assert [s.beta_schedule for s in stitched.stages] == [s.beta_schedule for s in whole.stages]
    with pytest.raises(ValueError, match="strictly increasing"):
        Decoder.from_checkpoint([(cascade, [2]), (base, [1])])


def test_from_checkpoint_reads_our_trainer_checkpoint_folders(tmp_path):
    from dalle2_pytorch.training import DiffusionPriorTrainer

    from tests.prior.test_diffusion_prior import make_prior

    prior = make_prior()
    prior.config = {"net": {"dim": 32, "depth": 1, "dim_head": 8, "heads": 2, "max_text_len": 16},
                    "image_embed_dim": 32, "timesteps": 50, "sample_timesteps": 5, "cond_drop_prob": 0.2}
    trainer = DiffusionPriorTrainer(prior, ema_update_after_step=0, ema_update_every=1)
    batch = dict(text_embed=torch.randn(4, 32), image_embed=torch.randn(4, 32), text_encodings=torch.randn(4, 3, 32))
    trainer(**batch)
    trainer.update()
    folder = trainer.save(tmp_path / "run" / "step_1")
    loaded = DiffusionPrior.from_checkpoint(folder, prior.config)
    ema = trainer.ema_diffusion_prior.ema_model  # the EMA weights are preferred
    for (k, a), (_, b) in zip(loaded.net.state_dict().items(), ema.net.state_dict().items()):
        assert torch.equal(a, b), k


def test_trainer_checkpoint_with_clip_weights_loads_without_a_clip(tmp_path):
    """LAION's real trainer checkpoints carry the frozen CLIP under clip.*; a model without CLIP ignores it."""
    from dalle2_pytorch.serialization import safe_torch_load
    from dalle2_pytorch.training import DiffusionPriorTrainer

    case = FIXTURES / "prior_laion_1.1.0"
    ck = safe_torch_load(case / "trainer_checkpoint.pth")
    for key in ("model", "ema_model"):
        ck[key]["clip.clip.token_embedding.weight"] = torch.randn(10, 4)
    path = tmp_path / "with_clip.pth"
    torch.save({k: ck[k] for k in ("model", "ema_model", "version", "step")} | {"version": "1.1.0"}, path)
    prior = DiffusionPrior.from_checkpoint(path, case / "config.json")
    trainer = DiffusionPriorTrainer(DiffusionPrior.from_checkpoint(case / "checkpoint.pth", case / "config.json"))
    trainer.load(path)
    io = load_io("prior_laion_1.1.0")
    with torch.no_grad():
        out = prior.net(io["in.image_embed_noisy"], io["in.timesteps"], text_embed=io["in.text_embed"],
                        text_encodings=io["in.text_encodings"])
    assert_matches(out, io["out.net"])


def test_unclipped_reference_schedule_loads_with_a_warning():
    from dalle2_pytorch.compat.schedules import check_schedule_buffers
    from dalle2_pytorch.diffusion import NoiseScheduler

    ours = NoiseScheduler(beta_schedule="jsd", timesteps=50)
    betas = ours.betas.clone()
    betas[-1] = 1.0  # what the reference stored
    with pytest.warns(UserWarning, match="unclipped reference schedule"):
        check_schedule_buffers(ours, {"betas": betas}, "test")
    with pytest.raises(TensorValueMismatchError):
        check_schedule_buffers(ours, {"betas": betas * 0.5}, "test")
