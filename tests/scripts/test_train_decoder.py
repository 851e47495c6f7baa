"""`train_decoder.py` end to end on the reference webdataset shards (real tars, CLIP on the fly)."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import train_decoder
from dalle2_pytorch.decoder.decoder import Decoder
from dalle2_pytorch.training.scripts.cli import ConfigError
from tests.scripts._script_helpers import copy_shards, decoder_argv, read_metrics, train_losses

STEPS_PER_EPOCH = 7  # 8 training shards x 7 samples, batch 8


def _checkpoint(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def test_decoder_trains_samples_and_exports(tmp_path, caplog):
    run = tmp_path / "run"
    assert train_decoder.main(decoder_argv(run)) == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]

    records = read_metrics(run)
    losses = train_losses(records)
    assert [s for s, _ in losses] == list(range(1, 4 * STEPS_PER_EPOCH + 1))
    first = sum(v for _, v in losses[:5]) / 5
    last = sum(v for _, v in losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    val = [r["val/loss"] for r in records if "val/loss" in r]
    assert len(val) == 4 and val[-1] < val[0]
    assert any("test/loss_ema" in r for r in records)

    # the tiny config asks for no metric that needs downloaded weights: nothing skipped, no ERROR line
    assert not [r for r in records if r.get("event") in ("metric_skipped", "metric_failed")]

    samples = sorted(p.name for p in (run / "samples").glob("*.png"))
    expected = [f"train_samples_{s:08d}.png" for s in (14, 28)] + [f"val_samples_{s:08d}.png" for s in (7, 14, 21, 28)]
    assert samples == expected
    with Image.open(run / "samples" / "val_samples_00000028.png") as grid:
        assert grid.size == (2 * 32 + 3 * 2, 4 * 32 + 5 * 2)  # 4 rows of (real | sample), 2 px padding

    state = json.loads((_checkpoint(run, 28) / "trainer_state.json").read_text())
    assert state["steps"] == [28] and state["epoch"] == 4 and state["samples_seen"] == 4 * 56
    assert (run / "best.ckpt" / "manifest.json").is_file()

    exported = Decoder.from_checkpoint(run / "export")
    ema = load_file(str(_checkpoint(run, 28) / "ema.safetensors"))
    for k, v in exported.state_dict().items():
        if k.startswith("unets.0."):
            assert torch.equal(v, ema["0.ema_model." + k[len("unets.0."):]]), k
    reference = Decoder.from_checkpoint(run / "model.pth")  # carries its config, like LAION's files
    for k, v in exported.state_dict().items():
        assert torch.equal(v, reference.state_dict()[k]), k
    image_embed = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)
    images = exported.sample(image_embed=image_embed, text_encodings=torch.randn(2, 16, 32),
                             generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_decoder_resume_continues_exactly(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert train_decoder.main(decoder_argv(whole, "--max-steps", "10")) == 0
    assert train_decoder.main(decoder_argv(split, "--max-steps", "4")) == 0
    meta = json.loads((_checkpoint(split, 4) / "trainer_state.json").read_text())["metadata"]
    assert meta["epoch"] == 0 and meta["epoch_offset"] == 4 and meta["samples_seen"] == 32
    assert train_decoder.main(decoder_argv(split, "--max-steps", "10")) == 0

    records = read_metrics(split)
    assert [s for s, _ in train_losses(records)] == list(range(1, 11))  # continued at 5
    assert [r["samples_seen"] for r in records if "train/loss" in r][4] == 40
    assert train_losses(records) == train_losses(read_metrics(whole))
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(_checkpoint(whole, 10) / name)), load_file(str(_checkpoint(split, 10) / name))
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k}"


def _corrupt_every_shard(folder: Path, key: str = "3") -> None:
    for tar_path in folder.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(tar_path, "w") as tar:
            for member, data in members:
                if member.name == f"{key}.jpg":
                    data = data[: len(data) // 3]  # truncated JPEG: decoding fails
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


def test_decoder_metric_without_offline_weights_is_skipped_with_its_reason(tmp_path):
    run = tmp_path / "run"
    argv = decoder_argv(run, "--max-steps", "1", "--override", "train.epochs=1", "--override",
                        'evaluate.FID={"feature": 64}')
    assert train_decoder.main(argv) == 0
    skipped = [r for r in read_metrics(run) if r.get("event") == "metric_skipped"]
    assert [r["metric"] for r in skipped] == ["FID"] and "feature_extractor_weights_path" in skipped[0]["reason"]


def test_decoder_skips_and_counts_corrupt_samples(tmp_path):
    shards = copy_shards(tmp_path / "shards")
    _corrupt_every_shard(shards)
    run = tmp_path / "run"
    assert train_decoder.main(decoder_argv(run, "--max-steps", "3", "--override", "train.epochs=1", shards=shards)) == 0
    records = [r for r in read_metrics(run) if "train/loss" in r]
    assert records[-1]["data/skipped_samples"] >= 3  # one per shard read so far (3 batches of 8 need > 3 shards)
    assert all(math.isfinite(r["train/loss"]) for r in records)


def test_decoder_unet_training_mask_freezes_masked_unets(tmp_path):
    unet = dict(dim=16, dim_mults=[1, 2], image_embed_dim=32, text_embed_dim=32, cond_dim=32, max_text_len=16,
                attn_heads=2, attn_dim_head=16, num_resnet_blocks=1, init_cross_embed_kernel_sizes=[3, 7])
    run = tmp_path / "run"
    argv = decoder_argv(
        run, "--max-steps", "2",
        "--override", "decoder.unets=" + json.dumps([{**unet, "cond_on_text_encodings": True}, unet]),
        "--override", "decoder.image_sizes=[16, 32]",
        "--override", "decoder.sample_timesteps=[4, 4]",
        "--override", "train.unet_training_mask=[false, true]",
        "--override", "train.save_immediately=true",
        "--override", "evaluate.FID=null",
    )
    assert train_decoder.main(argv) == 0
    before = load_file(str(_checkpoint(run, 0) / "model.safetensors"))
    after = load_file(str(_checkpoint(run, 2) / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("unets.0."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("unets.1."))
    train = [r for r in read_metrics(run) if "train/loss" in r]
    assert all("train/loss_unet2" in r and "train/loss_unet1" not in r for r in train)


def test_decoder_text_encodings_come_from_clip_not_pooled_embeddings(tmp_path):
    """Reference issue #241: pooled text embeddings were passed as per-token encodings."""
    from dalle2_pytorch.config import TrainDecoderConfig
    from dalle2_pytorch.training.scripts.cli import load_config
    from dalle2_pytorch.training.scripts.clip_loading import build_clip
    from dalle2_pytorch.training.scripts.decoder_data import DecoderConditioner

    config = load_config(TrainDecoderConfig, decoder_argv(tmp_path)[1], check_paths=False)
    torch.manual_seed(0)
    clip = build_clip(config.decoder.clip)
    decoder = config.decoder.create(build_clip=False)
    conditioner = DecoderConditioner(decoder, clip, torch.device("cpu"))
    images, captions = torch.rand(3, 3, 32, 32), ["cat", "small cat", "sea"]
    pooled = torch.nn.functional.normalize(torch.randn(3, 32), dim=-1)
    cond = conditioner(images, {"img": pooled, "text": pooled}, captions)
    expected = clip.embed_text(clip.tokenize(captions)).text_encodings
    assert cond["text_encodings"].shape == (3, 16, 32)
    assert torch.equal(cond["text_encodings"], expected)
    assert torch.equal(cond["image_embed"], pooled)  # precomputed image embeddings are used as they are
    with pytest.raises(ConfigError, match="#241"):
        DecoderConditioner(decoder, None, torch.device("cpu"))


def test_decoder_with_precomputed_image_embeddings(tiny_data, tmp_path, monkeypatch):
    """Image embeddings from the shards' .npy files; only the text goes through the (saved) CLIP."""
    from dalle2_pytorch.clip_adapters import XClipAdapter

    def no_image_embedding(self, images):
        raise AssertionError("image embeddings must come from data.img_embeddings_url")

    monkeypatch.setattr(XClipAdapter, "embed_image", no_image_embedding)
    run = tmp_path / "run"
    argv = decoder_argv(
        run, "--max-steps", "3",
        "--override", f"decoder.clip={json.dumps({'make': 'x-clip', 'model': tiny_data['clip']})}",
        "--override", f"data.img_embeddings_url={tiny_data['image_url']}",
        "--override", "evaluate.FID=null",
    )
    assert train_decoder.main(argv) == 0
    losses = [v for _, v in train_losses(read_metrics(run))]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)


def test_decoder_dry_run_and_config_errors(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_decoder.main(decoder_argv(run, "--dry-run")) == 0
    assert "dry run: decoder with" in capsys.readouterr().out and not run.exists()
    with pytest.raises(ConfigError, match=r"decoder\.unets\.0: unknown key 'dimm'.*nearest valid key: 'dim'"):
        train_decoder.main(decoder_argv(run, "--override", "decoder.unets.0.dimm=3"))
    with pytest.raises(ConfigError, match="no shards found"):
        train_decoder.main(decoder_argv(run, shards=tmp_path / "missing"))
