"""VQGanVAE / NullVQGanVAE: the reference's files load and reproduce, losses, and input checks.

Fixtures in tests/fixtures/compat/vqgan/ were written by dalle2-pytorch 1.15.6 (see
make_vqgan_fixtures.py there).
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle2_pytorch.serialization import safe_torch_load
from dalle2_pytorch.vqgan_vae import NullVQGanVAE, VQGanVAE, load_vgg16
from tests.vqgan_vae.helpers import TINY, StandInVGG

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compat" / "vqgan"


def load_io(folder: Path) -> dict:
    return {k: v.clone() for k, v in load_file(str(folder / "io.safetensors")).items()}


def assert_matches(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def reference_vae(case: str) -> tuple[VQGanVAE, dict]:
    folder = FIXTURES / case
    config = json.loads((folder / "config.json").read_text())["vqgan_vae"]
    extra = {"vgg": StandInVGG()} if config.get("use_vgg_and_gan", True) else {}
    vae = VQGanVAE(**config, **extra)
    vae.load_state_dict(safe_torch_load(folder / "vae.pt"), strict=True)
    return vae.eval(), load_io(folder)


@pytest.mark.parametrize("case", ["vae_resnet_1.15.6", "vae_vit_1.15.6"])
def test_reference_vae_loads_strictly_and_reproduces(case):
    vae, io = reference_vae(case)
    reference_keys = list(safe_torch_load(FIXTURES / case / "vae.pt"))
    assert list(vae.state_dict()) == reference_keys  # same keys, same order, no vgg.*
    with torch.no_grad():
        fmap = vae.encode(io["in.image"])
        images, indices, _ = vae.decode(fmap, return_indices_and_loss=True)
        quantized, _, _ = vae.vq(fmap)
        assert_matches(fmap, io["out.encode"])
        assert torch.equal(indices, io["out.indices"])
        assert_matches(quantized, io["out.quantized"])
        assert_matches(images, io["out.decode"])
        assert_matches(vae(io["in.image"]), io["out.forward"])
        assert_matches(vae.decode(io["in.latent"]), io["out.decode_latent"])
    assert vae.get_encoded_fmap_size(32) == io["out.encode"].shape[-1]
    assert vae.encoded_dim == io["out.encode"].shape[1]


def test_reference_vae_file_through_from_checkpoint():
    case = FIXTURES / "vae_resnet_1.15.6"
    config = json.loads((case / "config.json").read_text())["vqgan_vae"]
    with pytest.raises(ValueError, match="carries no VQGanVAE config"):
        VQGanVAE.from_checkpoint(case / "vae.pt")
    vae = VQGanVAE.from_checkpoint(case / "vae.pt", config)
    assert vae.discr is not None and vae.vgg is None and not vae.training
    io = load_io(case)
    with torch.no_grad():
        assert_matches(vae(io["in.image"]), io["out.forward"])
    # an inference-only config drops the discriminator weights
    vae = VQGanVAE.from_checkpoint(case / "vae.pt", {**config, "use_vgg_and_gan": False})
    assert vae.discr is None and not any(k.startswith("discr.") for k in vae.state_dict())
    with pytest.raises(ValueError, match="do not fit"):
        VQGanVAE.from_checkpoint(case / "vae.pt", {**config, "layers": 3})


def test_vae_inside_the_reference_latent_decoder():
    """The `vaes.1.*` part of a reference latent Decoder is a strict VQGanVAE state dict, and its
    encode / decode reproduce what the reference decoder computed."""
    folder = FIXTURES / "decoder_latent_1.15.6"
    config = json.loads((folder / "config.json").read_text())
    state = safe_torch_load(folder / "checkpoint.pth")["model"]
    vae = VQGanVAE(**config["vaes"][1])
    vae.load_state_dict({k[len("vaes.1."):]: v for k, v in state.items() if k.startswith("vaes.1.")}, strict=True)
    assert not any(k.startswith("vaes.0.") for k in state)  # NullVQGanVAE has no weights
    vae.eval()
    io = load_io(folder)
    with torch.no_grad():
        assert_matches(vae.encode(io["out.unet2.lowres_cond_01"]), io["out.unet2.lowres_cond_latent"])
        assert_matches(vae.encode(io["out.unet2.train_target_01"]), io["out.unet2.target_latent"])
        assert_matches(vae.decode(io["out.unet2.target_latent"]), io["out.vae2.decode_target_latent"])


def test_state_dict_never_holds_the_perceptual_network_and_copy_for_eval():
    torch.manual_seed(0)
    vgg = StandInVGG()
    vae = VQGanVAE(**TINY, vgg=vgg)
    assert vae.vgg is vgg and not any(p.requires_grad for p in vgg.parameters()) and not vgg.training
    keys = set(vae.state_dict())
    assert any(k.startswith("discr.") for k in keys) and not any(k.startswith("vgg.") for k in keys)
    assert all(p is not q for p in vae.parameters() for q in vgg.parameters())  # never optimised
    vae.double()
    assert next(vgg.parameters()).dtype == torch.float64  # moved with the VAE
    vae.float()
    vae.train()
    assert not vgg.training
    copy = vae.copy_for_eval()
    assert copy.discr is None and copy.vgg is None and not copy.training and not copy.use_vgg_and_gan
    assert set(copy.state_dict()) == {k for k in keys if not k.startswith("discr.")}
    assert vae.discr is not None and vae.vgg is vgg  # the original is untouched
    assert copy.config["use_vgg_and_gan"] is False


def test_losses_backward_and_caller_tensor_untouched():
    torch.manual_seed(0)
    vae = VQGanVAE(**TINY, vgg=StandInVGG(), use_hinge_loss=False).train()
    img = torch.rand(2, 3, 16, 16)
    loss, recons = vae(img, return_loss=True, return_recons=True)
    assert loss.ndim == 0 and torch.isfinite(loss) and recons.shape == img.shape
    loss.backward()
    assert vae.enc_dec.last_dec_layer.grad is not None and vae.enc_dec.encoders[0].weight.grad is not None
    assert all(p.grad is None for p in vae.vgg.parameters())
    for penalty in (True, False):  # the reference failed without the penalty
        d_loss = vae(img, return_discr_loss=True, add_gradient_penalty=penalty)
        assert torch.isfinite(d_loss)
    assert not img.requires_grad  # the reference set requires_grad on the caller's tensor
    with pytest.raises(ValueError, match="not both"):
        vae(img, return_loss=True, return_discr_loss=True)
    plain = VQGanVAE(**TINY, use_vgg_and_gan=False)
    assert plain.discr is None and plain.vgg is None
    with pytest.raises(ValueError, match="no discriminator"):
        plain(img, return_discr_loss=True)
    torch.testing.assert_close(plain(img, return_loss=True), (plain(img) - img).abs().mean())


def test_codebook_is_initialised_by_kmeans_on_the_first_training_batch():
    torch.manual_seed(0)
    vae = VQGanVAE(**TINY, use_vgg_and_gan=False).train()
    assert not bool(vae.vq._codebook.initted)
    with torch.no_grad():
        vae(torch.rand(4, 3, 16, 16))
    assert bool(vae.vq._codebook.initted)
    assert vae.codebook.shape == (16, 8)


def test_bad_arguments_are_clear():
    with pytest.raises(TypeError, match="bogus"):
        VQGanVAE(**TINY, use_vgg_and_gan=False, bogus=1)
    with pytest.warns(UserWarning, match="encdec_layer_mults"):  # the reference README's spelling
        VQGanVAE(**TINY, use_vgg_and_gan=False, layer_mults=(1,))
    with pytest.raises(ValueError, match="vae_type"):
        VQGanVAE(**TINY, use_vgg_and_gan=False, vae_type="convnext")
    with pytest.raises(ValueError, match="divisible"):
        VQGanVAE(**{**TINY, "dim": 12}, use_vgg_and_gan=False)
    vae = VQGanVAE(**TINY, use_vgg_and_gan=False)
    with pytest.raises(ValueError, match="16x16"):
        vae(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        vae(torch.rand(1, 1, 16, 16))


def test_without_vgg_weights_the_perceptual_loss_is_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.warns(UserWarning, match="perceptual loss is disabled"):
        vae = VQGanVAE(**TINY)
    assert vae.vgg is None and vae.discr is not None
    loss = vae.train()(torch.rand(2, 3, 16, 16), return_loss=True)
    assert torch.isfinite(loss)
    with pytest.raises(FileNotFoundError):
        load_vgg16(tmp_path / "missing.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "not_vgg.pth")
    with pytest.raises(ValueError, match="VGG16"):
        load_vgg16(tmp_path / "not_vgg.pth")


class _SmallVGG(torch.nn.Module):
    """torchvision VGG's layout (features / avgpool / classifier) at a testable size."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        self.avgpool = torch.nn.AdaptiveAvgPool2d(2)
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
            torch.nn.Dropout(), torch.nn.Linear(8, 5),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def test_vgg_weights_from_a_file_or_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.models, "vgg16", lambda weights=None: _SmallVGG())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _SmallVGG()
    torch.save(source.state_dict(), tmp_path / "vgg.pth")
    vgg = load_vgg16(tmp_path / "vgg.pth")
    assert len(vgg.classifier) == 5 and not vgg.training and not any(p.requires_grad for p in vgg.parameters())
    assert torch.equal(vgg.features[0].weight, source.features[0].weight)
    assert vgg(torch.rand(1, 3, 8, 8)).shape == (1, 8)  # features after the second ReLU
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth")
    vae = VQGanVAE(**TINY)  # torch's hub cache is used without a download
    assert torch.equal(vae.vgg.features[0].weight, source.features[0].weight)


def test_null_vae_is_the_identity():
    null = NullVQGanVAE(channels=3)
    x = torch.rand(2, 3, 8, 8)
    assert null.encode(x) is x and null.decode(x) is x and null.copy_for_eval() is null
    assert (null.encoded_dim, null.get_encoded_fmap_size(8), null.layers) == (3, 8, 0)
    assert null.state_dict() == {}
