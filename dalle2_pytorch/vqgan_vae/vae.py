"""`VQGanVAE`: the vector-quantised autoencoder whose latent space a decoder stage can diffuse in
(latent diffusion, Rombach et al. 2022, §3; VQ-regularised autoencoder: VQGAN, Esser et al. 2021).

An encoder (resnet or ViT) maps an image in [0, 1] to a continuous map; `decode` quantises the map
against a learned codebook (van den Oord et al. 2017, "VQ-VAE", §3.1; EMA codebook updates,
optional k-means initialisation and cosine-similarity lookup as in ViT-VQGAN §3.2) and decodes it.
As in the reference, `encode` returns the *pre-quantisation* map, so a latent diffusion stage
diffuses continuous features and quantisation happens at decode time.

Vector quantisation comes from `vector-quantize-pytorch` (the `[vqgan]` extra); the constructor
arguments, defaults and state-dict keys are the reference's (`dalle2_pytorch.vqgan_vae.VQGanVAE`
of dalle2-pytorch 1.15.6), so its files load strictly.

Differences from the reference (none changes the weights layout):

* the perceptual network (VGG16) is not part of the module tree: it is never in `state_dict`,
  never optimised, never averaged by an EMA, always in eval mode (the reference trained it and ran
  its dropout); it is moved by `.to()` with the rest; inputs are ImageNet-normalised;
* without VGG16 weights (no file, no network) the perceptual term is disabled with a warning and the
  adaptive GAN weight is computed from the reconstruction loss instead;
* `forward(..., add_gradient_penalty=False)` works (the reference failed); the caller's image
  tensor is never modified in place (the reference set `requires_grad` on it);
* unprefixed encoder/decoder options (e.g. `layer_mults=` as in the reference README) are ignored
  *with a warning* naming the `encdec_` spelling (the reference ignored them silently); anything
  else unknown is a TypeError.
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_pytorch.vqgan_vae.discriminator import Discriminator, discriminator_dims
from dalle2_pytorch.vqgan_vae.files import read_vqgan_vae_weights
from dalle2_pytorch.vqgan_vae.losses import (
    adaptive_weight,
    bce_discr_loss,
    bce_gen_loss,
    gradient_penalty,
    hinge_discr_loss,
    hinge_gen_loss,
    load_vgg16,
    vgg_features,
)
from dalle2_pytorch.vqgan_vae.resnet import ResnetEncDec
from dalle2_pytorch.vqgan_vae.vit import ViTEncDec

__all__ = ["VQGanVAE", "VAE_TYPES"]

VAE_TYPES = {"resnet": ResnetEncDec, "vit": ViTEncDec}


def _vector_quantize_class():
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "VQGanVAE needs the vector-quantize-pytorch package: pip install 'dalle2-pytorch[vqgan]' "
            "(or pip install vector-quantize-pytorch)"
        ) from e
    return VectorQuantize


def _split_prefixed(kwargs: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: kwargs.pop(k) for k in [k for k in kwargs if k.startswith(prefix)]}


def _encdec_option_names(klass: type) -> set[str]:
    return {n for n in inspect.signature(klass.__init__).parameters if n not in ("self", "dim", "channels", "layers")}


class VQGanVAE(nn.Module):
    """VQ-regularised autoencoder (reference constructor; see the module docstring).

    Args:
        dim: encoder width (resnet: first stage; ViT: token width).
        image_size: side of the (square) images.
        channels: image channels.
        layers: resnet stride-2 stages, or ViT transformer layers.
        l2_recon_loss: MSE reconstruction loss instead of L1.
        use_hinge_loss: hinge GAN losses instead of the logistic ones.
        vgg: a module to use as the perceptual network (its features are compared with MSE).
        vq_codebook_dim, vq_codebook_size, vq_decay, vq_commitment_weight, vq_kmeans_init,
            vq_use_cosine_sim: codebook options; any other `vq_*` keyword goes to
            `vector_quantize_pytorch.VectorQuantize`.
        use_vgg_and_gan: train with the perceptual loss and a discriminator.
        vae_type: 'resnet' or 'vit'.
        discr_layers: stride-2 stages of the discriminator.
        vgg_weights: (extension) local VGG16 weights file for the perceptual loss when `vgg` is not
            given; without it, torch's hub cache or a download is tried (see `load_vgg16`).
        **kwargs: `encdec_*` options of the encoder/decoder (resnet: layer_mults,
            num_resnet_blocks, resnet_groups, first_conv_kernel_size, use_attn, attn_dim_head,
            attn_heads, attn_dropout; ViT: patch_size, dim_head, heads, ff_mult).

    Raises:
        ValueError: unknown `vae_type`.
        TypeError: unknown keyword arguments.
    """

    def __init__(
        self,
        *,
        dim: int,
        image_size: int,
        channels: int = 3,
        layers: int = 4,
        l2_recon_loss: bool = False,
        use_hinge_loss: bool = True,
        vgg: nn.Module | None = None,
        vq_codebook_dim: int = 256,
        vq_codebook_size: int = 512,
        vq_decay: float = 0.8,
        vq_commitment_weight: float = 1.0,
        vq_kmeans_init: bool = True,
        vq_use_cosine_sim: bool = True,
        use_vgg_and_gan: bool = True,
        vae_type: str = "resnet",
        discr_layers: int = 4,
        vgg_weights: str | os.PathLike | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        if vae_type not in VAE_TYPES:
            raise ValueError(f"vae_type must be one of {sorted(VAE_TYPES)}, got {vae_type!r}")
        kwargs = dict(kwargs)
        vq_kwargs = _split_prefixed(kwargs, "vq_")
        encdec_kwargs = _split_prefixed(kwargs, "encdec_")
        enc_dec_class = VAE_TYPES[vae_type]
        self._check_leftover_kwargs(kwargs, enc_dec_class)

        # constructor arguments (the perceptual network excluded): what `from_checkpoint` rebuilds from
        self.config: dict[str, Any] = dict(
            dim=dim, image_size=image_size, channels=channels, layers=layers, l2_recon_loss=l2_recon_loss,
            use_hinge_loss=use_hinge_loss, vq_codebook_dim=vq_codebook_dim, vq_codebook_size=vq_codebook_size,
            vq_decay=vq_decay, vq_commitment_weight=vq_commitment_weight, vq_kmeans_init=vq_kmeans_init,
            vq_use_cosine_sim=vq_use_cosine_sim, use_vgg_and_gan=use_vgg_and_gan, vae_type=vae_type,
            discr_layers=discr_layers, **{f"vq_{k}": v for k, v in vq_kwargs.items()},
            **{f"encdec_{k}": v for k, v in encdec_kwargs.items()},
        )
        self.image_size = image_size
        self.channels = channels
        self.codebook_size = vq_codebook_size
        self.vae_type = vae_type
        self.enc_dec = enc_dec_class(dim=dim, channels=channels, layers=layers, **encdec_kwargs)
        self.vq = _vector_quantize_class()(
            dim=self.enc_dec.encoded_dim,
            codebook_dim=vq_codebook_dim,
            codebook_size=vq_codebook_size,
            decay=vq_decay,
            commitment_weight=vq_commitment_weight,
            accept_image_fmap=True,
            kmeans_init=vq_kmeans_init,
            use_cosine_sim=vq_use_cosine_sim,
            **vq_kwargs,
        )
        self.recon_loss_fn = F.mse_loss if l2_recon_loss else F.l1_loss
        self.use_vgg_and_gan = use_vgg_and_gan
        self._vgg_holder: list[nn.Module | None] = [None]  # outside the module tree (see module docstring)
        self.discr: Discriminator | None = None
        if not use_vgg_and_gan:
            return
        self.vgg = vgg if vgg is not None else load_vgg16(vgg_weights)
        self.discr = Discriminator(dims=discriminator_dims(dim, discr_layers), channels=channels)
        self.discr_loss = hinge_discr_loss if use_hinge_loss else bce_discr_loss
        self.gen_loss = hinge_gen_loss if use_hinge_loss else bce_gen_loss

    @staticmethod
    def _check_leftover_kwargs(kwargs: dict[str, Any], enc_dec_class: type) -> None:
        known = _encdec_option_names(enc_dec_class)
        ignored = sorted(k for k in kwargs if k in known)
        unknown = sorted(k for k in kwargs if k not in known)
        if unknown:
            raise TypeError(f"VQGanVAE got unexpected keyword argument(s): {', '.join(unknown)}")
        if ignored:
            warnings.warn(
                f"VQGanVAE ignores {', '.join(ignored)} (as the reference did): encoder/decoder options need the "
                f"'encdec_' prefix, e.g. {', '.join('encdec_' + k for k in ignored)}",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ the perceptual network
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "vgg":  # through the property, not nn.Module's submodule registration
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def vgg(self) -> nn.Module | None:
        """The perceptual network (not a submodule: no state-dict keys, no parameters, eval mode)."""
        return self._vgg_holder[0]

    @vgg.setter
    def vgg(self, module: nn.Module | None) -> None:
        if module is not None:
            module.requires_grad_(False)
            module.eval()
        self._vgg_holder = [module]

    @vgg.deleter
    def vgg(self) -> None:
        self._vgg_holder = [None]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.vgg is not None:
            self.vgg._apply(fn, recurse)
        return self

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        config: dict[str, Any] | None = None,
        *,
        map_location: Any = "cpu",
        strict: bool = True,
        prefer_ema: bool = True,
    ) -> VQGanVAE:
        """Builds a VAE from a file and loads its weights, in eval mode, without perceptual network.

        Args:
            path: an export / trainer checkpoint folder, or a reference `vae.N.pt` / `vae.N.ema.pt`
                (see `vqgan_vae/files.py`).
            config: the constructor keywords; required for files that carry none (the reference's).
                Discriminator weights in the file are dropped when the config builds none
                (`use_vgg_and_gan=False`), e.g. to use a training file for latent diffusion only.
            strict: refuse missing / unexpected keys (mis-shaped keys are always refused).

        Raises:
            ValueError: no config available, or weights that do not fit it.
        """
        state, file_config = read_vqgan_vae_weights(path, prefer_ema=prefer_ema)
        config = dict(config if config is not None else (file_config or {}))
        if not config:
            raise ValueError(f"{path} carries no VQGanVAE config; pass config=<the VQGanVAE constructor keywords>")
        config.pop("vgg", None)
        if config.get("use_vgg_and_gan", True):
            config["use_vgg_and_gan"] = any(k.startswith("discr.") for k in state)
        if config["use_vgg_and_gan"]:
            config["vgg"] = nn.Identity()  # loading never needs the perceptual network
        else:
            state = {k: v for k, v in state.items() if not k.startswith("discr.")}
        vae = cls(**config)
        own = vae.state_dict()
        mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if mismatched or (strict and (missing or unexpected)):
            raise ValueError(
                f"weights in {path} do not fit this VQGanVAE config: missing {missing[:6]}, unexpected "
                f"{unexpected[:6]}, shape mismatches "
                f"{[f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in mismatched[:4]]}"
            )
        vae.load_state_dict(state, strict=strict)
        vae.vgg = None
        return vae.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()

    # ------------------------------------------------------------------ reference API
    @property
    def encoded_dim(self) -> int:
        """Channels of the latent map."""
        return self.enc_dec.encoded_dim

    def get_encoded_fmap_size(self, image_size: int) -> int:
        """Side of the latent map for images of side `image_size`."""
        return self.enc_dec.get_encoded_fmap_size(image_size)

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.codebook

    def copy_for_eval(self) -> VQGanVAE:
        """A deep copy without discriminator and perceptual network, in eval mode, on the same device."""
        device = next(self.parameters()).device
        vgg, discr = self.vgg, self.discr
        self.vgg, self.discr = None, None  # not copied
        try:
            out = copy.deepcopy(self)
        finally:
            self.vgg, self.discr = vgg, discr
        out.use_vgg_and_gan = False
        out.config = {**self.config, "use_vgg_and_gan": False}
        return out.eval().to(device)

    def encode(self, fmap: torch.Tensor) -> torch.Tensor:
        """(b, channels, s, s) images in [0, 1] → (b, encoded_dim, f, f) continuous (pre-quantisation) map."""
        return self.enc_dec.encode(fmap)

    def decode(self, fmap: torch.Tensor, return_indices_and_loss: bool = False):
        """Quantises a (b, encoded_dim, f, f) map and decodes it to (b, channels, s, s).

        With `return_indices_and_loss`: (images, code indices (b, f, f) long, commitment loss).
        """
        quantized, indices, commit_loss = self.vq(fmap)
        images = self.enc_dec.decode(quantized)
        if not return_indices_and_loss:
            return images
        return images, indices, commit_loss

    def _check_image(self, img: torch.Tensor) -> None:
        if img.ndim != 4:
            raise ValueError(f"VQGanVAE expects (batch, channels, height, width) images, got shape {tuple(img.shape)}")
        _, c, h, w = img.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"VQGanVAE was built for {self.image_size}x{self.image_size} images, got {h}x{w}")
        if c != self.channels:
            raise ValueError(f"VQGanVAE was built for {self.channels} channels, got {c}")

    def forward(
        self,
        img: torch.Tensor,
        return_loss: bool = False,
        return_discr_loss: bool = False,
        return_recons: bool = False,
        add_gradient_penalty: bool = True,
    ):
        """Reconstruction, the autoencoder loss, or the discriminator loss.

        Args:
            img: (b, channels, image_size, image_size) in [0, 1].
            return_loss: return the autoencoder loss: reconstruction + perceptual + commitment +
                adaptive-weighted GAN generator loss.
            return_discr_loss: return the discriminator loss (+ gradient penalty).
            return_recons: also return the reconstruction, as `(loss, recons)`.
            add_gradient_penalty: add the gradient penalty to the discriminator loss.

        Returns:
            The reconstruction (b, channels, s, s), a scalar loss, or `(loss, recons)`.

        Without `use_vgg_and_gan` the autoencoder loss is the reconstruction loss alone (as in the
        reference, which also leaves the commitment loss out in that case).
        """
        self._check_image(img)
        fmap, _, commit_loss = self.decode(self.encode(img), return_indices_and_loss=True)
        if not return_loss and not return_discr_loss:
            return fmap
        if return_loss and return_discr_loss:
            raise ValueError("ask for either the autoencoder loss or the discriminator loss, not both")

        if return_discr_loss:
            if self.discr is None:
                raise ValueError("this VQGanVAE has no discriminator (use_vgg_and_gan=False)")
            fmap = fmap.detach()
            real = img.detach().requires_grad_(add_gradient_penalty)
            fake_logits, real_logits = self.discr(fmap), self.discr(real)
            loss = self.discr_loss(fake_logits, real_logits)
            if add_gradient_penalty:
                loss = loss + gradient_penalty(real, real_logits)
            return (loss, fmap) if return_recons else loss

        recon_loss = self.recon_loss_fn(fmap, img)
        if not self.use_vgg_and_gan:
            return (recon_loss, fmap) if return_recons else recon_loss
        if self.discr is None:
            raise ValueError("this VQGanVAE has no discriminator (it is an eval copy); build one for training")

        gen_loss = self.gen_loss(self.discr(fmap))
        last_layer = self.enc_dec.last_dec_layer
        if self.vgg is not None:
            perceptual_loss = F.mse_loss(vgg_features(self.vgg, fmap), vgg_features(self.vgg, img))
            weight_from = perceptual_loss
        else:
            perceptual_loss = fmap.new_zeros(())
            weight_from = recon_loss
        weight = adaptive_weight(weight_from, gen_loss, last_layer) if torch.is_grad_enabled() else fmap.new_ones(())
        loss = recon_loss + perceptual_loss + commit_loss + weight * gen_loss
        return (loss, fmap) if return_recons else loss
