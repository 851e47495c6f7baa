"""The demo runner (`python -m dalle2_pytorch.demo.run --tiny`): every stage end to end, reuse,
resume and retraining when inputs change, and the report's pieces."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_pytorch.demo import report
from dalle2_pytorch.demo import run as demo_run

from tests.demo._demo_helpers import run_tiny_demo


# the tiny preset's cascade is 8 -> 16 -> 32 px: its upsampler runs are named by their output size
TRAINING_STAGES = ("prior", "decoder base unet", "decoder up16 unet", "decoder up32 unet")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow  # uses the tiny demo run (every model of the demo is trained)
def test_tiny_demo_writes_models_grid_and_report(tiny_demo):
    out, result, lines = tiny_demo
    assert (out / "grid.png").is_file() and (out / "report.md").is_file()
    saved = json.loads((out / "report.json").read_text())
    assert saved["measures"].keys() >= {"ground_truth", "decoder_alone", "prior_decoder", "seen_prior_decoder"}
    n = demo_run.TINY.images_per_prompt * len(saved["settings"]["heldout"])
    for key in ("ground_truth", "decoder_alone", "prior_decoder"):
        m = saved["measures"][key]
        assert m["n"] == n
        assert 0.0 <= m["colour_acc"] <= 1.0 and 0.0 <= m["shape_acc"] <= 1.0
        assert -1.0 <= m["clip_similarity"] <= 1.0
    # the ceiling: the independent evaluator reads fresh renders correctly
    assert saved["measures"]["ground_truth"]["colour_acc"] == 1.0
    assert saved["measures"]["ground_truth"]["shape_acc"] >= 0.9
    assert saved["total_seconds"] > 0 and set(TRAINING_STAGES) <= set(saved["timings"])
    md = (out / "report.md").read_text()
    assert "prior + decoder (text → image)" in md and "decoder on true CLIP image embeddings" in md
    assert "![grid](grid.png)" in md
    # model index: relative paths that exist, the layout `dream --model-dir` reads
    index = json.loads((out / "dalle2.json").read_text())
    assert not Path(index["prior"]).is_absolute() and (out / index["prior"] / "model.safetensors").is_file()
    assert (out / index["decoder"] / "model.safetensors").is_file()
    assert (out / index["clip"]["model"] / "clip.safetensors").is_file()
    # resolved configs carry the output paths
    prior_cfg = json.loads((out / "configs" / "prior.json").read_text())
    assert prior_cfg["tracker"]["data_path"] == str(out / "prior_run")
    configs = [json.loads((out / "configs" / f"decoder_{u}.json").read_text()) for u in ("base", "up16", "up32")]
    assert [c["train"]["unet_training_mask"] for c in configs] == [[True, False, False], [False, True, False],
                                                                    [False, False, True]]
    # the upsamplers need no CLIP embeddings (they trained beside the CLIP)
    assert [c["data"]["img_embeddings_url"] is None for c in configs] == [False, True, True]
    assert any("stage 9/9" in line for line in lines)
    # the index carries the report's sampling settings for `dream`
    assert index["defaults"] == {"cond_scale": demo_run.TINY.decoder_cond_scale, "prior_cond_scale": 1.0,
                                 "prior_candidates": demo_run.TINY.prior_candidates}
    assert index["clip"]["make"] == "small-clip"
    # progress lines with the time left, and a per-prompt table with the sampler and the time per image
    assert any("to go" in line and "elapsed" in line for line in lines)
    assert "| a red star in the top left |" in md and "s per image" in md and "dpmpp_2m" in md
    assert saved["settings"]["seconds_per_image"] > 0 and saved["per_prompt"]["a red star"]["shape"]["min"] >= 0


@pytest.mark.slow  # uses the tiny demo run (every model of the demo is trained)
def test_grid_has_one_row_per_prompt(tiny_demo):
    out, _, _ = tiny_demo
    with Image.open(out / "grid.png") as grid:
        width, height = grid.size
    heldout = json.loads((out / "report.json").read_text())["settings"]["heldout"]
    rows = 2 * len(heldout) + report._SEEN_IN_GRID + len(report.FREE_FORM_PROMPTS)  # held out, with a position
    assert height == rows * (96 + 2) + 2
    assert width == 330 + demo_run.TINY.grid_columns * (96 + 2) + 2


@pytest.mark.slow  # uses the tiny demo run (every model of the demo is trained)
def test_joined_decoder_has_the_upsampler_of_its_own_run(tiny_demo):
    from dalle2_pytorch.decoder import Decoder

    out, _, _ = tiny_demo
    joined = Decoder.from_checkpoint(out / "decoder")
    assert joined.image_sizes == (8, 16, 32)
    runs = [Decoder.from_checkpoint(out / f"decoder_{name}_run" / "export") for name in ("base", "up16", "up32")]
    for i, run in enumerate(runs):
        for (k, a), b in zip(joined.unets[i].state_dict().items(), run.unets[i].state_dict().values()):
            assert torch.equal(a, b), k
    # the base run did not train the upsamplers: the joined decoder must not have taken those
    for i in (1, 2):
        assert any(not torch.equal(a, b) for a, b in zip(joined.unets[i].parameters(), runs[0].unets[i].parameters()))


@pytest.mark.slow  # uses the tiny demo run (every model of the demo is trained)
def test_second_run_reuses_every_trained_stage(tiny_demo, tmp_path):
    out = _copy(tiny_demo[0], tmp_path / "demo")
    exports = {p: p.stat().st_mtime_ns for p in out.glob("*_run/export/model.safetensors")}
    result, lines = run_tiny_demo(out)
    for stage in TRAINING_STAGES + ("clip", "embeddings"):
        assert result["timings"][stage]["reused"], stage
        assert any(line.startswith(f"[demo] {stage}: reused") for line in lines), stage
    assert {p: p.stat().st_mtime_ns for p in exports} == exports
    assert (out / "grid.png").is_file()


@pytest.mark.slow  # uses the tiny demo run (every model of the demo is trained)
def test_interrupted_run_resumes_from_its_checkpoint(tiny_demo, tmp_path):
    out = _copy(tiny_demo[0], tmp_path / "demo")
    state_file = out / "stages" / "decoder_up16_unet.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "finished": False}))
    shutil.rmtree(out / "decoder_up16_run" / "export")
    steps_before = [json.loads(l)["step"] for l in (out / "decoder_up16_run" / "metrics.jsonl").read_text().splitlines()]
    result, lines = run_tiny_demo(out)
    assert any("resuming the unfinished run" in line for line in lines)
    assert not result["timings"]["decoder up16 unet"]["reused"]
    assert result["timings"]["prior"]["reused"]
    assert (out / "decoder_up16_run" / "export" / "model.safetensors").is_file()
    steps_after = [json.loads(l)["step"] for l in (out / "decoder_up16_run" / "metrics.jsonl").read_text().splitlines()]
    assert max(steps_after) == max(steps_before)  # continued from the checkpoint, not trained again


@pytest.mark.slow  # uses the tiny demo run (every model of the demo is trained)
def test_changed_config_retrains_that_stage_only(tiny_demo, tmp_path):
    out = _copy(tiny_demo[0], tmp_path / "demo")
    preset = dataclasses.replace(demo_run.TINY, prior_overrides={**demo_run.TINY.prior_overrides, "train.lr": 5e-4})
    result, lines = run_tiny_demo(out, preset=preset)
    assert not result["timings"]["prior"]["reused"]
    assert any("trained from other inputs" in line for line in lines)
    assert all(result["timings"][f"decoder {u} unet"]["reused"] for u in ("base", "up16", "up32"))
    assert json.loads((out / "configs" / "prior.json").read_text())["train"]["lr"] == 5e-4


@pytest.mark.slow  # uses the tiny demo run (every model of the demo is trained)
def test_training_lanes_run_side_by_side_and_a_failed_run_names_its_log(tiny_demo, tmp_path):
    assert any("2 workers side by side (1 CPU thread(s) each)" in line for line in tiny_demo[2])
    out = _copy(tiny_demo[0], tmp_path / "demo")
    preset = dataclasses.replace(demo_run.TINY, prior_overrides={**demo_run.TINY.prior_overrides, "train.lr": -1.0},
                                 base_overrides={**demo_run.TINY.base_overrides, "train.lr": 2e-4})
    with pytest.raises(RuntimeError, match=r"prior training stopped \(exit status 2\).*logs/prior_run.log"):
        run_tiny_demo(out, preset=preset)
    log = (out / "logs" / "prior_run.log").read_text()
    assert "train.lr" in log  # the script's config error, kept for the user
    # the other lane finished its (changed, so retrained) base Unet before the error was raised
    base_state = json.loads((out / "stages" / "decoder_base_unet.json").read_text())
    assert base_state["finished"] and (out / "decoder_base_run" / "export" / "model.safetensors").is_file()
    assert json.loads((out / "configs" / "decoder_base.json").read_text())["train"]["lr"] == 2e-4


def test_single_thread_runs_the_training_one_after_another(tmp_path):
    from dalle2_pytorch.demo.training_runs import TrainingRun, run_in_lanes

    class Book:
        def __init__(self):
            self.states = {}

        def is_done(self, name, key):
            return None

        def get(self, name):
            return self.states.get(name)

        def write(self, name, key, finished, seconds=None, **extra):
            self.states[name] = {"key": key, "finished": finished}

    progress = demo_run.Progress(num_stages=2, echo=lambda line: None)
    lines: list[str] = []
    runs = [TrainingRun(name, "prior", tmp_path / f"{name}.json", tmp_path / f"{name}_run", "k", 1) for name in "ab"]
    with pytest.raises(RuntimeError) as info:
        run_in_lanes([runs], threads=1, book=Book(), progress=progress, echo=lines.append)
    # one lane: "a" fails (no config file), so "b" never starts
    assert "a training stopped" in str(info.value) and "b training" not in str(info.value)
    assert not any("lanes side by side" in line for line in lines)
    assert (tmp_path / "logs" / "a_run.log").is_file() and not (tmp_path / "logs" / "b_run.log").exists()


# ---------------------------------------------------------------------------------------------- pieces


def test_fingerprint_and_index_width():
    assert demo_run.fingerprint({"a": 1, "b": [1, 2]}) == demo_run.fingerprint({"b": [1, 2], "a": 1})
    assert demo_run.fingerprint({"a": 1}) != demo_run.fingerprint({"a": 2})
    assert demo_run._index_width(1000) == 3 and demo_run._index_width(10) == 1
    with pytest.raises(ValueError, match="power of ten"):
        demo_run._index_width(500)


def test_resolve_config_applies_overrides(tmp_path):
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"a": {"b": 1, "c": [1, 2]}, "d": "x"}))
    data = demo_run.resolve_config(template, {"a.b": 5, "a.c.1": 7, "d": "/some/path"}, tmp_path / "o" / "r.json")
    assert data == {"a": {"b": 5, "c": [1, 7]}, "d": "/some/path"}
    assert json.loads((tmp_path / "o" / "r.json").read_text()) == data


def test_resolve_config_without_a_path_writes_nothing(tmp_path):
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"a": {"b": 1}}))
    assert demo_run.resolve_config(template, {"a.b": 2}, None) == {"a": {"b": 2}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_unet_stages_follow_the_image_sizes():
    assert demo_run.unet_stages({"decoder": {"image_sizes": [16, 32, 64]}}) == [
        ("base", "decoder base unet"), ("up32", "decoder up32 unet"), ("up64", "decoder up64 unet")]
    assert demo_run.unet_stages({"decoder": {"image_sizes": [32, 64]}}) == [
        ("base", "decoder base unet"), ("up64", "decoder up64 unet")]


def test_shipped_demo_configs_validate():
    from dalle2_pytorch.config import TrainDecoderConfig, TrainDiffusionPriorConfig
    from dalle2_pytorch.config.base import load_json

    folder = demo_run.find_config_dir()
    decoder = TrainDecoderConfig.model_validate(load_json(folder / "demo_decoder.json"))
    assert decoder.decoder.image_sizes == (16, 32, 64) and len(decoder.decoder.unets) == 3
    assert decoder.data.cache_in_memory
    prior = load_json(folder / "demo_prior.json")
    prior["prior"]["clip"] = None  # the template points at demo_output/clip, made by the demo
    assert TrainDiffusionPriorConfig.model_validate(prior).prior.image_embed_dim == 64


def test_measure_reads_ground_truth_and_rejects_mismatched_prompts():
    from tests.conftest import make_x_clip_adapter

    clip = make_x_clip_adapter()
    images, prompts = report.ground_truth([("red", "circle"), ("blue", "square")], 3, 32, seed=0)
    assert images.shape == (6, 3, 32, 32) and prompts[0] == "a red circle" and prompts[-1] == "a blue square"
    m = report.measure(images, prompts, clip)
    assert m["colour_acc"] == 1.0 and m["shape_acc"] == 1.0 and m["n"] == 6
    assert m["per_prompt"]["a red circle"]["most_seen"] == "red circle"
    wrong = report.measure(images, ["a green star"] * 6, clip)
    assert wrong["colour_acc"] == 0.0 and wrong["shape_acc"] == 0.0
    with pytest.raises(ValueError, match="one prompt per image"):
        report.measure(images, prompts[:-1], clip)


def test_shape_rate_by_size_splits_small_and_large_renders():
    images, prompts, sizes = report.ground_truth_with_sizes([("red", "star"), ("blue", "square")], 6, 64, seed=0)
    again, prompts_again = report.ground_truth([("red", "star"), ("blue", "square")], 6, 64, seed=0)
    assert torch.equal(images, again) and prompts == prompts_again  # the same renders as ground_truth
    assert set(sizes) == {"small", "large"}
    rates = report.shape_rate_by_size(images, prompts, sizes)
    assert {k: v["n"] for k, v in rates.items()} == {s: sizes.count(s) for s in ("small", "large")}
    assert all(v["shape_acc"] == 1.0 for v in rates.values())
    wrong = report.shape_rate_by_size(images, ["a red circle"] * len(prompts), sizes)
    assert all(v["shape_acc"] == 0.0 for v in wrong.values())
    only_large = report.shape_rate_by_size(images, prompts, ["large"] * len(prompts))
    assert list(only_large) == ["large"] and only_large["large"]["n"] == len(prompts)


def test_decode_embeddings_gives_a_text_conditioned_decoder_its_text():
    from dalle2_pytorch.decoder import Decoder, Unet
    from tests.conftest import make_x_clip_adapter

    torch.manual_seed(0)
    clip = make_x_clip_adapter()
    dim = clip.dim_latent
    base = Unet(dim=8, image_embed_dim=dim, cond_dim=16, dim_mults=(1, 2), text_embed_dim=clip.text_encodings_dim,
                cond_on_text_encodings=True, attn_dim_head=8, attn_heads=2)
    decoder = Decoder(base, clip=clip, image_size=8, timesteps=10, sample_timesteps=3, learned_variance=False)
    with torch.no_grad():  # a random decoder whose zero-initialised output conv would hide any conditioning
        for p in decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    embed = torch.nn.functional.normalize(torch.randn(3, dim), dim=-1)
    red = clip.embed_text(clip.tokenize(["a red star"] * 3)).text_encodings
    blue = clip.embed_text(clip.tokenize(["a blue circle"] * 3)).text_encodings
    a = report.decode_embeddings(decoder, embed, text_encodings=red, batch_size=2)
    b = report.decode_embeddings(decoder, embed, text_encodings=blue, batch_size=2)
    assert a.shape == (3, 3, 8, 8) and torch.equal(a, report.decode_embeddings(decoder, embed, text_encodings=red, batch_size=2))
    assert not torch.allclose(a, b)  # the text reached the Unet, batch by batch
    with pytest.raises(ValueError):  # without its text the text-conditioned decoder refuses
        report.decode_embeddings(decoder, embed)


def test_make_grid_layout(tmp_path):
    rows = [("a", torch.zeros(2, 3, 8, 8)), ("b", torch.ones(3, 3, 8, 8))]
    path = report.make_grid(rows, tmp_path / "g.png", cell=10, label_width=20, pad=1)
    with Image.open(path) as im:
        assert im.size == (20 + 3 * 11 + 1, 2 * 11 + 1)
        px = np.asarray(im)
    assert (px[1 + 11, 21] == 255).all() and (px[1, 21] == 0).all()  # row b is white, row a black


def test_cli_reports_a_missing_config_folder(tmp_path, capsys):
    status = demo_run.main(["--output", str(tmp_path / "o"), "--tiny", "--configs", str(tmp_path / "nowhere")])
    assert status == 2
    assert "demo_prior.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- scheduler


class _Book:
    def __init__(self):
        self.states = {}

    def is_done(self, name, key):
        return None

    def get(self, name):
        return self.states.get(name)

    def write(self, name, key, finished, seconds=None, **extra):
        self.states[name] = {"key": key, "finished": finished}


def test_tasks_wait_for_their_dependencies_and_a_failure_stops_only_its_dependents():
    import threading
    import time as _time

    from dalle2_pytorch.demo.training_runs import InProcessTask, run_tasks

    events: list[str] = []
    lock = threading.Lock()

    def work(name, seconds=0.05, fail=False):
        def run(report):
            with lock:
                events.append(f"start {name}")
            report(0.5)
            _time.sleep(seconds)
            if fail:
                raise RuntimeError(f"{name} broke")
            with lock:
                events.append(f"end {name}")
            return name.upper()
        return run

    progress = demo_run.Progress(num_stages=5, echo=lambda line: None)
    lines: list[str] = []
    tasks = [InProcessTask("clip", work("clip", 0.2)), InProcessTask("emb", work("emb"), after=("clip",)),
             InProcessTask("up", work("up", 0.05))]
    results = run_tasks(tasks, workers=2, threads=2, book=_Book(), progress=progress, echo=lines.append, status_every=0.05)
    assert results == {"clip": "CLIP", "emb": "EMB", "up": "UP"}
    assert events.index("end clip") < events.index("start emb")
    assert events.index("start up") < events.index("end clip")  # the independent task ran beside the first
    assert any("2 workers side by side" in line for line in lines)
    assert any("elapsed, about" in line and "to go" in line for line in lines)

    events.clear()
    tasks = [InProcessTask("clip", work("clip", fail=True)), InProcessTask("emb", work("emb"), after=("clip",)),
             InProcessTask("up", work("up"))]
    with pytest.raises(RuntimeError) as info:
        run_tasks(tasks, workers=2, threads=2, book=_Book(), progress=progress, echo=lines.append)
    assert "clip broke" in str(info.value) and "emb was not run: it needs clip" in str(info.value)
    assert "end up" in events and "start emb" not in events
    with pytest.raises(ValueError, match="unknown tasks"):
        run_tasks([InProcessTask("a", work("a"), after=("b",))], workers=1, threads=1, book=_Book(),
                  progress=progress, echo=lines.append)


def test_time_left_replays_the_schedule():
    from dalle2_pytorch.demo.training_runs import InProcessTask, Schedule

    noop = lambda report: None
    tasks = [InProcessTask("clip", noop, estimate=100), InProcessTask("emb", noop, after=("clip",), estimate=10),
             InProcessTask("base", noop, after=("emb",), estimate=500), InProcessTask("prior", noop, after=("emb",), estimate=20),
             InProcessTask("up32", noop, estimate=300), InProcessTask("up64", noop, estimate=300)]
    schedule = Schedule(tasks, workers=2, tail_estimate=50)
    # worker 1: clip 100, emb 10, base 500 (ends 610); worker 2: up32 300, prior 20, up64 300 (ends 620)
    assert schedule.remaining(0.0) == pytest.approx(620 + 50)
    assert Schedule(tasks, workers=1).remaining(0.0) == pytest.approx(1230)
    # measured speed: clip finished in 200 s instead of 100 -> everything is expected twice as slow
    schedule.started["clip"], schedule.finished["clip"] = 0.0, 200.0
    schedule.started["up32"] = 0.0
    tasks[4]._fraction = 0.5  # half of up32 done after 200 s: 200 s left
    assert schedule.remaining(200.0) == pytest.approx(max(2 * (10 + 500), 200 + 2 * (20 + 300)) + 2 * 50)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGUSR2"), reason="needs SIGUSR2")
@pytest.mark.parametrize("quick_first", [True, False])
def test_a_run_left_alone_gets_the_idle_workers_cpus(tmp_path, monkeypatch, quick_first):
    """Two workers of one thread each; when one has nothing left to start, the training script still
    running (or still starting) is given both CPUs."""
    import time as _time

    from dalle2_pytorch.demo import training_runs
    from dalle2_pytorch.demo.training_runs import InProcessTask, TrainingRun, run_tasks

    monkeypatch.setitem(training_runs._SCRIPT_MODULES, "decoder", "tests.demo._more_cpus_script")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"run_dir": str(tmp_path / "run")}))
    run = TrainingRun("lone run", "decoder", config, tmp_path / "run", "k", 1)
    # the quick task ends before the script has started, or long after it is waiting
    quick = InProcessTask("quick", lambda report: _time.sleep(0 if quick_first else 3))
    lines: list[str] = []
    progress = demo_run.Progress(num_stages=2, echo=lambda line: None)
    results = run_tasks([run, quick], workers=2, threads=2, book=_Book(), progress=progress, echo=lines.append,
                        status_every=60)
    assert results["lone run"] == tmp_path / "run" / "export"
    assert any("lone run: nothing else is left to start, it now uses 2 CPU threads" in line for line in lines)
    assert "[lone run] threads 1 -> 2" in lines
