"""`train_decoder.py` with a latent second stage (VQGAN-VAE from a trained file), then `dream` on it."""

from __future__ import annotations

import pytest
import torch

import train_decoder
from dalle2_pytorch.decoder.decoder import Decoder
from tests.scripts._script_helpers import CONFIGS, REFERENCE_SHARDS, read_metrics, train_losses

pytest.importorskip("vector_quantize_pytorch")


def _vae_export(path):
    from dalle2_pytorch.training.vqgan_trainer import export_vqgan_vae
    from dalle2_pytorch.vqgan_vae import VQGanVAE

    torch.manual_seed(0)
    # the shipped tiny VQGAN config's shape (train_configs/vqgan_tiny_cpu.json), untrained
    vae = VQGanVAE(dim=32, image_size=32, layers=2, vq_codebook_size=256, vq_codebook_dim=32, use_vgg_and_gan=False,
                   vq_kmeans_init=False, encdec_attn_heads=4, encdec_attn_dim_head=16, encdec_resnet_groups=8)
    return export_vqgan_vae(vae, path)


@pytest.mark.slow
def test_latent_second_stage_trains_exports_and_samples(tmp_path):
    vae_dir = _vae_export(tmp_path / "vae")
    run = tmp_path / "run"
    argv = [
        "--config_file", str(CONFIGS / "decoder_latent_tiny_cpu.json"),
        "--override", f"data.webdataset_base_url={REFERENCE_SHARDS}/{{}}.tar",
        "--override", f"tracker.data_path={run}",
        "--override", f"decoder.vaes.1.path={vae_dir}",
        "--override", "train.epochs=1",
    ]
    assert train_decoder.main(argv) == 0
    losses = train_losses(read_metrics(run))
    assert losses and all(torch.isfinite(torch.tensor(v)) for _, v in losses)

    decoder = Decoder.from_checkpoint(run / "export")
    assert [s.latent for s in decoder.stage_settings] == [False, True]
    assert any(k.startswith("vaes.1.") for k in decoder.state_dict())
    # the VAE in the export is the file's, untouched by training
    from dalle2_pytorch.vqgan_vae import VQGanVAE

    vae = VQGanVAE.from_checkpoint(vae_dir)
    for k, v in vae.state_dict().items():
        assert torch.equal(decoder.vaes[1].state_dict()[k], v), k
    embed = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    text = torch.randn(2, 4, 32)
    images = decoder.sample(image_embed=embed, text_encodings=text, sampler="ddim", steps=3,
                            generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()

    # dream: image variations through the latent cascade (the config's tiny CLIP)
    import json

    from PIL import Image

    from dalle2_pytorch import cli

    clip_spec = json.loads((CONFIGS / "decoder_latent_tiny_cpu.json").read_text())["decoder"]["clip"]
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    out = tmp_path / "dream"
    code = cli.main(["--decoder", str(run / "export"), "--clip", json.dumps(clip_spec), "--image", str(tmp_path / "red.png"),
                     "--sampler", "ddim", "--decoder-steps", "3", "--device", "cpu", "--output", str(out)])
    assert code == 0
    variations = [p for p in sorted(out.glob("*.png")) if p.with_suffix(".json").exists()]
    assert variations, sorted(out.iterdir())
    for png in variations:
        with Image.open(png) as img:
            assert img.size == (32, 32)
