"""Decoder evaluation metrics: skipped with a reason offline, built from local weight files."""

from __future__ import annotations

import pytest
import torch

from dalle2_pytorch.config import DecoderEvaluateConfig
from dalle2_pytorch.training.scripts.image_metrics import build_image_metrics


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: nothing can be found or downloaded."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_metrics_without_weights_are_skipped_with_the_reason(empty_hub):
    config = DecoderEvaluateConfig(FID={"feature": 64}, IS={"feature": 64}, KID={"feature": 64, "subset_size": 2},
                                   LPIPS={"net_type": "vgg"})
    metrics = build_image_metrics(config)
    assert not metrics and sorted(metrics.skipped) == ["FID", "IS", "KID", "LPIPS"]
    assert "evaluate.FID.feature_extractor_weights_path" in metrics.skipped["FID"]
    assert "weights-inception-2015-12-05-6726825d.pth" in metrics.skipped["KID"]
    assert "evaluate.LPIPS.backbone_weights_path" in metrics.skipped["LPIPS"]
    assert "vgg16-397923af.pth" in metrics.skipped["LPIPS"]


def test_configured_weights_file_must_exist(empty_hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="FID.feature_extractor_weights_path"):
        missing = str(tmp_path / "x.pth")
        build_image_metrics(DecoderEvaluateConfig(FID={"feature": 64, "feature_extractor_weights_path": missing}))


def test_lpips_from_a_local_backbone_file(empty_hub, tmp_path):
    from torchvision.models import squeezenet1_1

    torch.manual_seed(0)
    weights = tmp_path / "squeeze_backbone.pth"
    torch.save(squeezenet1_1(weights=None).state_dict(), weights)
    config = DecoderEvaluateConfig(LPIPS={"net_type": "squeeze", "backbone_weights_path": str(weights)})
    metrics = build_image_metrics(config)
    assert list(metrics.metrics) == ["LPIPS"] and not metrics.skipped
    assert torch.hub.get_dir() == str(empty_hub)  # the temporary hub folder was given back
    real = torch.rand(4, 3, 32, 32)
    metrics.update(real.clone(), real)
    same, errors = metrics.compute()
    metrics.reset()
    metrics.update(torch.rand(4, 3, 32, 32), real)
    different, _ = metrics.compute()
    assert not errors and abs(same["LPIPS"]) < 1e-6 < different["LPIPS"]


def _random_inception_weights(path):
    """A state dict of torch-fidelity's InceptionV3 with random weights (no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    original = fe.load_state_dict_from_url
    fe.load_state_dict_from_url = lambda *a, **k: None
    original_load = fe.FeatureExtractorInceptionV3.load_state_dict
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    try:
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"])
    finally:
        fe.load_state_dict_from_url = original
        fe.FeatureExtractorInceptionV3.load_state_dict = original_load
    torch.save(net.state_dict(), path)


@pytest.mark.filterwarnings("ignore:Metric .* will save all extracted features")
def test_inception_metrics_from_a_local_weights_file(empty_hub, tmp_path):
    weights = tmp_path / "inception.pth"
    _random_inception_weights(weights)
    key = "feature_extractor_weights_path"
    config = DecoderEvaluateConfig(
        FID={"feature": 64, key: str(weights)}, IS={"feature": 64, "splits": 2, key: str(weights)},
        KID={"feature": 64, "subset_size": 3, "subsets": 2, key: str(weights)},
    )
    metrics = build_image_metrics(config)
    assert sorted(metrics.metrics) == ["FID", "IS", "KID"] and not metrics.skipped
    torch.manual_seed(1)
    metrics.update(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 48, 48))
    values, errors = metrics.compute()
    assert not errors
    assert set(values) == {"FID", "IS_mean", "IS_std", "KID_mean", "KID_std"}
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
