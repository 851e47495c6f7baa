"""Training losses of the VQGAN-VAE (Esser et al. 2021, "Taming Transformers", §3.2).

* Adversarial: hinge (Lim & Ye 2017) or non-saturating logistic (Goodfellow et al. 2014) losses on
  patch logits, plus a gradient penalty on real images (Gulrajani et al. 2017, eq. 3, applied
  one-sided to reals as in the reference: λ·(‖∇_x D(x)‖₂ − 1)², λ = 10).
* Adaptive GAN weight (Taming Transformers eq. 7): λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ),
  gradients taken at the decoder's last layer G_L, clamped at 1e4.
* Perceptual: MSE between VGG16 features of the image and of its reconstruction (Johnson et al.
  2016). The VGG16 weights come from a local file, torch's hub cache, or a download; with none
  available the perceptual term is disabled with a warning (:func:`load_vgg16`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "adaptive_weight",
    "bce_discr_loss",
    "bce_gen_loss",
    "grad_layer_wrt_loss",
    "gradient_penalty",
    "hinge_discr_loss",
    "hinge_gen_loss",
    "load_vgg16",
    "vgg_features",
]

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def hinge_discr_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 + D(fake)) + relu(1 − D(real)))."""
    return (F.relu(1 + fake) + F.relu(1 - real)).mean()


def hinge_gen_loss(fake: torch.Tensor) -> torch.Tensor:
    """−mean(D(fake))."""
    return -fake.mean()


def bce_discr_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """mean(−log(1 − σ(D(fake))) − log σ(D(real))), computed with softplus for stability."""
    return (F.softplus(fake) + F.softplus(-real)).mean()


def bce_gen_loss(fake: torch.Tensor) -> torch.Tensor:
    """mean(−log σ(D(fake)))."""
    return F.softplus(-fake).mean()


def gradient_penalty(images: torch.Tensor, output: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """weight · mean_b (‖∂ sum(output) / ∂ images_b‖₂ − 1)²; `images` must require grad."""
    (grads,) = torch.autograd.grad(
        outputs=output, inputs=images, grad_outputs=torch.ones_like(output), create_graph=True, retain_graph=True
    )
    return weight * ((grads.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def grad_layer_wrt_loss(loss: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
    """∂loss/∂layer, detached (the graph is kept for the backward pass that follows)."""
    (grad,) = torch.autograd.grad(outputs=loss, inputs=layer, grad_outputs=torch.ones_like(loss), retain_graph=True)
    return grad.detach()


def adaptive_weight(rec_loss: torch.Tensor, gen_loss: torch.Tensor, last_layer: torch.Tensor,
                    eps: float = 1e-8, max_weight: float = 1e4) -> torch.Tensor:
    """‖∇ rec_loss‖ / (‖∇ gen_loss‖ + eps) at `last_layer`, clamped to [0, max_weight] (no gradient)."""
    rec_norm = grad_layer_wrt_loss(rec_loss, last_layer).norm(p=2)
    gen_norm = grad_layer_wrt_loss(gen_loss, last_layer).norm(p=2)
    return (rec_norm / (gen_norm + eps)).clamp(max=max_weight)


def _offline() -> bool:
    """The environment says there is no network (the variables the training scripts honour)."""
    names = ("HF_HUB_OFFLINE", "DALLE2_PYTORCH_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on") for n in names)


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    from dalle2_pytorch.serialization import safe_torch_load

    state = safe_torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


def load_vgg16(weights: str | os.PathLike | None = None, *, download: bool = True) -> nn.Module | None:
    """ImageNet VGG16 (torchvision layout) for the perceptual loss, frozen and in eval mode.

    Its classifier keeps the layers up to the second ReLU, so it returns (b, 4096) features.

    Args:
        weights: a local state-dict file (torchvision's `vgg16-397923af.pth` or a `.safetensors`
            copy). None: torch's hub cache, else a download (skipped when `HF_HUB_OFFLINE`,
            `DALLE2_PYTORCH_OFFLINE` or `TRANSFORMERS_OFFLINE` is set).
        download: allow the download.

    Returns:
        The network, or None (with a warning saying why) when no weights are available.

    Raises:
        FileNotFoundError: `weights` names a missing file.
        ValueError: the file does not hold VGG16 weights.
    """
    import torchvision

    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"VGG16 weights file not found: {path}")
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_URL).name
        if not path.is_file():
            reason = None
            if not download:
                reason = "downloading is disabled"
            elif _offline():
                reason = "the environment is marked offline (HF_HUB_OFFLINE or similar)"
            else:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    torch.hub.download_url_to_file(VGG16_URL, str(path), progress=False)
                except Exception as e:  # no network, proxy, disk: all mean "no weights"
                    reason = f"the download failed ({type(e).__name__}: {e})"
            if reason is not None:
                warnings.warn(
                    f"VGG16 weights are not available ({reason}); the VQGAN-VAE perceptual loss is disabled. "
                    f"Pass vgg_weights='<path to vgg16-397923af.pth>' (or vgg=<module>) to enable it.",
                    stacklevel=3,
                )
                return None
    with torch.device("meta"):  # no random initialisation of 138M parameters
        vgg = torchvision.models.vgg16(weights=None)
    state = _read_state_dict(path)
    expected = {k: tuple(v.shape) for k, v in vgg.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
    if got != expected:
        diff = sorted(set(expected) ^ set(got)) or sorted(k for k in expected if expected[k] != got[k])
        raise ValueError(f"{path} does not hold torchvision VGG16 weights (differs at {diff[:4]})")
    vgg.load_state_dict(state, strict=True, assign=True)
    vgg.classifier = nn.Sequential(*list(vgg.classifier)[:-2])
    vgg.requires_grad_(False)
    return vgg.eval()


def vgg_features(vgg: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """VGG features of (b, c, h, w) images in [0, 1] (1 channel is repeated to 3; ImageNet normalised)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    mean = images.new_tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(_IMAGENET_STD).view(1, 3, 1, 1)
    return vgg((images - mean) / std)
