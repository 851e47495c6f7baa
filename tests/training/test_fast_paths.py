"""Every training fast path (issue 11) computes the same float32 function on CPU: norms in the
activation dtype, channels-last Unets, the fused FiLM multiply-add, fused AdamW and resuming across
optimiser implementations, prior gradient checkpointing, torch.compile of blocks / networks, and the
mixed-precision default. The GPU side of the same checks is tests/gpu/ (run by scripts/gpu_check.sh)."""

import pytest
import torch
import torch.nn.functional as F

from dalle2_pytorch.decoder.blocks import Block, ResnetBlock
from dalle2_pytorch.decoder.decoder import Decoder
from dalle2_pytorch.decoder.unet import Unet
from dalle2_pytorch.layers.normalization import (
    ChanLayerNorm,
    GroupNorm,
    LayerNorm,
    _group_norm_channels_last,
    set_norm_upcast,
)
from dalle2_pytorch.prior.diffusion_prior import DiffusionPrior
from dalle2_pytorch.prior.network import DiffusionPriorNetwork
from dalle2_pytorch.training import DecoderTrainer, DiffusionPriorTrainer
from dalle2_pytorch.training import base as trainer_base
from dalle2_pytorch.training import precision
from dalle2_pytorch.training.optim import get_optimizer, load_optimizer_state, optimizer_implementation
from dalle2_pytorch.training.performance import compile_network, compile_units, enable_gradient_checkpointing

DIM = 16


def _close(a, b, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _unet(**kw):
    torch.manual_seed(0)
    unet = Unet(dim=8, dim_mults=(1, 2), cond_dim=8, image_embed_dim=DIM, cond_on_image_embeds=True,
                text_embed_dim=DIM, cond_on_text_encodings=True, max_text_len=5, attn_heads=2, attn_dim_head=4,
                num_resnet_blocks=1, self_attn=(False, True), **kw)
    with torch.no_grad():  # the zero-initialised output conv would make every output 0
        unet.to_out.weight.normal_(0, 0.1)
    return unet


def _unet_inputs(b=2, size=8):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(b, 3, size, size, generator=g), torch.randint(0, 1000, (b,), generator=g)), dict(
        image_embed=torch.randn(b, DIM, generator=g), text_encodings=torch.randn(b, 5, DIM, generator=g))


def _out_and_grads(module, call):
    module.zero_grad(set_to_none=True)
    out = call()
    out.float().square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_same(a, b, rtol=1e-5, atol=1e-6):
    out_a, grads_a = a
    out_b, grads_b = b
    _close(out_a, out_b, rtol, atol)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        _close(grads_a[k], grads_b[k], rtol, atol)


# ---------------------------------------------------------------------------------------------
# norms


@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_matches_torch_and_keeps_the_layout(channels_last):
    torch.manual_seed(0)
    ours, theirs = GroupNorm(4, 16), torch.nn.GroupNorm(4, 16)
    with torch.no_grad():
        ours.weight.normal_(), ours.bias.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 16, 5, 6) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _close(ours(x), theirs(x))
    assert ours(x).is_contiguous(memory_format=torch.channels_last) == channels_last
    assert list(ours.state_dict()) == ["weight", "bias"]


def test_channels_last_group_norm_kernel_matches_torch():
    """The CUDA-only NHWC path, called directly on CPU tensors: same numbers, layout kept."""
    torch.manual_seed(1)
    x = (torch.randn(2, 12, 4, 7) * 5 + 20).contiguous(memory_format=torch.channels_last)  # mean >> std
    w, b = torch.randn(12), torch.randn(12)
    out = _group_norm_channels_last(x, 3, w, b, 1e-5)
    _close(out, F.group_norm(x.contiguous(), 3, w, b, 1e-5), rtol=1e-4, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    low = _group_norm_channels_last(x.bfloat16(), 3, w.bfloat16(), b.bfloat16(), 1e-5)
    assert low.dtype == torch.bfloat16
    # float32 statistics: only the bf16 rounding of the output remains (of the rounded inputs)
    expected = F.group_norm(x.bfloat16().float(), 3, w.bfloat16().float(), b.bfloat16().float(), 1e-5)
    _close(low.float(), expected, rtol=1e-2, atol=1e-2)


def test_layer_norms_match_the_formula_in_float32_and_stay_in_bf16_under_autocast():
    torch.manual_seed(0)
    ln = LayerNorm(8)
    with torch.no_grad():
        ln.g.normal_()
    x = torch.randn(4, 3, 8)
    _close(ln(x), F.layer_norm(x, (8,), weight=ln.g, eps=1e-5))
    ln.upcast_under_autocast = True
    _close(ln(x), F.layer_norm(x, (8,), weight=ln.g, eps=1e-5))
    ln.upcast_under_autocast = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ln(torch.nn.Linear(8, 8)(x)).dtype == torch.bfloat16
    cln = ChanLayerNorm(6)
    with torch.no_grad():
        cln.g.normal_()
    fmap = torch.randn(2, 6, 3, 3)
    mean = fmap.mean(dim=1, keepdim=True)
    var = fmap.var(dim=1, unbiased=False, keepdim=True)
    _close(cln(fmap), (fmap - mean) / (var + 1e-5).sqrt() * cln.g, rtol=1e-5, atol=1e-5)
    assert cln(fmap.bfloat16()).dtype == torch.bfloat16  # a float32 gain no longer promotes the map


def test_set_norm_upcast_reaches_every_norm():
    unet = _unet()
    n = sum(isinstance(m, (LayerNorm, GroupNorm)) for m in unet.modules())
    assert n > 10 and set_norm_upcast(unet, True) == n
    assert all(m.upcast_under_autocast for m in unet.modules() if isinstance(m, (LayerNorm, GroupNorm)))


def test_block_scale_shift_is_the_same_multiply_add():
    torch.manual_seed(0)
    block = Block(4, 8, groups=2)
    x = torch.randn(2, 4, 5, 5)
    scale, shift = torch.randn(2, 8, 1, 1), torch.randn(2, 8, 1, 1)
    expected = F.silu(block.norm(block.project(x)) * (scale + 1) + shift)
    _close(block(x, (scale, shift)), expected)


# ---------------------------------------------------------------------------------------------
# the networks


def test_unet_channels_last_and_norm_upcast_give_the_same_float32_outputs_and_gradients():
    unet = _unet()
    args, kw = _unet_inputs()
    base = _out_and_grads(unet, lambda: unet(*args, **kw))
    set_norm_upcast(unet, True)
    _assert_same(_out_and_grads(unet, lambda: unet(*args, **kw)), base)
    set_norm_upcast(unet, False)
    unet.to(memory_format=torch.channels_last)
    assert unet.init_conv.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    x_cl = args[0].contiguous(memory_format=torch.channels_last)
    _assert_same(_out_and_grads(unet, lambda: unet(x_cl, args[1], **kw)), base, rtol=1e-4, atol=1e-5)


def _prior_net(**kw):
    torch.manual_seed(0)
    return DiffusionPriorNetwork(dim=DIM, depth=3, dim_head=8, heads=2, max_text_len=4, num_timesteps=100,
                                 attn_dropout=0.2, ff_dropout=0.2, **kw)


def test_prior_gradient_checkpointing_gives_the_same_outputs_and_gradients_with_dropout():
    net = _prior_net()
    net.train()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, DIM, generator=g), torch.randint(0, 100, (3,), generator=g)
    kw = dict(text_embed=torch.randn(3, DIM, generator=g), text_encodings=torch.randn(3, 4, DIM, generator=g))

    def run():
        torch.manual_seed(5)  # same dropout masks
        return net(x, t, **kw)

    base = _out_and_grads(net, run)
    assert enable_gradient_checkpointing(net) == 1 and net.causal_transformer.checkpoint_during_training
    _assert_same(_out_and_grads(net, run), base, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# optimiser


def test_adamw_is_fused_where_pytorch_has_the_kernel_and_gives_the_same_updates():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 2))
    opt = get_optimizer(model, lr=1e-2, wd=0.1)
    assert [g.get("fused") for g in opt.param_groups] == [True, True]  # CPU has a fused AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert optimizer_implementation([torch.zeros(2, dtype=torch.long)]) == {}
    with pytest.raises(ValueError, match="fused AdamW supports"):
        optimizer_implementation([torch.zeros(2, dtype=torch.long)], fused=True)

    def train(fused):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 2))
        o = get_optimizer(m, lr=1e-2, wd=0.1, fused=fused)
        for i in range(5):
            m(torch.randn(4, 6, generator=torch.Generator().manual_seed(i))).square().mean().backward()
            o.step()
            o.zero_grad()
        return m

    for a, b in zip(train(True).parameters(), train(False).parameters()):
        _close(a, b, rtol=1e-6, atol=1e-7)


def test_optimizer_state_moves_between_implementations():
    """A checkpoint written by a foreach/loop run resumes in a fused run (and back) with the
    resuming run's flags, and continues exactly like a run that never stopped."""
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(5, 5), torch.nn.Linear(5, 1))

    def steps(m, o, start, n):
        for i in range(start, start + n):
            m(torch.randn(3, 5, generator=torch.Generator().manual_seed(i))).square().mean().backward()
            o.step()
            o.zero_grad()

    for first, second in ((False, True), (True, False)):
        a = model()
        oa = get_optimizer(a, lr=1e-2, fused=first)
        steps(a, oa, 0, 3)
        state = oa.state_dict()
        b = model()
        b.load_state_dict(a.state_dict())
        ob = get_optimizer(b, lr=1e-2, fused=second)
        load_optimizer_state(ob, state)
        assert [bool(g.get("fused")) for g in ob.param_groups] == [second] * len(ob.param_groups)
        assert all(s["step"].dtype == torch.float32 and s["step"].device.type == "cpu" for s in ob.state.values())
        ref = model()
        oref = get_optimizer(ref, lr=1e-2, fused=second)
        steps(ref, oref, 0, 3)
        steps(b, ob, 3, 2)
        steps(ref, oref, 3, 2)
        for p, q in zip(b.parameters(), ref.parameters()):
            _close(p, q, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# compile


def test_compile_units_are_the_repeated_blocks_and_networks():
    unet = _unet()
    blocks = compile_units(unet, "blocks")
    assert any(isinstance(m, ResnetBlock) for m in blocks) and len(blocks) >= 8
    assert compile_units(unet, "model") == [unet]
    prior = DiffusionPrior(_prior_net(), image_embed_dim=DIM, timesteps=100)
    names = sorted({type(m).__name__ for m in compile_units(prior, "blocks")})
    assert names == ["Attention", "FeedForward"] and len(compile_units(prior, "blocks")) == 6
    with pytest.raises(ValueError, match="compile scope"):
        compile_units(unet, "everything")
    with pytest.raises(ValueError, match="nothing to compile"):
        compile_network(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compiled_unet_traces_to_the_same_function(scope):
    """Dynamo + AOTAutograd (the `aot_eager` backend: the tracing torch.compile does, without
    Inductor's code generation, which tests/gpu and the heavy tests cover) give the same outputs
    and gradients, and the state dict keys do not change."""
    torch._dynamo.reset()
    unet = _unet()
    args, kw = _unet_inputs()
    base = _out_and_grads(unet, lambda: unet(*args, **kw))
    keys = list(unet.state_dict())
    compile_network(unet, scope, backend="aot_eager")
    _assert_same(_out_and_grads(unet, lambda: unet(*args, **kw)), base, rtol=1e-4, atol=1e-6)
    assert list(unet.state_dict()) == keys


def _tiny_decoder():
    torch.manual_seed(0)
    unet = Unet(dim=8, dim_mults=(1, 2), cond_dim=8, image_embed_dim=DIM, cond_on_image_embeds=True,
                attn_heads=2, attn_dim_head=4, num_resnet_blocks=1)
    return Decoder(unet, image_sizes=(16,), timesteps=20, sample_timesteps=3, learned_variance=False)


def _decoder_steps(trainer, n):
    losses = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        image = torch.rand(2, 3, 16, 16, generator=g)
        emb = F.normalize(torch.randn(2, DIM, generator=g), dim=-1)
        torch.manual_seed(100 + i)
        losses.append(trainer(image, image_embed=emb, unet_number=1))
        trainer.update(1)
    return losses


def test_decoder_trainer_speed_options_train_the_same_and_checkpoint_plain_keys(tmp_path):
    torch._dynamo.reset()
    plain = DecoderTrainer(_tiny_decoder(), lr=1e-3, ema_update_after_step=0, ema_update_every=1)
    # `aot_eager`: the tracing of torch.compile without Inductor's C++ code generation (slow here)
    fast = DecoderTrainer(_tiny_decoder(), lr=1e-3, ema_update_after_step=0, ema_update_every=1,
                          channels_last=True, gradient_checkpointing=True, compile={"backend": "aot_eager"},
                          fused=True)
    assert fast.compile_seconds is None
    unet = fast.unwrapped_decoder.unets[0]
    assert sum(getattr(m, "_compiled_call_impl", None) is not None for m in unet.modules()) >= 6
    assert unet.checkpoint_during_training and unet.init_conv.convs[0].weight.is_contiguous(
        memory_format=torch.channels_last)
    assert fast.ema_unets[0].ema_model.init_conv.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    a, b = _decoder_steps(plain, 3), _decoder_steps(fast, 3)
    _close(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-6)
    assert fast.compile_seconds is not None and fast.compile_seconds > 0
    # Adam turns rounding-level gradient differences into up to ~lr-sized update differences
    for (k, p), q in zip(plain.unwrapped_decoder.state_dict().items(), fast.unwrapped_decoder.state_dict().values()):
        _close(p, q, rtol=1e-3, atol=1e-4)
    fast.save(tmp_path / "ckpt")
    resumed = DecoderTrainer(_tiny_decoder(), lr=1e-3)  # plain NCHW, not compiled, same keys
    resumed.load(tmp_path / "ckpt")
    for (k, p), q in zip(resumed.unwrapped_decoder.state_dict().items(), fast.unwrapped_decoder.state_dict().values()):
        assert torch.equal(p, q.contiguous()), k


def test_prior_trainer_compile_and_checkpointing_options():
    torch._dynamo.reset()
    prior = DiffusionPrior(_prior_net(), image_embed_dim=DIM, timesteps=100, cond_drop_prob=0.2)
    trainer = DiffusionPriorTrainer(prior, compile=True, gradient_checkpointing=True)
    net = trainer.unwrapped_prior.net
    assert net.causal_transformer.checkpoint_during_training
    compiled = [m for m in net.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert len(compiled) == 6  # 3 layers × (attention, feed-forward)
    ema_compiled = [m for m in trainer.ema_diffusion_prior.ema_model.modules()
                    if getattr(m, "_compiled_call_impl", None) is not None]
    assert ema_compiled == []  # the EMA copy (sampling) stays eager
    with pytest.raises(ValueError, match="compile must be"):
        DiffusionPriorTrainer(DiffusionPrior(_prior_net(), image_embed_dim=DIM, timesteps=100), compile="fast")
    with pytest.raises(ValueError, match="no CausalTransformer"):
        from _training_toys import ToyPrior

        DiffusionPriorTrainer(ToyPrior(), gradient_checkpointing=True)


@pytest.mark.heavy
def test_inductor_compiled_unet_blocks_match_eager_on_cpu():
    torch._dynamo.reset()
    unet = _unet()
    args, kw = _unet_inputs()
    base = _out_and_grads(unet, lambda: unet(*args, **kw))
    compile_network(unet, "blocks")
    _assert_same(_out_and_grads(unet, lambda: unet(*args, **kw)), base, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# mixed precision default


def test_amp_auto_is_bf16_on_gpus_with_native_bf16_only(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    resolve = precision.resolve_mixed_precision
    monkeypatch.setattr(precision, "_gpu_has_bf16", lambda: False)
    assert resolve("auto") is None  # CPU / older GPUs: float32, as before
    monkeypatch.setattr(precision, "_gpu_has_bf16", lambda: True)
    assert resolve("auto") == "bf16"
    assert resolve("auto", cpu=True) is None
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert resolve("auto") is None
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve("auto") is None  # the launcher's config decides
    assert resolve(False) is None and resolve("bf16") == "bf16" and resolve("no") == "no"
    with pytest.raises(ValueError, match="amp must be"):
        resolve("fp8")


def test_trainers_default_to_amp_auto_and_stay_float32_on_cpu():
    from _training_toys import ToyPrior

    trainer = DiffusionPriorTrainer(ToyPrior())
    assert trainer._config["amp"] == "auto" and trainer.accelerator.mixed_precision == "no"


# ---------------------------------------------------------------------------------------------
# shipped accelerate configs


def test_shipped_accelerate_configs_parse_into_fsdp2_and_zero2():
    from pathlib import Path

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser, prepare_multi_gpu_env

    configs = Path(__file__).resolve().parents[2] / "train_configs" / "accelerate"
    parser = launch_command_parser()
    args, _, _ = _validate_launch_command(parser.parse_args(["--config_file", str(configs / "fsdp2.yaml"), "x.py"]))
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP" and "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    ds = parser.parse_args(["--config_file", str(configs / "deepspeed_zero2.yaml"), "x.py"])
    args, _, _ = _validate_launch_command(ds)
    assert args.use_deepspeed and int(args.zero_stage) == 2 and float(args.gradient_clipping) == 0.5


def test_deepspeed_checkpoints_say_that_they_hold_no_optimizer_state(tmp_path, monkeypatch):
    """ZeRO partitions AdamW's state inside DeepSpeed; a checkpoint cannot hold it from rank 0 alone."""
    from accelerate.utils import DistributedType

    from _training_toys import ToyPrior

    trainer = DiffusionPriorTrainer(ToyPrior(), lr=1e-2)
    trainer(text_embed=torch.randn(4, 8), image_embed=torch.randn(4, 8))
    trainer.update()
    monkeypatch.setattr(type(trainer.accelerator), "distributed_type", property(lambda self: DistributedType.DEEPSPEED))
    state = trainer._optimizer_state()
    assert state["optimizers"] == [{trainer_base.DEEPSPEED_MARKER: True}] and state["schedulers"][0]
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="holds no optimiser state"):
        trainer._load_optimizer_state(state)
    assert trainer.optimizer.state_dict()["state"]  # the run's own moments are left as they were
