"""The issue-11 fast paths on a CUDA GPU (skipped without one; `scripts/gpu_check.sh` runs them on the
lent H200). CPU equivalents: tests/training/test_fast_paths.py.

What only a GPU shows: CUDA autocast's float32 policy for norms (which our norms bypass), the
channels-last group norm kernel, fused AdamW on device, Inductor/Triton code generation, and the
training script with `train.compile` and bf16 on CUDA.
"""

import math

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")

DIM = 16
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_float32():
    """TF32 off: float32 comparisons must not see TF32 rounding (5e-4 relative, anchors §1)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _unet(**kw):
    from dalle2_pytorch.decoder.unet import Unet

    torch.manual_seed(0)
    unet = Unet(dim=16, dim_mults=(1, 2), cond_dim=16, image_embed_dim=DIM, cond_on_image_embeds=True,
                text_embed_dim=DIM, cond_on_text_encodings=True, max_text_len=5, attn_heads=2, attn_dim_head=8,
                num_resnet_blocks=1, self_attn=(False, True), **kw)
    with torch.no_grad():
        unet.to_out.weight.normal_(0, 0.1)
    return unet.to(CUDA)


def _inputs(b=2, size=16):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    kw = dict(image_embed=torch.randn(b, DIM, generator=g), text_encodings=torch.randn(b, 5, DIM, generator=g))
    return x.to(CUDA), t.to(CUDA), {k: v.to(CUDA) for k, v in kw.items()}


def _out_and_grads(module, call):
    module.zero_grad(set_to_none=True)
    out = call()
    out.float().square().mean().backward()
    return out.detach().float(), {n: p.grad.float().clone() for n, p in module.named_parameters() if p.grad is not None}


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _assert_same(a, b, tol):
    (oa, ga), (ob, gb) = a, b
    assert _rel(oa, ob) < tol, _rel(oa, ob)
    assert ga.keys() == gb.keys()
    worst = max(_rel(ga[k], gb[k]) for k in ga)
    assert worst < tol, worst


def test_norms_stay_in_bf16_under_cuda_autocast_and_upcast_on_request():
    from dalle2_pytorch.layers.normalization import GroupNorm, LayerNorm

    ln, gn = LayerNorm(32).to(CUDA), GroupNorm(4, 32).to(CUDA)
    x = torch.randn(4, 10, 32, device=CUDA)
    fmap = torch.randn(2, 32, 8, 8, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = torch.nn.Linear(32, 32).to(CUDA)(x)
        f = torch.nn.Conv2d(32, 32, 1).to(CUDA)(fmap)
        assert F.layer_norm(h, (32,)).dtype == torch.float32  # PyTorch's autocast policy
        assert ln(h).dtype == torch.bfloat16 and gn(f).dtype == torch.bfloat16
        native_ln, native_gn = ln(h).float(), gn(f).float()
        ln.upcast_under_autocast = gn.upcast_under_autocast = True
        assert ln(h).dtype == torch.float32 and gn(f).dtype == torch.float32
        assert _rel(native_ln, ln(h)) < 1e-2 and _rel(native_gn, gn(f)) < 1e-2


def test_channels_last_group_norm_keeps_nhwc_on_cuda_and_matches():
    from dalle2_pytorch.layers.normalization import GroupNorm

    torch.manual_seed(0)
    gn = GroupNorm(8, 64).to(CUDA)
    with torch.no_grad():
        gn.weight.normal_(), gn.bias.normal_()
    x = (torch.randn(4, 64, 16, 16, device=CUDA) * 3 + 5).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = gn(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    ref_x = x.detach().contiguous().requires_grad_(True)
    ref = F.group_norm(ref_x, 8, gn.weight, gn.bias, gn.eps)
    assert _rel(out, ref) < 1e-5
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(out, x, g)
    (gref,) = torch.autograd.grad(ref, ref_x, g)
    assert _rel(gx, gref) < 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = gn(x.bfloat16())
    assert low.dtype == torch.bfloat16 and low.is_contiguous(memory_format=torch.channels_last)
    assert _rel(low.float(), ref) < 1e-2


def test_unet_fast_paths_in_float32_and_bf16_on_cuda():
    from dalle2_pytorch.layers.normalization import set_norm_upcast

    unet = _unet()
    x, t, kw = _inputs()
    base = _out_and_grads(unet, lambda: unet(x, t, **kw))
    unet.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    _assert_same(_out_and_grads(unet, lambda: unet(x_cl, t, **kw)), base, 1e-4)

    def bf16():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return unet(x_cl, t, **kw)

    native = _out_and_grads(unet, bf16)
    set_norm_upcast(unet, True)
    upcast = _out_and_grads(unet, bf16)
    assert math.isfinite(native[0].sum().item())
    # both bf16 runs are bf16 roundings of the float32 function
    assert _rel(native[0], base[0]) < 5e-2 and _rel(upcast[0], base[0]) < 5e-2


def test_fused_adamw_by_default_on_cuda_and_a_cpu_checkpoint_resumes_in_it():
    from dalle2_pytorch.training.optim import get_optimizer, load_optimizer_state

    torch.manual_seed(0)
    cpu_model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    cpu_opt = get_optimizer(cpu_model, lr=1e-2, fused=False)
    cpu_model(torch.randn(4, 8)).square().mean().backward()
    cpu_opt.step()
    gpu_model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)).to(CUDA)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_opt = get_optimizer(gpu_model, lr=1e-2)
    assert all(g.get("fused") for g in gpu_opt.param_groups)
    load_optimizer_state(gpu_opt, cpu_opt.state_dict())
    assert all(g.get("fused") for g in gpu_opt.param_groups)
    assert all(s["step"].device.type == "cuda" for s in gpu_opt.state.values())
    gpu_model(torch.randn(4, 8, device=CUDA)).square().mean().backward()
    gpu_opt.step()
    assert all(torch.isfinite(p).all() for p in gpu_model.parameters())


def test_inductor_compiled_blocks_match_eager_on_cuda():
    from dalle2_pytorch.training.performance import compile_network

    torch._dynamo.reset()
    unet = _unet()
    x, t, kw = _inputs()
    base = _out_and_grads(unet, lambda: unet(x, t, **kw))
    compile_network(unet, "blocks")
    _assert_same(_out_and_grads(unet, lambda: unet(x, t, **kw)), base, 1e-4)


def test_decoder_trainer_on_cuda_defaults_to_bf16_and_trains_compiled_channels_last():
    from dalle2_pytorch.decoder.decoder import Decoder
    from dalle2_pytorch.training import DecoderTrainer

    torch._dynamo.reset()
    decoder = Decoder(_unet().cpu(), image_sizes=(16,), timesteps=50, sample_timesteps=3, learned_variance=False)
    trainer = DecoderTrainer(decoder, lr=1e-3, compile=True, channels_last=True)
    assert trainer.accelerator.mixed_precision == "bf16"  # amp="auto" on a GPU with native bf16
    assert trainer.device.type == "cuda"
    losses = []
    for i in range(3):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(2, 3, 16, 16, generator=g)
        losses.append(trainer(image, image_embed=torch.randn(2, DIM, generator=g),
                              text_encodings=torch.randn(2, 5, DIM, generator=g), unet_number=1))
        trainer.update(1)
    assert all(math.isfinite(v) for v in losses) and trainer.num_steps_taken(1) == 3
    assert trainer.compile_seconds is not None
    images = trainer.sample(image_embed=torch.randn(2, DIM), text_encodings=torch.randn(2, 5, DIM))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_train_decoder_script_with_compile_and_bf16_on_cuda(tmp_path):
    import train_decoder
    from tests.scripts._script_helpers import decoder_argv, read_metrics, train_losses

    torch._dynamo.reset()
    argv = decoder_argv(tmp_path / "run", "--max-steps", "3", "--override", "train.compile=true",
                        "--override", "train.amp=bf16")
    assert train_decoder.main(argv) == 0
    records = read_metrics(tmp_path / "run")
    losses = train_losses(records)
    assert [s for s, _ in losses] == [1, 2, 3] and all(math.isfinite(v) for _, v in losses)
    assert [r["train/compile_seconds"] > 0 for r in records if "train/compile_seconds" in r] == [True]
