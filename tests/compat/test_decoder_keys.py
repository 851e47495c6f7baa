"""Reference decoder state dicts -> our Unet keys: layout detection, conversion, strict diffs.

Fixtures: tests/fixtures/compat/decoder_* (small reference decoders). Manifests:
tests/fixtures/laion_manifests/decoder_* (every state-dict key and shape of LAION's released
decoders, built by reference 1.1.0 / 1.15.6 on the meta device).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from dalle2_pytorch.compat.decoder_keys import (
    SCHEDULE_BUFFER_NAMES,
    convert_decoder_state_dict,
    detect_decoder_layout,
    load_unet_state_dict,
    split_unet_state_dicts,
)
from dalle2_pytorch.compat.keys import StateDictMismatchError
from dalle2_pytorch.decoder import Unet
from dalle2_pytorch.serialization import safe_torch_load

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CASES = {"decoder_laion_1.1.0": "1.1.0", "decoder_upsampler_1.1.0": "1.1.0", "decoder_1.15.6": "1.15.6"}
MANIFESTS = sorted(
    p.name for p in (FIXTURES / "laion_manifests").glob("decoder_*.json")
    if p.name.endswith(("-1.1.0.json", "-1.15.6.json"))
)


@functools.lru_cache(maxsize=None)
def fixture_state(case: str) -> dict[str, torch.Tensor]:
    return safe_torch_load(FIXTURES / "compat" / case / "checkpoint.pth")["model"]


def fixture_config(case: str) -> dict:
    return json.loads((FIXTURES / "compat" / case / "config.json").read_text())["decoder"]


@functools.lru_cache(maxsize=None)
def manifest(name: str) -> dict:
    return json.loads((FIXTURES / "laion_manifests" / name).read_text())


def meta_state(entries: list[dict]) -> dict[str, torch.Tensor]:
    return {e["key"]: torch.empty(e["shape"], device="meta") for e in entries}


@pytest.mark.parametrize("case", list(CASES))
def test_detect_and_convert_fixtures(case: str) -> None:
    state = fixture_state(case)
    layout = detect_decoder_layout(state)
    assert layout == CASES[case]
    unet_state, schedules, other = convert_decoder_state_dict(state, layout)
    n_unets = len(fixture_config(case)["unets"])
    assert other == {}
    assert sorted(schedules) == sorted(f"noise_schedulers.{i}.{n}" for i in range(n_unets) for n in SCHEDULE_BUFFER_NAMES)
    assert len(unet_state) + len(schedules) == len(state)
    assert not any(".fn." in k and "cross_attn" in k for k in unet_state)
    renamed = sum(".cross_attn.fn." in k for k in state)
    assert (renamed > 0) == (layout == "1.1.0")
    for key, value in state.items():  # tensors are passed through untouched
        new_key = key.replace(".cross_attn.fn.", ".cross_attn.")
        assert (unet_state.get(new_key, schedules.get(key)) is value)
    assert sorted(split_unet_state_dicts(unet_state)) == list(range(n_unets))


def test_generations_differ_only_in_downsample_after_conversion() -> None:
    old, _, _ = convert_decoder_state_dict(fixture_state("decoder_laion_1.1.0"), "1.1.0")
    new, _, _ = convert_decoder_state_dict(fixture_state("decoder_1.15.6"), "1.15.6")
    only_old, only_new = set(old) - set(new), set(new) - set(old)
    assert sorted(only_old) == [f"unets.0.downs.{s}.0.{p}" for s in range(4) for p in ("bias", "weight")]
    assert sorted(only_new) == [f"unets.0.downs.{s}.0.1.{p}" for s in range(4) for p in ("bias", "weight")]
    assert all(old[k].shape == new[k].shape for k in set(old) & set(new))


def test_other_and_schedule_keys_are_separated() -> None:
    state = dict(fixture_state("decoder_1.15.6"))
    state["clip.clip.visual.proj"] = torch.zeros(2)
    state["vaes.1.enc.weight"] = torch.zeros(1)
    state["lowres_conds.1.noise_scheduler.betas"] = torch.zeros(3)
    _, schedules, other = convert_decoder_state_dict(state, "1.15.6")
    assert sorted(other) == ["clip.clip.visual.proj", "vaes.1.enc.weight"]
    assert "lowres_conds.1.noise_scheduler.betas" in schedules


@pytest.mark.parametrize("bad_key", ["noise_schedulers.0.not_a_buffer", "decoder.foo", "lowres_conds.1.weight"])
def test_unrecognised_keys_are_reported(bad_key: str) -> None:
    state = dict(fixture_state("decoder_1.15.6"))
    state[bad_key] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError, match="unexpected keys") as info:
        convert_decoder_state_dict(state, "1.15.6")
    assert info.value.unexpected == [bad_key]


def test_wrong_or_mixed_generation_is_refused() -> None:
    old, new = fixture_state("decoder_laion_1.1.0"), fixture_state("decoder_1.15.6")
    with pytest.raises(ValueError, match="does not look like layout '1.15.6'"):
        convert_decoder_state_dict(old, "1.15.6")
    with pytest.raises(ValueError, match="does not look like layout '1.1.0'"):
        convert_decoder_state_dict(new, "1.1.0")
    mixed = {**old, "unets.0.mid_block1.cross_attn.null_kv": torch.zeros(2, 64)}
    with pytest.raises(ValueError, match="mixes key generations"):
        detect_decoder_layout(mixed)
    with pytest.raises(ValueError, match="unknown decoder layout"):
        convert_decoder_state_dict(new, "0.15.4")


def test_undetectable_and_old_generations() -> None:
    with pytest.raises(ValueError, match="no 'unets"):
        detect_decoder_layout({"noise_schedulers.0.betas": torch.zeros(3)})
    with pytest.raises(ValueError, match="pass layout"):
        detect_decoder_layout({"unets.0.to_out.weight": torch.zeros(3, 8, 1, 1)})
    old = {**fixture_state("decoder_1.15.6"), "unets.0.mid_attn.fn.fn.norm.gamma": torch.zeros(32)}
    for call in (lambda: detect_decoder_layout(old), lambda: convert_decoder_state_dict(old, "1.15.6")):
        with pytest.raises(ValueError, match="older than 1.1.0"):
            call()


def test_loading_into_the_wrong_layout_gives_a_readable_diff() -> None:
    cfg = fixture_config("decoder_1.15.6")
    unet_state, _, _ = convert_decoder_state_dict(fixture_state("decoder_1.15.6"), "1.15.6")
    state = split_unet_state_dicts(unet_state)[0]
    kwargs = dict(cfg["unets"][0], cond_on_image_embeds=True, channels_out=6)
    with torch.device("meta"):
        wrong = Unet(**kwargs, layout="1.1.0")
    with pytest.raises(StateDictMismatchError) as info:
        load_unet_state_dict(wrong, state, context="decoder_1.15.6 into a 1.1.0 unet")
    err = info.value
    assert err.missing == [f"downs.{s}.0.{p}" for s in range(4) for p in ("bias", "weight")]
    assert err.unexpected == [f"downs.{s}.0.1.{p}" for s in range(4) for p in ("bias", "weight")]
    assert "decoder_1.15.6 into a 1.1.0 unet" in str(err) and "downs.0.0.weight" in str(err)
    no_lv = Unet(**dict(kwargs, channels_out=3))
    with pytest.raises(StateDictMismatchError, match=r"to_out.weight: \[3, 8, 1, 1\] vs \[6, 8, 1, 1\]"):
        load_unet_state_dict(no_lv, state, context="learned variance mismatch")


LAION_V1_0_2 = dict(
    dim=320, cond_dim=512, image_embed_dim=768, text_embed_dim=768, cond_on_text_encodings=True,
    dim_mults=(1, 2, 3, 4), num_resnet_blocks=4, attn_heads=8, attn_dim_head=64, sparse_attn=True,
    memory_efficient=True, self_attn=(False, True, True, True), channels_out=6, cond_on_image_embeds=True,
)


def assert_unet_matches_manifest(unet: Unet, entries: list[dict], layout: str) -> None:
    unet_state, schedules, other = convert_decoder_state_dict(meta_state(entries), layout)
    ours = {f"unets.0.{k}": tuple(v.shape) for k, v in unet.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in unet_state.items()}
    assert sorted(set(ours) ^ set(theirs)) == []
    assert {k for k in theirs if ours[k] != theirs[k]} == set()
    assert sorted(schedules) == sorted(f"noise_schedulers.0.{n}" for n in SCHEDULE_BUFFER_NAMES)
    assert all(tuple(v.shape) == (1000,) for v in schedules.values()) and other == {}


@pytest.mark.parametrize("layout", ["1.1.0", "1.15.6"])
def test_full_size_laion_v1_0_2_unet_matches_manifest(layout: str) -> None:
    m = manifest(f"decoder_v1.0.2_unet1_dim320__dalle2_pytorch-{layout}.json")
    with torch.device("meta"):
        unet = Unet(**LAION_V1_0_2, layout=layout)
    assert detect_decoder_layout(meta_state(m["state_dict"])) == layout
    assert_unet_matches_manifest(unet, m["state_dict"], layout)
    assert sum(p.numel() for p in unet.parameters()) == m["total_parameters"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_laion_decoder_manifest_matches(name: str) -> None:
    m = manifest(name)
    cfg = m["config"]
    layout = detect_decoder_layout(meta_state(m["state_dict"]))
    assert name.endswith(f"-{layout}.json")
    kwargs = dict(cfg["unets"][0], cond_on_image_embeds=True, lowres_cond=False)
    if cfg.get("learned_variance", True):
        kwargs["channels_out"] = 2 * kwargs.get("channels", 3)
    with torch.device("meta"):
        unet = Unet(**kwargs, layout=layout)
    assert_unet_matches_manifest(unet, m["state_dict"], layout)
    assert sum(p.numel() for p in unet.parameters()) == m["total_parameters"]
