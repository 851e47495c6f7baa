"""The reference README's usage, call for call, at tiny sizes (random weights, no downloads).

Each test mirrors one usage block of the dalle2-pytorch 1.15.6 README with the same classes,
keywords and call sequence; only the sizes are shrunk (and `.cuda()` dropped) so it runs on a CPU in
seconds. The OpenAI-CLIP block loads a tiny locally traced TorchScript file by path, as the
reference's `OpenAIClipAdapter("<path>")` did. The latent-diffusion block is covered up to the
models it builds (`VQGanVAE` from the package root, `Unet(sparse_attn_window=...)`); `Decoder(vae=...)`
is the next step of issue 15.
"""

import warnings

import pytest
import torch

from dalle2_pytorch import (
    CLIP,
    DALLE2,
    Decoder,
    DecoderTrainer,
    DiffusionPrior,
    DiffusionPriorNetwork,
    DiffusionPriorTrainer,
    OpenAIClipAdapter,
    Unet,
    VQGanVAE,
)
from dalle2_pytorch.config import LegacyConfigKeyWarning

TEXT_LEN = 16
CLIP_KWARGS = dict(dim_text=32, dim_image=32, dim_latent=32, num_text_tokens=49408, text_enc_depth=1,
                   text_seq_len=TEXT_LEN, text_heads=2, visual_enc_depth=1, visual_image_size=32,
                   visual_patch_size=8, visual_heads=2)
UNET = dict(dim=16, image_embed_dim=32, cond_dim=16, channels=3, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_clip():
    return CLIP(**CLIP_KWARGS)


def mock_data(n=2, size=32):
    return torch.randint(0, 49408, (n, TEXT_LEN)), torch.randn(n, 3, size, size)


def test_train_clip_block():
    clip = CLIP(**CLIP_KWARGS, use_all_token_embeds=True, decoupled_contrastive_learning=True,
                extra_latent_projection=True, use_visual_ssl=True, visual_ssl_type="simclr", use_mlm=False,
                text_ssl_loss_weight=0.05, image_ssl_loss_weight=0.05)
    text, images = mock_data()
    loss = clip(text, images, return_loss=True)
    loss.backward()
    assert torch.isfinite(loss)


def test_decoder_block():
    clip = make_clip()
    unet = Unet(**UNET)
    decoder = Decoder(unet=unet, clip=clip, timesteps=10, image_cond_drop_prob=0.1, text_cond_drop_prob=0.5)
    _, images = mock_data()
    loss = decoder(images)
    loss.backward()
    assert torch.isfinite(loss)


def test_prior_block_and_precomputed_embeddings():
    clip = make_clip()
    prior_network = DiffusionPriorNetwork(dim=32, depth=1, dim_head=16, heads=2)
    diffusion_prior = DiffusionPrior(net=prior_network, clip=clip, timesteps=10, cond_drop_prob=0.2)
    text, images = mock_data()
    loss = diffusion_prior(text, images)
    loss.backward()
    # "Training on Preprocessed CLIP Embeddings"
    diffusion_prior = DiffusionPrior(net=prior_network, clip=clip, timesteps=10, cond_drop_prob=0.2,
                                     condition_on_text_encodings=False)
    clip_image_embeds = diffusion_prior.clip.embed_image(images).image_embed
    clip_text_embeds = diffusion_prior.clip.embed_text(text).text_embed
    loss = diffusion_prior(text_embed=clip_text_embeds, image_embed=clip_image_embeds)
    loss.backward()
    # CLIP-less
    diffusion_prior = DiffusionPrior(net=prior_network, image_embed_dim=32, timesteps=10, cond_drop_prob=0.2,
                                     condition_on_text_encodings=False)
    loss = diffusion_prior(text_embed=torch.randn(2, 32), image_embed=torch.randn(2, 32))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_cascade_and_dalle2_blocks():
    clip = make_clip()
    text, images = mock_data(size=32)
    prior = DiffusionPrior(net=DiffusionPriorNetwork(dim=32, depth=1, dim_head=16, heads=2), clip=clip,
                           timesteps=4, cond_drop_prob=0.2)
    unet1 = Unet(**UNET)
    unet2 = Unet(**{**UNET, "dim_mults": (1, 2, 4)})
    decoder = Decoder(clip=clip, unet=(unet1, unet2), image_sizes=(16, 32), timesteps=4, image_cond_drop_prob=0.1,
                      text_cond_drop_prob=0.5)
    for unet_number in (1, 2):
        loss = decoder(images, unet_number=unet_number)
        loss.backward()
    dalle2 = DALLE2(prior=prior, decoder=decoder)
    out = dalle2(["cute puppy chasing after a squirrel"], cond_scale=2.0)
    assert out.shape == (1, 3, 32, 32)


@pytest.mark.slow
def test_openai_clip_block_with_a_clip_file(tmp_path):
    tiny = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=8, head_width=64),
                text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1))
    source = OpenAIClipAdapter("ViT-B/32", pretrained=False, model_kwargs=tiny)
    traced = torch.jit.trace(source.clip, (torch.rand(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)),
                             check_trace=False, strict=False)
    torch.jit.save(traced, str(tmp_path / "ViT-tiny.pt"))

    clip = OpenAIClipAdapter(str(tmp_path / "ViT-tiny.pt"))  # a path given as the model name
    text, images = torch.randint(0, 49408, (2, 77)), torch.randn(2, 3, 32, 32)
    prior_network = DiffusionPriorNetwork(dim=32, depth=1, dim_head=16, heads=2)
    diffusion_prior = DiffusionPrior(net=prior_network, clip=clip, timesteps=4, cond_drop_prob=0.2,
                                     condition_on_text_encodings=False)
    loss = diffusion_prior(text, images)
    loss.backward()
    unet1 = Unet(**UNET)
    unet2 = Unet(**{**UNET, "dim": 8, "dim_mults": (1, 2, 4)})
    decoder = Decoder(unet=(unet1, unet2), image_sizes=(16, 32), clip=clip, timesteps=4, image_cond_drop_prob=0.1,
                      text_cond_drop_prob=0.5)
    for unet_number in (1, 2):
        loss = decoder(images, unet_number=unet_number)
        loss.backward()
    dalle2 = DALLE2(prior=diffusion_prior, decoder=decoder)
    assert dalle2(["a butterfly trying to escape a tornado"], cond_scale=2.0).shape == (1, 3, 32, 32)


@pytest.mark.slow
def test_decoder_trainer_block():
    clip = make_clip()
    text, images = mock_data(n=8)
    unet1 = Unet(**UNET, text_embed_dim=32)
    unet2 = Unet(**{**UNET, "dim_mults": (1, 2, 4)}, text_embed_dim=32, cond_on_text_encodings=True)
    decoder = Decoder(unet=(unet1, unet2), image_sizes=(16, 32), clip=clip, timesteps=4)
    decoder_trainer = DecoderTrainer(decoder, lr=3e-4, wd=1e-2, ema_beta=0.99, ema_update_after_step=1000,
                                     ema_update_every=10)
    for unet_number in (1, 2):
        loss = decoder_trainer(images, text=text, unet_number=unet_number, max_batch_size=4)
        decoder_trainer.update(unet_number)
    mock_image_embed = torch.randn(2, 32)
    assert decoder_trainer.sample(image_embed=mock_image_embed, text=text[:2]).shape == (2, 3, 32, 32)


def test_prior_trainer_block():
    clip = make_clip()
    text, images = mock_data(n=8)
    diffusion_prior = DiffusionPrior(net=DiffusionPriorNetwork(dim=32, depth=1, dim_head=16, heads=2), clip=clip,
                                     timesteps=4, cond_drop_prob=0.2)
    diffusion_prior_trainer = DiffusionPriorTrainer(diffusion_prior, lr=3e-4, wd=1e-2, ema_beta=0.99,
                                                    ema_update_after_step=1000, ema_update_every=10)
    loss = diffusion_prior_trainer(text, images, max_batch_size=4)
    diffusion_prior_trainer.update()
    image_embeds = diffusion_prior_trainer.sample(text, max_batch_size=4)
    assert image_embeds.shape == (8, 32) and loss == loss


@pytest.mark.slow
def test_unconditional_block():
    unet1 = Unet(dim=16, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8)
    unet2 = Unet(dim=8, dim_mults=(1, 2, 4), attn_heads=2, attn_dim_head=8)
    decoder = Decoder(unet=(unet1, unet2), image_sizes=(16, 32), timesteps=4, unconditional=True)
    decoder_trainer = DecoderTrainer(decoder)
    images = torch.randn(1, 3, 32, 32)
    for i in (1, 2):
        loss = decoder_trainer(images, unet_number=i)
        decoder_trainer.update(unet_number=i)
    assert decoder_trainer.sample(batch_size=3, max_batch_size=2).shape == (3, 3, 32, 32)


def test_latent_block_models():
    """The latent block's constructors: VQGanVAE from the package root (its unprefixed `layer_mults`
    is ignored with a warning, as the reference ignored it) and the README's `sparse_attn_window`."""
    with pytest.warns(UserWarning, match="encdec_layer_mults"):
        vae1 = VQGanVAE(dim=16, image_size=32, layers=3, layer_mults=(1, 2, 4), use_vgg_and_gan=False)
    assert vae1.get_encoded_fmap_size(32) == 4 and vae1.encoded_dim == 64  # 2**(layers-1)·dim, the default
    with pytest.warns(LegacyConfigKeyWarning, match="sparse_attn_window"):
        unet1 = Unet(**UNET, sparse_attn=True, sparse_attn_window=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unet3 = Unet(**UNET, cond_on_image_embeds=True, cond_on_text_encodings=False, attend_at_middle=False)
    assert "sparse_attn_window" not in unet1._config and unet3 is not None
