"""Reference decoder files keep the low-res conditioning they were trained with (nearest-neighbour
down- and up-sampling); decoders built or exported here keep antialiasing."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from dalle2_pytorch.decoder import Decoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compat"
UPSAMPLER = FIXTURES / "decoder_upsampler_1.1.0"


def load_io(folder: Path) -> dict:
    return {k: v.clone() for k, v in load_file(str(folder / "io.safetensors")).items()}


def test_reference_upsampler_conditions_like_the_reference():
    decoder = Decoder.from_checkpoint(UPSAMPLER / "checkpoint.pth")
    assert decoder.lowres_downsample_mode == "nearest" and decoder.lowres_conds[1].downsample_mode == "nearest"
    io, io_1156 = load_io(UPSAMPLER), load_io(FIXTURES / "lowres_1.15.6")
    assert torch.equal(io["in.image_hr"], io_1156["in.image_hr"])
    cond, levels = decoder.lowres_conds[1](io["in.image_hr"], target_image_size=32, downsample_image_size=16,
                                           should_blur=False)
    assert levels is None
    # ours is in [-1, 1]; the reference's (1.1.0 and 1.15.6 agree) in [0, 1]
    torch.testing.assert_close((cond + 1) / 2, io["out.unet2.lowres_cond_01"], rtol=0, atol=1e-6)
    torch.testing.assert_close((cond + 1) / 2, io_1156["out.unet2.lowres_cond_01"], rtol=0, atol=1e-6)
    sample_cond, _ = decoder.lowres_conds[1](io["in.prev_unet_output"], target_image_size=32, should_blur=False)
    torch.testing.assert_close((sample_cond + 1) / 2, io_1156["out.sample_lowres_cond_01"], rtol=0, atol=1e-6)


def test_laion_decoder_and_explicit_configs():
    laion = Decoder.from_checkpoint(FIXTURES / "decoder_laion_1.1.0" / "checkpoint.pth")
    assert laion.lowres_downsample_mode == "nearest"  # also its training targets (Decoder.forward resize)
    config = json.loads((UPSAMPLER / "config.json").read_text())
    config["decoder"]["lowres_downsample_mode"] = "antialias"  # a user asking for antialiasing gets it
    decoder = Decoder.from_checkpoint(UPSAMPLER / "checkpoint.pth", config)
    assert decoder.lowres_downsample_mode == "antialias"


def test_decoders_trained_here_keep_antialiasing(tmp_path):
    from dalle2_pytorch.compat.decoder_loading import build_decoder_from_config
    from dalle2_pytorch.training.export import export_model, export_reference_model

    config = json.loads((UPSAMPLER / "config.json").read_text())["decoder"]
    config["clip"] = None
    ours = build_decoder_from_config(config)
    assert ours.lowres_downsample_mode == "antialias"  # the default for models trained here
    export_model(ours, tmp_path / "export")
    assert Decoder.from_checkpoint(tmp_path / "export").lowres_downsample_mode == "antialias"
    export_reference_model(ours, tmp_path / "ours_in_reference_layout.pth")  # records the mode in its config
    assert Decoder.from_checkpoint(tmp_path / "ours_in_reference_layout.pth").lowres_downsample_mode == "antialias"
