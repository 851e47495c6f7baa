"""Latent (VQGAN-VAE) decoder stages: the reference's file loads and reproduces its outputs; our own
latent decoders train, export, reload and sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dalle2_pytorch import Decoder, Unet
from dalle2_pytorch.vqgan_vae import NullVQGanVAE, VQGanVAE

pytest.importorskip("vector_quantize_pytorch")  # the [vqgan] extra; part of the dev/CI environment

CASE = Path(__file__).resolve().parents[1] / "fixtures" / "compat" / "vqgan" / "decoder_latent_1.15.6"


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def _config() -> dict:
    raw = json.loads((CASE / "config.json").read_text())
    decoder = dict(raw["decoder"])
    decoder["vaes"] = [None if v is None else {"config": v} for v in raw["vaes"]]
    return {"decoder": decoder}


@pytest.fixture(scope="module")
def loaded():
    return Decoder.from_checkpoint(CASE / "checkpoint.pth", _config()), load_file(str(CASE / "io.safetensors"))


def test_reference_latent_decoder_loads_strictly_and_reproduces_unet_outputs(loaded):
    decoder, io = loaded
    assert [s.latent for s in decoder.stage_settings] == [False, True]
    assert decoder.stage_settings[1].channels == 8 and decoder.stage_settings[1].sample_size == 16
    assert decoder.stage_settings[1].objective.value == "x_start"  # predict_x_start_for_latent_diffusion
    with torch.no_grad():
        out1 = decoder.unets[0](io["in.unet1.x_t"], io["in.timesteps"], image_embed=io["in.image_embed"])
        out2 = decoder.unets[1](io["in.unet2.x_t"], io["in.timesteps"], image_embed=io["in.image_embed"],
                                lowres_cond_img=io["out.unet2.lowres_cond_latent"])
    _close(out1, io["out.unet1.cond"])
    _close(out2, io["out.unet2.cond"])


def test_reference_latent_stage_conditioning_encoding_and_p_mean_variance(loaded):
    decoder, io = loaded
    stage = decoder.stages[1]
    # the training target and low-res condition, encoded from [0, 1] as the reference does
    target = stage.to_data(io["out.unet2.train_target_01"])
    _close(target, io["out.unet2.target_latent"])
    lowres, _ = stage.lowres_conditioner(io["in.image_hr"], target_image_size=32, downsample_image_size=16, should_blur=False)
    _close((lowres + 1) / 2, io["out.unet2.lowres_cond_01"])
    _close(stage.encode_lowres(lowres), io["out.unet2.lowres_cond_latent"])
    pmv = decoder.p_mean_variance(2, io["in.unet2.x_t"], io["in.timesteps"], image_embed=io["in.image_embed"],
                                  lowres_cond_img=io["out.unet2.lowres_cond_latent"])
    for name in ("model_mean", "posterior_variance", "posterior_log_variance", "x_start"):
        _close(pmv[name], io[f"out.unet2.p_mean_variance.{name}"])  # never clamped in a latent stage
    _close(stage.vae.decode(io["out.unet2.target_latent"]), io["out.vae2.decode_target_latent"])


def test_latent_decoder_file_without_vaes_in_its_config_is_a_clear_error():
    config = _config()
    config["decoder"].pop("vaes")
    with pytest.raises(ValueError, match=r"has VQGAN-VAE stages \(vaes.1.\*\) but the config defines none"):
        Decoder.from_checkpoint(CASE / "checkpoint.pth", config)


def _tiny_latent_decoder() -> Decoder:
    torch.manual_seed(0)
    vae = VQGanVAE(dim=8, image_size=16, layers=1, vq_codebook_size=16, vq_codebook_dim=8, use_vgg_and_gan=False,
                   encdec_attn_heads=2, encdec_attn_dim_head=8, encdec_resnet_groups=8)
    unets = [Unet(dim=8, image_embed_dim=16, cond_dim=8, dim_mults=(1,), attn_heads=2, attn_dim_head=8) for _ in range(2)]
    return Decoder(unets, vae=(NullVQGanVAE(channels=3), vae), image_sizes=(8, 16), timesteps=20,
                   learned_variance=False, predict_x_start_for_latent_diffusion=True)


def test_latent_stage_trains_without_touching_the_vae_and_samples_images():
    decoder = _tiny_latent_decoder()
    vae_before = {k: v.clone() for k, v in decoder.vaes[1].state_dict().items()}
    assert not any(p.requires_grad for p in decoder.vaes.parameters())
    image = torch.rand(2, 3, 16, 16)
    embed = F.normalize(torch.randn(2, 16), dim=-1)
    opt = torch.optim.SGD([p for p in decoder.unets[1].parameters()], lr=0.1)
    decoder.train()
    for _ in range(2):
        loss = decoder(image, image_embed=embed, unet_number=2, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not decoder.vaes.training  # stays in eval mode
    assert all(torch.equal(v, decoder.vaes[1].state_dict()[k]) for k, v in vae_before.items())
    images = decoder.sample(image_embed=embed, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(1))
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="inpainting is not supported through latent"):
        decoder.sample(image_embed=embed, steps=3, sampler="ddim", inpaint_image=torch.rand(2, 3, 16, 16),
                       inpaint_mask=torch.ones(2, 16, 16, dtype=torch.bool))


def test_latent_decoder_export_round_trip(tmp_path):
    from dalle2_pytorch.compat.decoder_loading import build_decoder_from_config
    from dalle2_pytorch.training.export import export_model

    vae_cfg = dict(dim=8, image_size=16, layers=1, vq_codebook_size=16, vq_codebook_dim=8, use_vgg_and_gan=False,
                   vq_kmeans_init=False,  # an untrained k-means codebook would initialise itself at the first decode
                   encdec_attn_heads=2, encdec_attn_dim_head=8, encdec_resnet_groups=8)
    unet = dict(dim=8, image_embed_dim=16, cond_dim=8, dim_mults=[1], attn_heads=2, attn_dim_head=8)
    config = dict(unets=[unet, unet], image_sizes=[8, 16], timesteps=20, learned_variance=False,
                  vaes=[None, {"config": vae_cfg}])
    decoder = build_decoder_from_config(config)
    export_model(decoder, tmp_path / "decoder")
    again = Decoder.from_checkpoint(tmp_path / "decoder")
    for (k, a), (k2, b) in zip(decoder.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert any(k.startswith("vaes.1.") for k in again.state_dict())
    embed = F.normalize(torch.randn(1, 16), dim=-1)
    a = decoder.sample(image_embed=embed, sampler="ddim", steps=2, generator=torch.Generator().manual_seed(0))
    b = again.sample(image_embed=embed, sampler="ddim", steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
