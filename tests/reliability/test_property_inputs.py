"""Issue 12: property-based tests (hypothesis) of the commands' input handling.

* Random mutations of the shipped tiny configs (wrong types, missing / extra keys, out-of-range
  numbers, nulls, emptied lists) go to both training scripts' `--check-config` (validation plus
  building the networks on the meta device; no data, no training).
* Random `dream` argument lists (prompts, options and values, good and bad) run against a folder
  of tiny random-weight models.

Asserted for every example: the command either succeeds (and for `dream` writes exactly the images
it lists) or prints exactly one `<prog>: error:` line as the last line of stderr with a non-zero exit
status; never a traceback, never an "internal error"; and inputs known to be bad (a wrong type in a
typed field, an unknown key, an empty prompt, a negative guidance scale, ...) never succeed.

Fast by default (a fixed set of examples, `derandomize`). For a bigger random run and a count of
what was tried::

    DALLE2_FUZZ_EXAMPLES=1000 DALLE2_FUZZ_REPORT=/tmp/fuzz.json bash scripts/run_tests.sh tests/reliability/test_property_inputs.py
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dalle2_pytorch.cli import main as dream
from dalle2_pytorch.training.scripts import decoder_script, prior_script
from tests.reliability._cli import call, error_line
from tests.scripts._script_helpers import CONFIGS

EXAMPLES = int(os.environ.get("DALLE2_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=EXAMPLES or 60, deadline=None, database=None, derandomize=not EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
STATS: Counter = Counter()

# free-form sections (keyword arguments passed through, `Any` values): their values are not typed
_FREE_FORM = ("base_model_kwargs", "preprocessing", "evaluate", "clip_adapter_overrides")
# fields that take several types on purpose (e.g. pretrained: true / false / a tag string)
_UNION_WITH_STR = ("pretrained",)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("DALLE2_FUZZ_REPORT")
    if path:
        previous = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        for key, value in STATS.items():
            previous[key] = previous.get(key, 0) + value
        Path(path).write_text(json.dumps(previous, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------- configs


def _leaves(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, value) of every scalar and list inside `node`, free-form sections excluded."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _FREE_FORM:
                continue
            out.extend(_leaves(value, path + (key,)))
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        for i, value in enumerate(node):
            out.extend(_leaves(value, path + (i,)))
    else:
        out.append((path, node))
    return out


def _sections(node: Any, path: tuple = ()) -> list[tuple]:
    """Paths of the typed dicts (where an unknown key is an error)."""
    out = [path] if isinstance(node, dict) else []
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in _FREE_FORM and isinstance(value, (dict, list)):
                out.extend(_sections(value, path + (key,)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_sections(value, path + (i,)))
    return out


def _get(node: Any, path: tuple) -> Any:
    for part in path:
        node = node[part]
    return node


def _wrong_type(value: Any) -> list[Any]:
    """Replacements of another JSON type that a typed field must refuse."""
    if isinstance(value, bool):
        return ["true", "false", 2, 0.5]  # (not [value]: many flags take one value per unet)
    if isinstance(value, int):
        return [str(value), True, False, value + 0.5, {"value": value}]
    if isinstance(value, float):
        return [str(value), True, {"value": value}]
    if isinstance(value, str):
        return [5, True, 2.5, {"value": value}]
    return []


_OUT_OF_RANGE = [-1, 0, -0.5, 1e30, 10**12, -(10**12), 1.5]


def _still_there(config: Any, path: tuple, value: Any) -> bool:
    try:
        current = _get(config, path)
    except (KeyError, IndexError, TypeError):
        return False
    return type(current) is type(value) and current == value


@st.composite
def mutated_config(draw, base: dict) -> tuple[dict, list[str], bool]:
    """(config, descriptions, must_fail): must_fail when a mutation that a typed config has to refuse
    (a wrong type in a typed field, an unknown key) is still in the final config."""
    config = copy.deepcopy(base)
    notes: list[str] = []
    bad: list[tuple[tuple, Any]] = []
    touched: set[tuple] = set()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["wrong_type", "missing", "extra", "out_of_range", "null", "list"]))
        if kind == "extra":
            section = draw(st.sampled_from(_sections(config)))
            key = "zz_" + draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8))
            value = draw(st.sampled_from([1, "x", None, True, [1]]))
            _get(config, section)[key] = value
            notes.append(f"extra {'.'.join(map(str, section + (key,)))}")
            bad.append((section + (key,), value))
            continue
        leaves = [(path, value) for path, value in _leaves(config) if not any(path[: len(t)] == t for t in touched)]
        if not leaves:
            continue
        path, value = draw(st.sampled_from(leaves))
        touched.add(path)
        parent, key = _get(config, path[:-1]), path[-1]
        if kind == "wrong_type" and _wrong_type(value):
            parent[key] = draw(st.sampled_from(_wrong_type(value)))
            if key not in _UNION_WITH_STR and "clip" not in path:
                bad.append((path, parent[key]))
        elif kind == "missing" and isinstance(parent, dict):
            del parent[key]
        elif kind == "out_of_range" and isinstance(value, (int, float)) and not isinstance(value, bool):
            parent[key] = draw(st.sampled_from(_OUT_OF_RANGE))
        elif kind == "null":
            parent[key] = None
        elif kind == "list" and isinstance(value, list):
            parent[key] = draw(st.sampled_from([[], value * 2, [None], [value]]))
        else:
            continue
        notes.append(f"{kind} {'.'.join(map(str, path))} -> {json.dumps(_get(config, path)) if kind != 'missing' else '-'}")
    return config, notes, any(_still_there(config, path, value) for path, value in bad)


def _check_config_outcome(cli, prog: str, config: dict, notes: list[str], must_fail: bool, capsys) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config))
        status, out, err = call(cli, ["--config_file", str(path), "--check-config"], capsys)
        assert not any(Path(tmp).iterdir()) or [p.name for p in Path(tmp).iterdir()] == ["config.json"]
    STATS[f"{prog} configs tried"] += 1
    if status == 0:
        assert not must_fail, f"silently accepted: {notes}"
        assert out.startswith("config OK:") and "Traceback" not in err, (notes, err)
        STATS[f"{prog} configs accepted"] += 1
    else:
        assert status == 2, (notes, status, err)
        error_line(err, prog)  # one line, last, no traceback, not an internal error
        STATS[f"{prog} configs refused"] += 1
        STATS[f"{prog} known-bad configs refused"] += must_fail


def _decoder_base() -> dict:
    return json.loads((CONFIGS / "decoder_tiny_cpu.json").read_text())


def _prior_base(tiny_data: dict) -> dict:
    config = json.loads((CONFIGS / "prior_tiny_cpu.json").read_text())
    config["prior"]["clip"]["model"] = tiny_data["clip"]
    config["data"]["image_url"], config["data"]["meta_url"] = tiny_data["image_url"], tiny_data["meta_url"]
    return config


def test_unmutated_configs_pass(tiny_data, capsys):
    _check_config_outcome(decoder_script.cli, "train_decoder.py", _decoder_base(), [], False, capsys)
    _check_config_outcome(prior_script.cli, "train_prior.py", _prior_base(tiny_data), [], False, capsys)


@SETTINGS
@given(data=st.data())
def test_random_decoder_configs(data, capsys):
    config, notes, must_fail = data.draw(mutated_config(_decoder_base()))
    _check_config_outcome(decoder_script.cli, "train_decoder.py", config, notes, must_fail, capsys)


@SETTINGS
@given(data=st.data())
def test_random_prior_configs(data, tiny_data, capsys):
    config, notes, must_fail = data.draw(mutated_config(_prior_base(tiny_data)))
    _check_config_outcome(prior_script.cli, "train_prior.py", config, notes, must_fail, capsys)


# ----------------------------------------------------------------------------------------- dream

_PROMPTS = st.one_of(st.sampled_from(["a cat", "sea", "small buildings", "", "   ", "\t\n", "ünïcødé ☃", "x" * 300]),
                     st.text(max_size=12))
_INTS = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "1.5", "", "99999999999999999999999"]))
_FLOATS = st.one_of(st.floats(-10, 10, allow_nan=False), st.sampled_from(["nan", "inf", "-inf", "-5", "x", "1e400"]))
_OPTIONS = {
    "--num-images": _INTS,
    "--batch-size": _INTS,
    "--seed": st.one_of(st.integers(-5, 2**64 + 5), st.sampled_from(["-1", "seed"])),
    "--steps": _INTS,
    "--prior-steps": _INTS,
    "--decoder-steps": _INTS,
    "--cond-scale": _FLOATS,
    "--prior-cond-scale": _FLOATS,
    "--prior-candidates": st.one_of(st.integers(-1, 3), st.just(5000)),
    "--device": st.sampled_from(["cpu", "cpu", "cuda", "cuda:3", "banana", "meta", "", "mps"]),
    "--output": st.sampled_from(["<out>", "<file>"]),
    "--image": st.sampled_from(["<png>", "<missing>", "<file>"]),
    "--prompts-file": st.sampled_from(["<txt>", "<json>", "<badjson>", "<missing>"]),
    "--colour": st.just("red"),
}


@st.composite
def dream_arguments(draw) -> list[str]:
    argv = list(draw(st.lists(_PROMPTS, max_size=3)))
    for name in draw(st.lists(st.sampled_from(sorted(_OPTIONS)), max_size=5, unique=True)):
        value = draw(_OPTIONS[name])
        argv += [name, value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)]
    return argv


def _materialise(argv: list[str], folder: Path) -> list[str]:
    (folder / "photo.png").parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "photo.png")
    (folder / "a_file").write_text("the user's file")
    (folder / "prompts.txt").write_text("a cat\n\nsea\n")
    (folder / "prompts.json").write_text(json.dumps(["a cat", "tree"]))
    (folder / "bad.json").write_text("[1, 2")
    names = {"<out>": "out", "<file>": "a_file", "<png>": "photo.png", "<missing>": "missing.png",
             "<txt>": "prompts.txt", "<json>": "prompts.json", "<badjson>": "bad.json"}
    return [str(folder / names[a]) if a in names else a for a in argv]


def _known_bad(argv: list[str]) -> list[str]:
    reasons = []
    options = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    option_values = {i + 1 for i in range(len(argv) - 1) if argv[i].startswith("--")}
    positional = [a for i, a in enumerate(argv) if i not in option_values and not a.startswith("--")]
    if any(not p.strip() for p in positional):
        reasons.append("empty prompt")
    for flag in ("--cond-scale", "--prior-cond-scale"):
        try:
            bad = flag in options and not (math.isfinite(float(options[flag])) and float(options[flag]) >= 0)
        except ValueError:
            bad = True
        if bad:
            reasons.append(f"bad {flag}")
    if options.get("--device", "cpu") != "cpu":
        reasons.append("unusable device")
    if options.get("--output", "").endswith("a_file"):
        reasons.append("output is a file")
    if "--colour" in options:
        reasons.append("unknown option")
    return reasons


@SETTINGS
@given(argv=dream_arguments())
def test_random_dream_arguments(argv, model_folder, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        full = _materialise(argv, Path(tmp))
        if "--output" not in argv:
            full += ["--output", str(Path(tmp) / "out")]
        if "--device" not in argv:
            full += ["--device", "cpu"]
        bad = _known_bad(full)
        status, out, err = call(dream, [*full, "--model-dir", str(model_folder)], capsys)
        STATS["dream argument lists tried"] += 1
        if status == 0:
            assert not bad, f"silently accepted ({bad}): {full}"
            written = out.split("\n")[:-1]
            assert written and all(Path(p).is_file() for p in written), (full, out)
            for p in written:
                with Image.open(p) as im:
                    assert im.size == (32, 32)
            STATS["dream argument lists accepted"] += 1
        else:
            assert status in (2, 3), (full, status, err)
            error_line(err, "dream")
            STATS["dream argument lists refused"] += 1
            STATS["dream known-bad argument lists refused"] += bool(bad)
