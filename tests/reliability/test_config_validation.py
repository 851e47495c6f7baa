"""Issue 12, defects 3 and 4 for configs: validation checks what the models will need (image sizes the
Unet can take, strict numbers and flags, guidance >= 0, usable seeds), through `--check-config`."""

from __future__ import annotations

import json

import pytest
import torch

from dalle2_pytorch.config import TrainDecoderConfig, TrainDiffusionPriorConfig, UnetConfig
from dalle2_pytorch.decoder.unet import Unet
from dalle2_pytorch.training.scripts import decoder_script, prior_script
from tests.reliability._cli import call, error_line
from tests.scripts._script_helpers import CONFIGS, decoder_argv, prior_argv


def _decoder(capsys, tmp_path, *overrides: str) -> tuple[int, str, str]:
    argv = decoder_argv(tmp_path / "run", "--check-config", *[a for o in overrides for a in ("--override", o)])
    return call(decoder_script.cli, argv, capsys)


def _prior(capsys, tiny_data, tmp_path, *overrides: str) -> tuple[int, str, str]:
    argv = prior_argv(tiny_data, tmp_path / "run", "--check-config", *[a for o in overrides for a in ("--override", o)])
    return call(prior_script.cli, argv, capsys)


def test_check_config_accepts_the_shipped_tiny_configs_and_writes_nothing(tiny_data, tmp_path, capsys):
    status, out, err = _decoder(capsys, tmp_path)
    assert status == 0, err
    assert out.startswith("config OK:") and "image sizes [32]" in out
    status, out, err = _prior(capsys, tiny_data, tmp_path)
    assert status == 0, err
    assert out.startswith("config OK:") and "prior with" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, words", [
    ("decoder.image_sizes=[33]", "decoder.image_sizes[0] = 33 is not a multiple of 2"),
    ("decoder.unets.0.dim_mults=[1, 2, 4, 8]", None),
    ("decoder.image_sizes=[36]", None),
])
def test_image_size_must_be_a_multiple_of_the_unet_downsampling(override, words, tmp_path, capsys):
    status, out, err = _decoder(capsys, tmp_path, override)
    if words is None:  # 32 with 4 stages (factor 8) and 36 with 2 stages (factor 2) are fine
        assert status == 0, err
        return
    assert status == 2
    line = error_line(err, "train_decoder.py")
    assert words in line and "use e.g. 32 or 34" in line


def test_image_size_not_divisible_by_a_deeper_unet(tmp_path, capsys):
    status, _, err = _decoder(capsys, tmp_path, "decoder.unets.0.dim_mults=[1, 2, 4]", "decoder.image_sizes=[34]")
    assert status == 2
    line = error_line(err, "train_decoder.py")
    assert "decoder.image_sizes[0] = 34 is not a multiple of 4" in line and "3 stages" in line and "32 or 36" in line


@pytest.mark.parametrize("stages, memory_efficient, layout", [
    (1, False, "1.15.6"), (2, False, "1.1.0"), (3, False, "1.15.6"), (2, True, "1.15.6"), (3, True, "1.15.6"),
])
def test_the_divisibility_rule_is_what_a_forward_really_needs(stages, memory_efficient, layout, monkeypatch):
    """With the Unet's own input check switched off, a forward works exactly at the multiples of
    `UnetConfig.downsample_factor` (at other sizes the skip connections do not line up)."""
    config = UnetConfig(dim=8, dim_mults=[1] * stages, image_embed_dim=8, cond_on_image_embeds=True,
                        num_resnet_blocks=1, memory_efficient=memory_efficient, layout=layout, attn_heads=2,
                        attn_dim_head=8, resnet_groups=4)
    torch.manual_seed(0)
    unet = config.create().eval()
    factor = config.downsample_factor
    assert factor == unet.downsample_factor
    monkeypatch.setattr(Unet, "downsample_factor", property(lambda self: 1))

    def works(size: int) -> bool:
        try:
            with torch.no_grad():
                out = unet(torch.randn(1, 3, size, size), torch.tensor([3]), image_embed=torch.randn(1, 8))
        except RuntimeError:
            return False
        return out.shape[-1] == size

    sizes = range(2 * factor, 4 * factor + 1)
    assert [s for s in sizes if works(s)] == [s for s in sizes if s % factor == 0]


@pytest.mark.parametrize("override, where, words", [
    ('data.batch_size="8"', "data.batch_size", "valid integer"),
    ("train.epochs=true", "train.epochs", "valid integer"),
    ("train.epochs=2.5", "train.epochs", "integer"),
    ('train.lr="1e-3"', "train.lr", "valid number"),
    ("train.lr=Infinity", "train.lr", "finite"),
    ("train.lr=NaN", "train.lr", "greater than 0"),
    ('train.use_ema="false"', "train.use_ema", "true or false"),
    ("train.use_ema=2", "train.use_ema", "true or false"),
    ("train.cond_scale=-1", "train.cond_scale", "greater than or equal to 0"),
    ("seed=-1", "seed", "greater than or equal to 0"),
    ("seed=4294967296", "seed", "less than 2147483648"),
])
def test_values_a_coercion_would_hide_are_refused(override, where, words, tmp_path, capsys):
    status, _, err = _decoder(capsys, tmp_path, override)
    assert status == 2
    line = error_line(err, "train_decoder.py")
    assert where in line and words in line


@pytest.mark.parametrize("override", ["train.epochs=1.0", "data.batch_size=8", "train.use_ema=0", "train.cond_scale=0",
                                      "train.lr=1"])
def test_harmless_spellings_are_still_accepted(override, tmp_path, capsys):
    status, _, err = _decoder(capsys, tmp_path, override)
    assert status == 0, err


def test_prior_config_types_and_seed(tiny_data, tmp_path, capsys):
    for override, words in (('data.batch_size="8"', "data.batch_size"), ("train.epochs=true", "train.epochs"),
                            ("train.random_seed=-3", "train.random_seed"), ("train.ema_beta=1.5", "train.ema_beta")):
        status, _, err = _prior(capsys, tiny_data, tmp_path, override)
        assert status == 2, override
        assert words in error_line(err, "train_prior.py")


def test_network_that_cannot_be_built_is_a_config_error(tmp_path, capsys):
    """GroupNorm needs channels divisible by its groups: only building the network (on the meta
    device) finds out; --check-config reports it as one line."""
    status, _, err = _decoder(capsys, tmp_path, "decoder.unets.0.resnet_groups=7")
    assert status == 2
    assert "cannot be built" in error_line(err, "train_decoder.py")


def test_duplicate_keys_in_a_config_file_are_an_error(tmp_path, capsys):
    text = (CONFIGS / "decoder_tiny_cpu.json").read_text().replace('"seed": 0', '"seed": 0, "seed": 1')
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    status, _, err = call(decoder_script.cli, ["--config_file", str(bad), "--check-config"], capsys)
    assert status == 2
    assert "'seed' appears twice" in error_line(err, "train_decoder.py")


def test_from_json_path_and_validate_paths_have_one_home():
    from dalle2_pytorch.config.base import TrainingConfig

    for cls in (TrainDiffusionPriorConfig, TrainDecoderConfig):
        assert issubclass(cls, TrainingConfig)
        assert "from_json_path" not in cls.__dict__ and "validate_paths" not in cls.__dict__
    data = json.loads((CONFIGS / "decoder_tiny_cpu.json").read_text())
    data["data"]["img_embeddings_url"] = "/nowhere/img_emb"
    data["decoder"]["clip"] = None
    config = TrainDecoderConfig.model_validate(data | {"data": {**data["data"], "text_embeddings_url": "/nowhere/t"}})
    with pytest.raises(FileNotFoundError, match="data.img_embeddings_url = '/nowhere/img_emb'.*data.text_embeddings_url"):
        config.validate_paths()
