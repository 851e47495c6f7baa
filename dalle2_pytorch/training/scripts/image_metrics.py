"""Sample-quality metrics of the decoder script (torchmetrics FID / IS / KID / LPIPS, CLIP score), offline-safe.

The `evaluate` section of a `TrainDecoderConfig` gives each metric's keyword arguments (None skips
it). All four metrics need pretrained feature-extractor weights that torchmetrics downloads at run
time; to run without network the weights can come from local files, through one extra key per
metric that this module removes before calling torchmetrics:

* FID, IS, KID: `feature_extractor_weights_path`, torch-fidelity's InceptionV3 state dict
  (`weights-inception-2015-12-05-6726825d.pth`);
* LPIPS: `backbone_weights_path`, torchvision's state dict of the `net_type` backbone
  (`alexnet-owt-7be5be79.pth`, `vgg16-397923af.pth` or `squeezenet1_1-b8a52dc0.pth`).

`CLIP_SCORE` (`{}`: no options) is the mean CLIP score of the generated images against their
captions, ``100 * max(cos(image_embed, text_embed), 0)`` (Hessel et al. 2021) under the decoder's own
CLIP adapter (`decoder.clip`; see :mod:`.clip_score_metric`): it needs no download, and is skipped
with the reason when the run has no CLIP adapter.

Without the key, the default file is used when it already sits in the torch hub cache
(`$TORCH_HOME/hub/checkpoints/`). Otherwise, when offline (`HF_HUB_OFFLINE=1` or
`DALLE2_PYTORCH_OFFLINE=1`) the metric is skipped and the reason logged; online, torchmetrics may
download it (a failure skips the metric with the reason). Local files are checked with
`safe_torch_load` (no pickled code) before torchmetrics / torchvision open them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from dalle2_pytorch.serialization import safe_torch_load

__all__ = ["CLIP_SCORE", "ImageMetrics", "build_image_metrics", "is_offline"]

CLIP_SCORE = "CLIP_SCORE"

WEIGHTS_KEY = "feature_extractor_weights_path"
LPIPS_WEIGHTS_KEY = "backbone_weights_path"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
_LPIPS_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "DALLE2_PYTORCH_OFFLINE", "TRANSFORMERS_OFFLINE")


def is_offline() -> bool:
    """True when the environment says there is no network (HF_HUB_OFFLINE=1 and friends)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


def _hub_file(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _check_weights_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.{what}: weights file {path} does not exist")
    obj = safe_torch_load(path)  # refuses pickled code before torchmetrics' own unrestricted load
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"evaluate.{what}: {path} is not a state dict of tensors")
    return path


@contextlib.contextmanager
def _hub_dir_with(path: Path, name: str) -> Iterator[None]:
    """Temporarily points the torch hub cache at a folder where `name` is a link to `path`."""
    previous = torch.hub.get_dir()
    with tempfile.TemporaryDirectory(prefix="dalle2_hub_") as tmp:
        checkpoints = Path(tmp) / "checkpoints"
        checkpoints.mkdir()
        os.symlink(path.resolve(), checkpoints / name)
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub.set_dir(previous)


@dataclass
class ImageMetrics:
    """The metrics that could be built, and why the others were skipped."""

    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def to(self, device: torch.device) -> ImageMetrics:
        self.metrics = {k: m.to(device) for k, m in self.metrics.items()}
        return self

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()

    @torch.no_grad()
    def update(self, generated: torch.Tensor, real: torch.Tensor, captions: Sequence[str] | None = None) -> None:
        """Adds a batch: `generated` (b, c, s, s) and `real` (b, c, h, w), both in [0, 1]; the real
        images are resized (antialiased) to the generated size. `captions` (b strings, the real
        images' captions) feed the CLIP score; without them it skips the batch."""
        if real.shape[-2:] != generated.shape[-2:]:
            real = F.interpolate(
                real.float(), size=generated.shape[-2:], mode="bilinear", antialias=True, align_corners=False
            )
        fake, real = generated.float().clamp(0, 1), real.float().clamp(0, 1)
        fake_u8, real_u8 = _to_uint8(fake), _to_uint8(real)
        for name, metric in self.metrics.items():
            if name in ("FID", "KID"):
                metric.update(real_u8, real=True)
                metric.update(fake_u8, real=False)
            elif name == "IS":
                metric.update(fake_u8)
            elif name == "LPIPS":
                metric.update(fake * 2 - 1, real * 2 - 1)
            elif name == CLIP_SCORE and captions is not None:
                metric.update(fake, list(captions))

    def compute(self) -> tuple[dict[str, float], dict[str, str]]:
        """`({metric: value}, {metric: error})`; a metric whose computation fails is reported, not raised."""
        values: dict[str, float] = {}
        errors: dict[str, str] = {}
        for name, metric in self.metrics.items():
            try:
                out = metric.compute()
            except Exception as e:  # e.g. KID subset_size larger than the sample count
                errors[name] = f"{type(e).__name__}: {e}"
                continue
            if isinstance(out, tuple):  # (mean, std) for IS and KID
                values[f"{name}_mean"], values[f"{name}_std"] = float(out[0]), float(out[1])
            else:
                values[name] = float(out)
        return values, errors


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255).round().to(torch.uint8)


def build_image_metrics(evaluate_config: Any, device: torch.device | str = "cpu", clip: Any = None) -> ImageMetrics:
    """Builds the configured metrics (see the module docstring); `clip` is the run's CLIP adapter
    (for the CLIP score; None skips it).

    Raises:
        FileNotFoundError / ValueError: a configured local weights file is missing or not a state dict.
    """
    out = ImageMetrics()
    for name in ("FID", "IS", "KID", "LPIPS"):
        spec = getattr(evaluate_config, name, None)
        if spec is None:
            continue
        kwargs = dict(spec)
        try:
            metric, reason = _BUILDERS[name](kwargs)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as e:  # a download that failed, torch-fidelity missing, ...
            metric, reason = None, f"could not build {name}: {type(e).__name__}: {e}"
        if metric is None:
            out.skipped[name] = reason  # the caller reports it (once, on the main process)
        else:
            out.metrics[name] = metric
    spec = getattr(evaluate_config, CLIP_SCORE, None)
    if spec is not None:
        if dict(spec):
            raise ValueError(f"evaluate.{CLIP_SCORE} takes no options (give {{}}), got {sorted(dict(spec))}")
        if clip is None:
            out.skipped[CLIP_SCORE] = "the CLIP score needs a CLIP adapter: set decoder.clip"
        else:
            from dalle2_pytorch.training.scripts.clip_score_metric import AdapterCLIPScore

            out.metrics[CLIP_SCORE] = AdapterCLIPScore(clip)
    return out.to(torch.device(device))


def _no_weights_reason(name: str, key: str, file: str) -> str:
    return (
        f"no {name} feature-extractor weights available offline: set evaluate.{name}.{key} to a local "
        f"copy of {file}, or put it in {_hub_file(file).parent}"
    )


def _build_fid(kwargs: dict[str, Any]) -> tuple[Any, str]:
    from torchmetrics.image.fid import FrechetInceptionDistance

    path = kwargs.pop(WEIGHTS_KEY, None)
    if path is not None:
        kwargs[WEIGHTS_KEY] = str(_check_weights_file(path, f"FID.{WEIGHTS_KEY}"))
    elif not _hub_file(INCEPTION_FILE).is_file() and is_offline():
        return None, _no_weights_reason("FID", WEIGHTS_KEY, INCEPTION_FILE)
    return FrechetInceptionDistance(**kwargs), ""


def _inception_feature(kwargs: dict[str, Any], name: str, default: Any) -> tuple[bool, str]:
    """Replaces `feature` by a locally loaded InceptionV3 when a weights path is given."""
    path = kwargs.pop(WEIGHTS_KEY, None)
    if path is not None:
        from torchmetrics.image.fid import NoTrainInceptionV3

        checked = _check_weights_file(path, f"{name}.{WEIGHTS_KEY}")
        feature = kwargs.get("feature", default)
        if isinstance(feature, (int, str)):
            kwargs["feature"] = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=[str(feature)], feature_extractor_weights_path=str(checked)
            )
        return True, ""
    if not _hub_file(INCEPTION_FILE).is_file() and is_offline():
        return False, _no_weights_reason(name, WEIGHTS_KEY, INCEPTION_FILE)
    return True, ""


def _build_is(kwargs: dict[str, Any]) -> tuple[Any, str]:
    from torchmetrics.image.inception import InceptionScore

    ok, reason = _inception_feature(kwargs, "IS", "logits_unbiased")
    return (InceptionScore(**kwargs), "") if ok else (None, reason)


def _build_kid(kwargs: dict[str, Any]) -> tuple[Any, str]:
    from torchmetrics.image.kid import KernelInceptionDistance

    ok, reason = _inception_feature(kwargs, "KID", 2048)
    return (KernelInceptionDistance(**kwargs), "") if ok else (None, reason)


def _build_lpips(kwargs: dict[str, Any]) -> tuple[Any, str]:
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    net = kwargs.get("net_type", "alex")
    file = _LPIPS_FILES.get(net)
    if file is None:
        raise ValueError(f"evaluate.LPIPS.net_type must be one of {sorted(_LPIPS_FILES)}, got {net!r}")
    path = kwargs.pop(LPIPS_WEIGHTS_KEY, None)
    if path is not None:
        checked = _check_weights_file(path, f"LPIPS.{LPIPS_WEIGHTS_KEY}")
        with _hub_dir_with(checked, file):
            return LearnedPerceptualImagePatchSimilarity(**kwargs), ""
    if not _hub_file(file).is_file() and is_offline():
        return None, _no_weights_reason("LPIPS", LPIPS_WEIGHTS_KEY, file)
    return LearnedPerceptualImagePatchSimilarity(**kwargs), ""


_BUILDERS = {"FID": _build_fid, "IS": _build_is, "KID": _build_kid, "LPIPS": _build_lpips}
