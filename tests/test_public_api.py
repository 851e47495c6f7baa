"""The reference's public import paths keep working (drop-in for dalle2-pytorch 1.15.6 users)."""

import importlib
import inspect

import pytest


@pytest.mark.parametrize(
    "module,names",
    [
        ("dalle2_pytorch", ["DALLE2", "DiffusionPriorNetwork", "DiffusionPrior", "Unet", "Decoder", "OpenAIClipAdapter",
                            "OpenClipAdapter", "DecoderTrainer", "DiffusionPriorTrainer", "CLIP", "__version__"]),
        ("dalle2_pytorch.trainer", ["DiffusionPriorTrainer", "DecoderTrainer"]),
        ("dalle2_pytorch.train_configs", ["TrainDiffusionPriorConfig", "TrainDecoderConfig", "DecoderConfig", "UnetConfig",
                                          "DiffusionPriorConfig", "DiffusionPriorNetworkConfig", "AdapterConfig"]),
        ("dalle2_pytorch.tokenizer", ["tokenizer", "SimpleTokenizer"]),
        ("dalle2_pytorch.trackers", ["Tracker", "ConsoleLogger", "WandbLogger"]),
        ("dalle2_pytorch.dataloaders", ["ImageEmbeddingDataset", "create_image_embedding_dataloader", "make_splits",
                                        "get_reader", "PriorEmbeddingDataset"]),
        ("dalle2_pytorch.clip_adapters", ["XClipAdapter", "BaseClipAdapter"]),
    ],
)
def test_reference_import_paths(module, names):
    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_reference_signatures_are_kept():
    from dalle2_pytorch import Decoder, DiffusionPrior, DiffusionPriorNetwork, Unet

    params = inspect.signature(DiffusionPriorNetwork.forward).parameters
    assert list(params)[:3] == ["self", "image_embed", "diffusion_timesteps"]
    for name in ("text_embed", "text_encodings", "self_cond", "text_cond_drop_prob", "image_cond_drop_prob"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    sample = inspect.signature(DiffusionPrior.sample).parameters
    assert list(sample)[1:5] == ["text", "num_samples_per_batch", "cond_scale", "timesteps"]
    unet_forward = inspect.signature(Unet.forward).parameters
    assert list(unet_forward)[1:3] == ["x", "time"]
    decoder_forward = inspect.signature(Decoder.forward).parameters
    assert list(decoder_forward)[1:7] == ["image", "text", "image_embed", "text_encodings", "unet_number",
                                          "return_lowres_cond_image"]


def test_import_has_no_heavy_side_effects():
    import subprocess
    import sys

    code = ("import sys, dalle2_pytorch; print('wandb' in sys.modules, 'accelerate' in sys.modules, "
            "'vector_quantize_pytorch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]  # vector-quantize-pytorch is an optional extra ([vqgan])
