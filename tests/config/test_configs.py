"""Tests of the pydantic configs: shipped JSONs, reference dumps, strictness, validation, builders."""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import warnings
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

import dalle2_pytorch.train_configs as train_configs
from dalle2_pytorch.config import (
    AdapterConfig,
    DecoderConfig,
    DecoderDataConfig,
    DiffusionPriorConfig,
    DiffusionPriorNetworkConfig,
    LegacyConfigKeyWarning,
    TrackerLogConfig,
    TrackerSaveConfig,
    TrainDecoderConfig,
    TrainDiffusionPriorConfig,
    TrainSplitConfig,
    UnetConfig,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "train_configs").glob("*.json"))
COMPAT = REPO / "tests" / "fixtures" / "compat"
DUMPS = sorted(COMPAT.glob("*/config.json"))


def _config_class(data: dict) -> type[BaseModel]:
    if "vae" in data:  # train_vqgan.py configs
        from dalle2_pytorch.config.vqgan import TrainVQGanVAEConfig

        return TrainVQGanVAEConfig
    return TrainDecoderConfig if "decoder" in data else TrainDiffusionPriorConfig


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _prior_dict() -> dict:
    return _load(COMPAT / "prior_1.15.6" / "config.json")


def _decoder_dict() -> dict:
    return _load(COMPAT / "decoder_1.15.6" / "config.json")


def _import_or_skip(module: str):
    """Imports `module`; skips only when that module itself does not exist yet (written by others)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        pytest.skip(f"{module} does not exist yet")


def _parse_error(cls: type[BaseModel], data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(data)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# every shipped JSON and every reference dump parses and round-trips


def test_shipped_configs_exist():
    names = {p.name for p in SHIPPED}
    assert {"prior_laion_vitl14.json", "decoder_laion_v1.0.2.json", "prior_example.json",
            "decoder_example.json"} <= names
    assert len(DUMPS) >= 5


@pytest.mark.parametrize("path", SHIPPED + DUMPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses_and_round_trips(path: Path):
    data = _load(path)
    cls = _config_class(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LegacyConfigKeyWarning)
        config = cls.from_json_path(path)
    assert isinstance(config, cls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dump of our own config must be clean
        again = cls.model_validate(config.model_dump())
        from_json = cls.model_validate_json(config.model_dump_json())
    assert again == config
    assert from_json == config


def test_laion_prior_config_values():
    with pytest.warns(LegacyConfigKeyWarning, match="wandb_resume"):
        config = TrainDiffusionPriorConfig.from_json_path(REPO / "train_configs" / "prior_laion_vitl14.json")
    assert config.tracker.log.resume is True  # wandb_resume moved to resume
    net = config.prior.net
    assert (net.dim, net.depth, net.heads, net.num_timesteps, net.max_text_len) == (768, 12, 12, 1000, 77)
    assert config.train.ema_update_after_step == 50
    assert config.train.ema_beta == 0.9999
    assert isinstance(config.data.num_data_points, int) and config.data.num_data_points == 500_000_000


def test_laion_decoder_dump_quirks():
    config = TrainDecoderConfig.from_json_path(COMPAT / "decoder_laion_1.1.0" / "config.json")
    unet = config.decoder.unets[0]
    assert unet.self_attn == (False, True, True, True)
    assert all(type(v) is bool for v in unet.self_attn)
    assert config.decoder.image_sizes == (32,)
    upsampler = TrainDecoderConfig.from_json_path(COMPAT / "decoder_upsampler_1.1.0" / "config.json")
    assert upsampler.decoder.learned_variance == (True, False)
    assert upsampler.decoder.beta_schedule == ("cosine", "linear")


def test_reference_null_cond_on_text_encodings_is_false():
    unet = UnetConfig.model_validate({"dim": 8, "cond_on_text_encodings": None})
    assert unet.cond_on_text_encodings is False


def test_compat_module_exports_reference_names():
    names = [
        "TrainSplitConfig", "TrackerLogConfig", "TrackerLoadConfig", "TrackerSaveConfig", "TrackerConfig",
        "AdapterConfig", "DiffusionPriorNetworkConfig", "DiffusionPriorConfig", "DiffusionPriorTrainConfig",
        "DiffusionPriorDataConfig", "TrainDiffusionPriorConfig", "UnetConfig", "DecoderConfig",
        "DecoderDataConfig", "DecoderTrainConfig", "DecoderEvaluateConfig", "TrainDecoderConfig",
    ]
    for name in names:
        assert issubclass(getattr(train_configs, name), BaseModel), name


# ---------------------------------------------------------------------------------------------
# strictness: unknown keys, legacy keys


def test_unknown_train_key_names_key_and_nearest():
    data = _prior_dict()
    data["train"]["lerning_rate"] = 1e-4
    message = _parse_error(TrainDiffusionPriorConfig, data)
    assert "'lerning_rate'" in message
    assert "nearest valid key: 'lr'" in message
    assert "train" in message


def test_unknown_unet_key_names_key_and_nearest():
    data = _decoder_dict()
    data["decoder"]["unets"][0]["dimm"] = 16
    message = _parse_error(TrainDecoderConfig, data)
    assert "'dimm'" in message
    assert "nearest valid key: 'dim'" in message
    assert "decoder.unets.0" in message


@pytest.mark.parametrize(
    "section, key",
    [("tracker.save", "save_latest_too"), ("tracker.log", "wandb_projekt"), ("data", "batchsize"),
     ("prior.net", "headz"), ("prior", "timestep")],
)
def test_unknown_keys_rejected_everywhere(section: str, key: str):
    data = _prior_dict()
    node = data
    for part in section.split("."):
        node = node[part]
        if isinstance(node, list):
            node = node[0]
    node[key] = 1
    message = _parse_error(TrainDiffusionPriorConfig, data)
    assert repr(key) in message


@pytest.mark.parametrize(
    "cls, data, key",
    [
        (TrainDiffusionPriorConfig, "prior", ("train", "save_every")),
        (TrainDecoderConfig, "decoder", ("train", "save_best")),
        (TrainDecoderConfig, "decoder", ("decoder.unets.0", "sparse_attn_window")),
        (TrainDecoderConfig, "decoder", ("", "load")),
    ],
)
def test_legacy_key_warns_and_is_ignored(cls, data, key):
    data = _prior_dict() if data == "prior" else _decoder_dict()
    reference = cls.model_validate(copy.deepcopy(data))
    section, name = key
    node = data
    for part in filter(None, section.split(".")):
        node = node[int(part)] if part.isdigit() else node[part]
    node[name] = 123
    with pytest.warns(LegacyConfigKeyWarning, match=name):
        config = cls.model_validate(data)
    assert config == reference


def test_renamed_key_moves_value():
    data = _decoder_dict()
    data["decoder"]["clip"] = None
    data["data"]["embeddings_url"] = "embeddings/img/"
    data["data"]["text_embeddings_url"] = "embeddings/text/"
    with pytest.warns(LegacyConfigKeyWarning, match="img_embeddings_url"):
        config = TrainDecoderConfig.model_validate(data)
    assert config.data.img_embeddings_url == "embeddings/img/"


# ---------------------------------------------------------------------------------------------
# value validation


def test_splits_sum_with_tolerance():
    split = TrainSplitConfig(train=0.7, val=0.2, test=0.1)  # 0.7 + 0.2 + 0.1 != 1.0 exactly in floats
    assert split.train == 0.7
    with pytest.raises(ValidationError) as info:
        TrainSplitConfig(train=0.7, val=0.2, test=0.2)
    message = str(info.value)
    assert "train=0.7" in message and "val=0.2" in message and "test=0.2" in message
    assert "1.1" in message


def test_negative_batch_size_names_field():
    data = _prior_dict()
    data["data"]["batch_size"] = -4
    message = _parse_error(TrainDiffusionPriorConfig, data)
    assert "data.batch_size" in message
    assert "greater than 0" in message


@pytest.mark.parametrize("section, field", [("train", "epochs"), ("prior", "timesteps"), ("prior.net", "depth")])
def test_non_positive_sizes_rejected(section: str, field: str):
    data = _prior_dict()
    node = data
    for part in section.split("."):
        node = node[part]
    node[field] = 0
    assert f"{section}.{field}" in _parse_error(TrainDiffusionPriorConfig, data)


def test_wrong_type_names_field():
    data = _decoder_dict()
    data["decoder"]["unets"][0]["dim"] = "big"
    message = _parse_error(TrainDecoderConfig, data)
    assert "decoder.unets.0.dim" in message
    assert "valid integer" in message


def test_num_data_points_is_int():
    data = _prior_dict()
    data["data"]["num_data_points"] = 5e8
    config = TrainDiffusionPriorConfig.model_validate(data)
    assert type(config.data.num_data_points) is int
    data["data"]["num_data_points"] = 2.5
    assert "num_data_points" in _parse_error(TrainDiffusionPriorConfig, data)
    del data["data"]["num_data_points"]
    assert type(TrainDiffusionPriorConfig.model_validate(data).data.num_data_points) is int


def test_max_text_len_default_does_not_crash():
    net = DiffusionPriorNetworkConfig(dim=16, depth=1)
    assert net.max_text_len == 256


def test_prior_dim_must_match_image_embed_dim():
    data = _prior_dict()
    data["prior"]["image_embed_dim"] = 32
    message = _parse_error(TrainDiffusionPriorConfig, data)
    assert "prior.net.dim (64)" in message and "image_embed_dim (32)" in message


def test_image_size_and_image_sizes_are_exclusive():
    data = _decoder_dict()["decoder"]
    data["image_size"] = 32
    assert "not both" in _parse_error(DecoderConfig, data)
    data = _decoder_dict()["decoder"]
    data["image_sizes"] = [32, 64]
    assert "2 entries for 1 unets" in _parse_error(DecoderConfig, data)


def test_per_stage_lengths_checked():
    message = _parse_error(UnetConfig, {"dim": 8, "dim_mults": [1, 2, 4], "self_attn": [True, False]})
    assert "self_attn has 2 entries" in message and "3 stages" in message


def test_per_unet_training_lengths_checked():
    data = _decoder_dict()
    data["train"]["lr"] = [1e-4, 1e-4]
    assert "train.lr has 2 entries for 1 unets" in _parse_error(TrainDecoderConfig, data)
    data = _decoder_dict()
    data["train"]["unet_training_mask"] = [True, False]
    assert "unet_training_mask" in _parse_error(TrainDecoderConfig, data)


def test_tracker_options_are_checked():
    assert "wandb_project" in _parse_error(TrackerLogConfig, {"log_type": "wandb"})
    assert "huggingface_repo" in _parse_error(TrackerSaveConfig, {"save_to": "huggingface"})
    saver = TrackerSaveConfig(save_to="huggingface", huggingface_repo="me/repo", save_latest_to=False)
    assert saver.save_latest_to is False


# ---------------------------------------------------------------------------------------------
# check_has_embeddings (TrainDecoderConfig)


def _decoder_with(*, clip: bool, img: str | None, text: str | None, text_cond: bool = True) -> dict:
    data = _decoder_dict()
    if not clip:
        data["decoder"]["clip"] = None
    data["decoder"]["unets"][0]["cond_on_text_encodings"] = text_cond
    data["data"]["img_embeddings_url"] = img
    data["data"]["text_embeddings_url"] = text
    return data


@pytest.mark.parametrize(
    "kwargs, expected_error",
    [
        (dict(clip=True, img=None, text=None), None),
        (dict(clip=True, img="e/img", text=None), None),
        (dict(clip=True, img=None, text="e/txt"), None),
        (dict(clip=False, img="e/img", text="e/txt"), None),
        (dict(clip=False, img="e/img", text=None, text_cond=False), None),
        (dict(clip=False, img="e/img", text=None), "set decoder.clip or data.text_embeddings_url"),
        (dict(clip=True, img="e/img", text="e/txt"), "remove decoder.clip or the embedding urls"),
        (dict(clip=True, img="e/img", text=None, text_cond=False), "remove decoder.clip or the embedding urls"),
        (dict(clip=False, img="e/img", text="e/txt", text_cond=False), "no unet has cond_on_text_encodings"),
    ],
)
def test_check_has_embeddings(kwargs: dict, expected_error: str | None):
    data = _decoder_with(**kwargs)
    if expected_error is None:
        assert isinstance(TrainDecoderConfig.model_validate(data), TrainDecoderConfig)
    else:
        assert expected_error in _parse_error(TrainDecoderConfig, data)


# ---------------------------------------------------------------------------------------------
# paths


def test_validate_paths(tmp_path: Path):
    data = _prior_dict()
    data["data"]["image_url"] = str(tmp_path / "missing_img")
    data["data"]["meta_url"] = "s3://bucket/meta/"  # URL: not checked
    config = TrainDiffusionPriorConfig.model_validate(data)  # parsing never checks paths
    with pytest.raises(FileNotFoundError, match="data.image_url"):
        config.validate_paths()
    (tmp_path / "missing_img").mkdir()
    config.validate_paths()

    dec = _decoder_dict()
    dec["data"]["webdataset_base_url"] = str(tmp_path / "shards" / "{}.tar")  # template: not checked
    dec["tracker"]["load"] = {"load_from": "local", "file_path": str(tmp_path / "ckpt.pth")}
    config = TrainDecoderConfig.model_validate(dec)
    with pytest.raises(FileNotFoundError, match="tracker.load.file_path"):
        config.validate_paths()
    (tmp_path / "ckpt.pth").write_bytes(b"")
    config.validate_paths()


def test_preprocessing_transforms():
    data = _decoder_dict()["data"]
    config = DecoderDataConfig.model_validate(data)
    names = [type(t).__name__ for t in config.img_preproc.transforms]
    assert names == ["RandomResizedCrop", "ToTensor"]
    data["preprocessing"] = {"RandomResizedCrap": {"size": 8}}
    message = _parse_error(DecoderDataConfig, data)
    assert "RandomResizedCrap" in message and "'RandomResizedCrop'" in message


# ---------------------------------------------------------------------------------------------
# builders


def test_adapter_create_calls_builder(monkeypatch):
    import dalle2_pytorch.clip_adapters as clip_adapters

    calls = []
    monkeypatch.setattr(clip_adapters, "build_clip_adapter", lambda *a, **k: calls.append((a, k)) or "adapter")
    config = AdapterConfig(make="open_clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert config.create() == "adapter"
    assert calls == [(("open_clip", "ViT-B-32"), {"pretrained": "laion2b_s34b_b79k", "base_model_kwargs": None})]
    assert "base_model_kwargs" in _parse_error(AdapterConfig, {"make": "x-clip"})


def test_unet_and_network_create():
    _import_or_skip("dalle2_pytorch.decoder.unet")
    _import_or_skip("dalle2_pytorch.prior.network")
    unet = UnetConfig(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8, image_embed_dim=16, cond_dim=12)
    module = unet.create()
    assert type(module).__name__ == "Unet"
    net = DiffusionPriorNetworkConfig(dim=16, depth=1, heads=2, dim_head=8, max_text_len=4).create()
    assert type(net).__name__ == "DiffusionPriorNetwork"
    assert sum(p.numel() for p in net.parameters()) > 0


def _forbid_clip_build(monkeypatch):
    def boom(self, **kwargs):
        raise AssertionError("CLIP must not be built with build_clip=False")

    monkeypatch.setattr(AdapterConfig, "create", boom)


def test_prior_create_without_clip(monkeypatch):
    _import_or_skip("dalle2_pytorch.prior.diffusion_prior")
    _forbid_clip_build(monkeypatch)
    config = TrainDiffusionPriorConfig.model_validate(_prior_dict()).prior
    prior = config.create(build_clip=False)
    assert type(prior).__name__ == "DiffusionPrior"
    assert not any(key.startswith("clip.") for key in prior.state_dict())


@pytest.mark.parametrize("case", ["prior_1.15.6", "decoder_1.15.6"])
def test_fixture_config_builds_reference_state_dict_layout(case: str):
    """The model built from a 1.15.6 config has exactly the keys and shapes of the reference file."""
    is_prior = case.startswith("prior")
    _import_or_skip("dalle2_pytorch.prior.diffusion_prior" if is_prior else "dalle2_pytorch.decoder.decoder")
    from dalle2_pytorch.serialization import safe_torch_load

    data = _load(COMPAT / case / "config.json")
    config = _config_class(data).model_validate(data)
    model = (config.prior if is_prior else config.decoder).create(build_clip=False)
    reference = {
        key: value.shape
        for key, value in safe_torch_load(COMPAT / case / "checkpoint.pth")["model"].items()
        if "noise_scheduler" not in key  # derived schedule buffers, non-persistent in ours
    }
    ours = {key: value.shape for key, value in model.state_dict().items()}
    assert sorted(set(reference) - set(ours)) == []
    assert sorted(set(ours) - set(reference)) == []
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}


def test_decoder_create_without_clip(monkeypatch):
    _import_or_skip("dalle2_pytorch.decoder.decoder")
    _forbid_clip_build(monkeypatch)
    config = TrainDecoderConfig.model_validate(_decoder_dict()).decoder
    decoder = config.create(build_clip=False)
    assert type(decoder).__name__ == "Decoder"
    assert not any(key.startswith("clip.") for key in decoder.state_dict())


# ---------------------------------------------------------------------------------------------
# config defaults == constructor defaults (the constructor signature is the schema)

_CONSTRUCTORS = [
    # config, module, class, constructor params handled specially, fields required on purpose
    (DiffusionPriorNetworkConfig, "dalle2_pytorch.prior.network", "DiffusionPriorNetwork", set(), set()),
    (DiffusionPriorConfig, "dalle2_pytorch.prior.diffusion_prior", "DiffusionPrior", {"net", "clip"},
     {"image_embed_dim"}),
    (UnetConfig, "dalle2_pytorch.decoder.unet", "Unet", set(), set()),
    (DecoderConfig, "dalle2_pytorch.decoder.decoder", "Decoder", {"unet", "unets", "clip", "vae", "vaes"}, set()),
]


def _normalise(value):
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    return value


@pytest.mark.parametrize(
    "config_cls, module, name, special, required", _CONSTRUCTORS, ids=lambda x: getattr(x, "__name__", None)
)
def test_config_defaults_equal_constructor_defaults(config_cls, module, name, special, required):
    ctor = getattr(_import_or_skip(module), name)
    params = {
        p.name: p
        for p in inspect.signature(ctor).parameters.values()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
    fields = config_cls.model_fields
    missing = sorted(set(params) - set(fields) - special)
    assert not missing, f"{name} arguments without a {config_cls.__name__} field: {missing}"
    extra = sorted(set(fields) - set(params) - special)
    assert not extra, f"{config_cls.__name__} fields that {name} does not accept: {extra}"
    for arg, param in params.items():
        if arg in special:
            continue
        field = fields[arg]
        if param.default is inspect.Parameter.empty or arg in required:
            assert field.is_required(), f"{config_cls.__name__}.{arg} should be required"
            continue
        default = field.get_default(call_default_factory=True)
        assert _normalise(default) == _normalise(param.default), (
            f"{config_cls.__name__}.{arg} default {default!r} != {name} default {param.default!r}"
        )


# ---------------------------------------------------------------------------------------------
# documentation


def test_readme_documents_every_field():
    readme = (REPO / "train_configs" / "README.md").read_text()
    for cls_name in train_configs.__all__:
        cls = getattr(train_configs, cls_name)
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            continue
        assert f"### `{cls_name}`" in readme, cls_name
        section = readme.split(f"### `{cls_name}`", 1)[1].split("\n### ", 1)[0]
        for field in cls.model_fields:
            assert f"| `{field}` |" in section, f"{cls_name}.{field} missing from train_configs/README.md"
