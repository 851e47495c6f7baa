"""Every public name of every reference module exists here, or is left out on purpose (and why).

`tests/fixtures/compat/reference_api/reference_names_1.15.6.json` holds `dir()` of each module of
dalle2-pytorch 1.15.6 (written in a scratch virtualenv by `make_reference_names.py` beside it; the
reference is never imported here). A name counts when the reference module defined it (its
`__module__` is that module, or it is a plain constant), plus everything in the package root; names a
reference module merely imported from a third-party library (`rearrange`, `Path`, `EMA`, ...) or from
a sibling reference module (`trackers.Decoder`) are not part of its API.

Deliberately left out (the table below gives each name):

* internal helper functions of the reference modules (`exists`, `default`, `cast_tuple`, kwarg
  grouping, chunking, decorators): this package has its own helpers under other names;
* the reference's network building blocks (`Attention`, `ResnetBlock`, ...): the networks are here
  with the reference's *state-dict layout*, but their blocks are organised differently
  (`decoder/blocks.py`, `prior/transformer.py`, `layers/`) and keep their own signatures; exporting
  them under the reference's names would promise its constructor signatures;
* functions whose reference signature differs from ours (`resize_image_to`, the schedule functions):
  schedules are chosen by name (`beta_schedule=`, `diffusion.make_beta_schedule`);
* the optional `YttmTokenizer` (youtokentome is not a dependency) and BPE internals;
* helpers of the reference's non-functional `dream` command (`get_pkg_version` needed
  `pkg_resources`) and of its VQGAN trainer (`yes_or_no` prompted before deleting results; this
  trainer never deletes).
"""

import importlib
import inspect
import json
from pathlib import Path

import pytest

NAMES_FILE = Path(__file__).resolve().parent / "fixtures" / "compat" / "reference_api" / "reference_names_1.15.6.json"
REFERENCE = json.loads(NAMES_FILE.read_text())

_HELPERS = "internal helper of the reference module, not part of its documented API"
_BLOCKS = "reference network building block; the networks keep its state-dict layout, not its block classes"
LEFT_OUT: dict[str, dict[str, str]] = {
    "dalle2_pytorch.cli": {
        "get_pkg_version": "helper of the reference's broken `dream` (needed pkg_resources); ours reports __version__",
        "safeget": _HELPERS,
        "simple_slugify": _HELPERS,
    },
    "dalle2_pytorch.dalle2_pytorch": {
        **{name: _BLOCKS for name in (
            "Attention", "Block", "CausalTransformer", "ChanLayerNorm", "CrossAttention", "CrossEmbedLayer",
            "Downsample", "FeedForward", "LayerNorm", "LinearAttention", "MLP", "NearestUpsample",
            "PixelShuffleUpsample", "RearrangeToSequence", "RelPosBias", "Residual", "ResnetBlock",
            "SinusoidalPosEmb", "SwiGLU", "UpsampleCombiner", "WeightStandardizedConv2d")},
        "UnetOutput": "internal namedtuple of the reference's Decoder (learned-variance parsing)",
        "NAT": "internal constant (1/ln 2 for bits) of the reference's losses; see diffusion/losses.py",
        **{name: "signature differs; schedules are chosen by name (beta_schedule=, diffusion.make_beta_schedule)"
           for name in ("cosine_beta_schedule", "linear_beta_schedule", "quadratic_beta_schedule", "sigmoid_beta_schedule")},
        "resize_image_to": "signature differs (ours: decoder.lowres.resize_image_to(image, size, clamp_range=, downsample_mode=))",
        **{name: "diffusion maths lives in dalle2_pytorch.diffusion under its own names" for name in (
            "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood", "normal_kl", "meanflat", "extract")},
        **{name: _HELPERS for name in (
            "cast_tuple", "default", "eval_decorator", "exists", "first", "freeze_all_layers_",
            "freeze_model_and_make_eval_", "identity", "is_float_dtype", "is_list_str", "l2norm", "log",
            "make_checkpointable", "maybe", "module_device", "normalize_neg_one_to_one", "null_context",
            "pad_tuple_to_length", "prob_mask_like", "set_module_requires_grad_", "unfreeze_all_layers_",
            "unnormalize_zero_to_one", "zero_init_")},
    },
    "dalle2_pytorch.tokenizer": {
        "YttmTokenizer": "optional youtokentome tokenizer; youtokentome is not a dependency",
        **{name: "BPE internals of SimpleTokenizer" for name in (
            "basic_clean", "bytes_to_unicode", "default_bpe", "get_pairs", "whitespace_clean")},
    },
    "dalle2_pytorch.trackers": {"exists": _HELPERS},
    "dalle2_pytorch.train_configs": {"InnerType": "a typing TypeVar of the reference", "default": _HELPERS,
                                     "exists": _HELPERS},
    "dalle2_pytorch.trainer": {name: _HELPERS for name in (
        "cast_torch_tensor", "cast_tuple", "decoder_sample_in_chunks", "default", "exists", "find_first",
        "group_by_key_prefix", "group_dict_by_key", "groupby_prefix_and_trim", "num_to_groups", "pick_and_pop",
        "prior_sample_in_chunks", "split", "split_args_and_kwargs", "split_iterable", "string_begins_with")},
    "dalle2_pytorch.vqgan_vae": {
        "remove_vgg": "not needed: the perceptual network is never part of the module tree here",
        "stable_softmax": "attention uses scaled_dot_product_attention (same softmax)",
        **{name: _HELPERS for name in (
            "default", "eval_decorator", "exists", "group_by_key_prefix", "group_dict_by_key",
            "groupby_prefix_and_trim", "l2norm", "log", "pick_and_pop", "safe_div", "string_begins_with")},
    },
    "dalle2_pytorch.vqgan_vae_trainer": {
        "yes_or_no": "the reference prompted before deleting results_folder; this trainer never deletes (it resumes)",
        **{name: _HELPERS for name in ("accum_log", "cast_tuple", "cycle", "exists", "noop")},
    },
}


def reference_api(module: str) -> dict[str, dict]:
    """Names the reference module itself defines (everything, for the package root)."""
    names = REFERENCE["modules"][module]
    if module in ("dalle2_pytorch", "dalle2_pytorch.version"):
        return names
    # `__version__` elsewhere is an import from dalle2_pytorch.version
    return {n: info for n, info in names.items() if info["origin"] in (module, None) and n != "__version__"}


@pytest.mark.parametrize("module", sorted(REFERENCE["modules"]))
def test_reference_names_exist_or_are_left_out_on_purpose(module):
    ours = importlib.import_module(module)
    left_out = LEFT_OUT.get(module, {})
    missing, wrong_kind = [], []
    for name, info in reference_api(module).items():
        if name in left_out:
            assert not hasattr(ours, name), f"{module}.{name} exists now: remove it from LEFT_OUT"
            continue
        if not hasattr(ours, name):
            missing.append(name)
            continue
        value = getattr(ours, name)
        if info["kind"] == "class" and not inspect.isclass(value) or info["kind"] == "function" and not callable(value):
            wrong_kind.append(f"{name} ({info['kind']} in the reference)")
    assert not missing, f"{module} lacks reference names {missing}"
    assert not wrong_kind, f"{module}: {wrong_kind}"
    stale = sorted(set(left_out) - set(reference_api(module)))
    assert not stale, f"LEFT_OUT[{module!r}] names {stale} that the reference module does not define"


def test_reference_version_of_the_names_file():
    assert REFERENCE["reference_version"] == "1.15.6"
    assert set(LEFT_OUT) <= set(REFERENCE["modules"])


def test_optimizer_follows_the_reference_grouping():
    import torch

    from dalle2_pytorch.optimizer import get_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = get_optimizer(model.parameters(), lr=2e-4, wd=0.1)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.ndim for p in decayed["params"]] == [2]
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert opt.defaults["lr"] == 2e-4 and opt.defaults["betas"] == (0.9, 0.99)
    model[0].weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in get_optimizer(model.parameters(), filter_by_requires_grad=True).param_groups) == 3
    with pytest.warns(UserWarning, match="ignores amp"):
        get_optimizer(model.parameters(), amp=True)


def test_utils_helpers():
    from dalle2_pytorch.utils import Timer, import_or_print_error, print_ribbon

    assert print_ribbon("x", symbol="-", repeat=2) == "-- x --"
    assert Timer().elapsed() >= 0
    assert import_or_print_error("json").dumps({}) == "{}"
    with pytest.raises(ImportError, match="pip install nothing-here"):
        import_or_print_error("no_such_module_xyz", "pip install nothing-here")


def test_train_diffusion_prior_script_is_train_prior():
    root = Path(__file__).resolve().parents[1]
    import train_diffusion_prior
    import train_prior

    assert train_diffusion_prior.cli is train_prior.cli
    assert (root / "train_diffusion_prior.py").is_file()
    from dalle2_pytorch.command_line import UsageError

    with pytest.raises(UsageError, match="--config_file"):  # the same one-line argument error
        train_diffusion_prior.main([])


def test_tracker_savers_and_loaders_from_reference_configs(tmp_path):
    from dalle2_pytorch.train_configs import TrackerConfig
    from dalle2_pytorch.trackers import HuggingfaceSaver, LocalLoader, LocalSaver, Tracker, create_saver

    ckpt = tmp_path / "old.pth"
    ckpt.write_bytes(b"")
    config = TrackerConfig.model_validate({
        "data_path": str(tmp_path / "run"),
        "log": {"log_type": "console"},
        "load": {"load_from": "local", "file_path": str(ckpt)},
        "save": [{"save_to": "local", "save_latest_to": str(tmp_path / "latest.pth"), "save_type": "model"},
                 {"save_to": "huggingface", "huggingface_repo": "me/model", "save_best_to": "best.pth"}],
    })
    savers = [s.create(config.data_path) for s in config.save_configs]
    assert isinstance(savers[0], LocalSaver) and savers[0].saving_latest and savers[0].save_type == "model"
    assert isinstance(savers[1], HuggingfaceSaver) and savers[1].huggingface_repo == "me/model"
    loader = config.load.create(config.data_path)
    assert isinstance(loader, LocalLoader) and loader.fetch() == ckpt
    tracker = config.create(full_config=None, extra_config={})
    assert isinstance(tracker, Tracker) and tracker.load_config.file_path == str(ckpt)
    assert [type(s) for s in tracker.save_configs] == [LocalSaver, HuggingfaceSaver]
    tracker.add_saver(create_saver("local", tracker.data_path, save_best_to=str(tmp_path / "b.pth")))
    assert len(tracker.save_configs) == 3
    with pytest.raises(ValueError, match="unknown saver type"):
        create_saver("s3", tmp_path)
    with pytest.raises(TypeError, match="bogus"):
        LocalSaver(tmp_path, save_latest_to="x", bogus=1)
    with pytest.raises(FileNotFoundError):
        LocalLoader(tmp_path, file_path=tmp_path / "missing.pth").init()
    # LocalSaver copies files and checkpoint folders atomically
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "inner" / "w.bin").write_bytes(b"123")
    LocalSaver(tmp_path).save_file(src, str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "inner" / "w.bin").read_bytes() == b"123"
