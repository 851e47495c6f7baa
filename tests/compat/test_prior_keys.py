"""Reference prior checkpoints: key conversion, strict diffs and numerical equivalence.

Fixtures (tests/fixtures/compat/prior_*) are small priors saved by the reference package with its
own outputs; manifests (tests/fixtures/laion_manifests) list the state dict of the full-size LAION
prior as built by reference 1.1.0 and 1.15.6 on the meta device.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dalle2_pytorch.compat.keys import (
    StateDictMismatchError,
    TensorValueMismatchError,
    check_state_dict,
    check_tensors_close,
)
from dalle2_pytorch.compat.prior_keys import (
    NOISE_SCHEDULER_BUFFERS,
    ConvertedPriorState,
    UnsupportedPriorGenerationError,
    check_prior_network_state,
    convert_prior_state_dict,
    detect_prior_layout,
    split_prior_state_dict,
)
from dalle2_pytorch.prior.network import DiffusionPriorNetwork
from dalle2_pytorch.serialization import safe_torch_load

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = {"prior_laion_1.1.0": "1.1.0", "prior_1.15.6": "1.15.6"}
MANIFESTS = {
    "1.1.0": FIXTURES / "laion_manifests" / "prior_laion_vitl14_depth12__dalle2_pytorch-1.1.0.json",
    "1.15.6": FIXTURES / "laion_manifests" / "prior_laion_vitl14_depth12__dalle2_pytorch-1.15.6.json",
}


def case_dir(case: str) -> Path:
    return FIXTURES / "compat" / case


def net_config(case: str) -> dict:
    return json.loads((case_dir(case) / "config.json").read_text())["prior"]["net"]


def load_io(case: str) -> dict[str, torch.Tensor]:
    # clone: tensors straight from safetensors can sit at unusual memory alignments
    return {k: v.clone() for k, v in load_file(case_dir(case) / "io.safetensors").items()}


def build_loaded(case: str, state_dict: dict[str, torch.Tensor]) -> DiffusionPriorNetwork:
    conv = convert_prior_state_dict(state_dict)
    assert conv.layout == CASES[case]
    net = DiffusionPriorNetwork(**net_config(case), layout=conv.layout).eval()
    check_prior_network_state(net, conv, context=case)
    net.load_state_dict(conv.network_state_dict(), strict=True)
    return net


def assert_matches(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def model_state(case: str) -> dict[str, torch.Tensor]:
    return safe_torch_load(case_dir(case) / "checkpoint.pth")["model"]


# ----------------------------------------------------------------------------- fixture equivalence


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_outputs_reproduced(case: str) -> None:
    net = build_loaded(case, model_state(case))
    io = load_io(case)
    calls = {c["outputs"][0]: c["call"] for c in json.loads((case_dir(case) / "case.json").read_text())["calls"]}
    x, t = io["in.image_embed_noisy"], io["in.timesteps"]
    kw = dict(text_embed=io["in.text_embed"], text_encodings=io["in.text_encodings"])
    if CASES[case] == "1.1.0":
        assert "cond_drop_prob=1.0" in calls["out.net_null"]
        null_kw = dict(cond_drop_prob=1.0)
    else:
        assert "text_cond_drop_prob=1.0, image_cond_drop_prob=1.0" in calls["out.net_null"]
        null_kw = dict(text_cond_drop_prob=1.0, image_cond_drop_prob=1.0)
    assert "cond_scale=2.0" in calls["out.net_guided"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 1.1.0: guidance has no effect
        out = net(x, t, **kw)
        null = net(x, t, **kw, **null_kw)
        guided = net.forward_with_cond_scale(x, t, **kw, cond_scale=2.0)
    assert_matches(out, io["out.net"])
    assert_matches(null, io["out.net_null"])
    assert_matches(guided, io["out.net_guided"])
    if CASES[case] == "1.15.6":  # the null branch really differs there
        assert (null - out).abs().max() > 1e-2


def test_laion_1_1_0_online_weights_from_trainer_checkpoint() -> None:
    case = "prior_laion_1.1.0"
    trainer = safe_torch_load(case_dir(case) / "trainer_checkpoint.pth")
    io = load_io(case)
    kw = dict(text_embed=io["in.text_embed"], text_encodings=io["in.text_encodings"])
    with torch.no_grad():
        online = build_loaded(case, trainer["model"])(io["in.image_embed_noisy"], io["in.timesteps"], **kw)
        ema = build_loaded(case, trainer["ema_model"])(io["in.image_embed_noisy"], io["in.timesteps"], **kw)
    assert_matches(online, io["out.net_online"])
    assert_matches(ema, io["out.net"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_schedule_buffers_returned_separately(case: str) -> None:
    conv = convert_prior_state_dict(model_state(case))
    assert set(conv.noise_scheduler) == set(NOISE_SCHEDULER_BUFFERS)
    assert conv.clip == {}
    assert all(k.startswith("net.") for k in conv.net)
    io = load_io(case)
    expected = {name: io[f"out.schedule.{name}"] for name in NOISE_SCHEDULER_BUFFERS}
    check_tensors_close(expected, conv.noise_scheduler, "schedule")
    tampered = dict(conv.noise_scheduler, betas=conv.noise_scheduler["betas"] * 1.01)
    with pytest.raises(TensorValueMismatchError, match="betas"):
        check_tensors_close(expected, tampered, "schedule")


# ----------------------------------------------------------------------------- LAION manifests


def laion_kwargs(manifest: dict) -> dict:
    cfg = dict(manifest["config"]["net"])
    return cfg


@pytest.mark.parametrize("layout", sorted(MANIFESTS))
def test_full_size_laion_prior_matches_manifest(layout: str) -> None:
    manifest = json.loads(MANIFESTS[layout].read_text())
    cfg = laion_kwargs(manifest)
    assert (cfg["dim"], cfg["depth"], cfg["heads"], cfg["dim_head"], cfg["max_text_len"]) == (768, 12, 12, 64, 77)
    with torch.device("meta"):
        net = DiffusionPriorNetwork(**cfg, layout=layout)
    ours = {"net." + k: list(v.shape) for k, v in net.state_dict().items()}
    ours.update({"noise_scheduler." + name: [cfg["num_timesteps"]] for name in NOISE_SCHEDULER_BUFFERS})
    theirs = {e["key"]: e["shape"] for e in manifest["state_dict"]}
    assert len(theirs) == manifest["num_state_dict_keys"]
    check_state_dict(theirs, ours, f"LAION prior manifest {layout}")  # readable diff on failure
    assert ours == theirs
    # unique parameters: the shared rotary freqs count once, as in the reference
    assert sum(p.numel() for p in net.parameters()) == manifest["total_parameters"]
    # the manifest's state dict converts to the layout it was built with
    fake = {e["key"]: torch.empty(e["shape"], device="meta") for e in manifest["state_dict"]}
    conv = convert_prior_state_dict(fake)
    assert conv.layout == layout
    check_prior_network_state(net, conv)


# ----------------------------------------------------------------------------- detection and errors


def test_detect_layout_and_bare_network_state_dict() -> None:
    for case, layout in CASES.items():
        sd = model_state(case)
        assert detect_prior_layout(sd) == layout
        bare = {k[4:]: v for k, v in sd.items() if k.startswith("net.")}
        assert detect_prior_layout(bare) == layout
        conv = convert_prior_state_dict(bare)
        assert set(conv.net) == {k for k in sd if k.startswith("net.")}
        assert conv.noise_scheduler == {}


def test_module_prefix_and_clip_keys_are_split() -> None:
    sd = model_state("prior_1.15.6")
    sd = dict(sd, **{"clip.clip.visual.proj": torch.zeros(3, 2)})
    wrapped = {"module." + k: v for k, v in sd.items()}
    net, sched, clip = split_prior_state_dict(wrapped)
    assert list(clip) == ["clip.clip.visual.proj"]
    assert len(sched) == 13 and len(net) == 30
    conv = convert_prior_state_dict(wrapped, layout="1.15.6")
    assert isinstance(conv, ConvertedPriorState) and conv.clip.keys() == clip.keys()


def test_unknown_top_level_keys_are_reported() -> None:
    sd = dict(model_state("prior_1.15.6"), **{"optimizer.state": torch.zeros(1), "_dummy": torch.zeros(1)})
    with pytest.raises(StateDictMismatchError) as info:
        convert_prior_state_dict(sd)
    assert info.value.unexpected == ["_dummy", "optimizer.state"]
    assert "optimizer.state" in str(info.value)


def test_layout_mismatch_and_unsupported_generations() -> None:
    sd = model_state("prior_laion_1.1.0")
    with pytest.raises(ValueError, match="1.1.0 key layout but layout='1.15.6'"):
        convert_prior_state_dict(sd, layout="1.15.6")
    with pytest.raises(ValueError, match="unknown prior layout"):
        convert_prior_state_dict(sd, layout="2.0")
    no_padding = {k: v for k, v in sd.items() if k != "net.null_text_embed"}
    with pytest.raises(UnsupportedPriorGenerationError, match="pre-0.23"):
        convert_prior_state_dict(no_padding)
    gamma = {k.replace(".g", ".gamma") if k.endswith(".g") else k: v for k, v in no_padding.items()}
    with pytest.raises(UnsupportedPriorGenerationError, match="pre-0.16"):
        detect_prior_layout(gamma)
    mixed = dict(sd, **{"net.null_image_embed": torch.zeros(1, 64)})
    with pytest.raises(UnsupportedPriorGenerationError, match="mixes generations"):
        detect_prior_layout(mixed)
    with pytest.raises(ValueError, match="not a diffusion prior"):
        detect_prior_layout({"unets.0.init_conv.weight": torch.zeros(1)})


def test_network_mismatch_diff_is_readable() -> None:
    conv = convert_prior_state_dict(model_state("prior_laion_1.1.0"))
    cfg = dict(net_config("prior_laion_1.1.0"), depth=4, heads=8)
    net = DiffusionPriorNetwork(**cfg, layout="1.15.6")
    with pytest.raises(StateDictMismatchError) as info:
        check_prior_network_state(net, conv, context="latest.pth")
    err = info.value
    message = str(err)
    assert message.startswith("latest.pth (file layout 1.1.0, network built with layout 1.15.6)")
    assert "net.causal_transformer.layers.2.0.to_q.weight" in err.missing
    assert {"net.null_text_encodings", "net.null_text_embeds", "net.null_image_embed"} <= set(err.missing)
    assert err.unexpected == ["net.null_text_embed"]
    assert ("net.causal_transformer.rel_pos_bias.relative_attention_bias.weight", (32, 8), (32, 4)) in err.mismatched
    assert "relative_attention_bias.weight: [32, 8] vs [32, 4]" in message
    assert "... and" in message  # more than 20 missing keys are truncated


# ----------------------------------------------------------------------------- check_state_dict


def test_check_state_dict_lists_every_kind_of_difference() -> None:
    expected = {"a.weight": (2, 3), "b.g": torch.Size([4]), "c.bias": torch.zeros(5)}
    got = {"a.weight": torch.zeros(3, 2), "c.bias": torch.zeros(5), "d.extra": torch.zeros(1)}
    with pytest.raises(StateDictMismatchError) as info:
        check_state_dict(expected, got, "my file")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.missing, err.unexpected) == (["b.g"], ["d.extra"])
    assert err.mismatched == [("a.weight", (2, 3), (3, 2))]
    lines = str(err).splitlines()
    assert lines[0] == "my file: state dict does not match (1 missing, 1 unexpected, 1 shape mismatches)"
    assert "    b.g" in lines and "    d.extra" in lines and "    a.weight: [2, 3] vs [3, 2]" in lines


def test_check_state_dict_truncates_long_lists_and_passes_on_match() -> None:
    expected = {f"k{i:03d}": (1,) for i in range(50)}
    with pytest.raises(StateDictMismatchError) as info:
        check_state_dict(expected, {}, "ctx")
    message = str(info.value)
    assert "missing keys (50):" in message and "... and 30 more" in message
    assert "k019" in message and "k020" not in message
    assert len(info.value.missing) == 50
    check_state_dict(expected, {k: torch.zeros(1) for k in expected}, "ctx")  # no error
