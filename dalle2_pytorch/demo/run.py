"""`make demo`: text-to-image end to end on the embedded shapes dataset, on a CPU, with no downloads.

    python -m dalle2_pytorch.demo.run --output demo_output            # the full demo (~15 min, 2 cores)
    python -m dalle2_pytorch.demo.run --output /tmp/tiny --tiny       # seconds: tiny sizes (tests)

Stages, each in its own folder of the output directory:

1. ``data/``        procedural captioned shapes at 64 px (:mod:`dalle2_pytorch.demo.shapes`);
2. the training work, scheduled on the CPUs by dependencies (:mod:`dalle2_pytorch.demo.training_runs`):

   * ``clip/``        a small torch-only CLIP trained on the shapes (:mod:`dalle2_pytorch.demo.train_clip`);
   * ``embeddings/``  its image/text embeddings of every shard (:func:`dalle2_pytorch.data.precompute_embeddings`);
   * ``prior_run/``   the diffusion prior, ``train_prior.py`` with ``train_configs/demo_prior.json``;
   * ``decoder_base_run/``, ``decoder_up32_run/``, ``decoder_up64_run/``  one run per Unet of
     ``train_configs/demo_decoder.json`` (a 16 px base, 32 px and 64 px upsamplers; the folders are named
     by each Unet's output size, see ``unet_stages``), each ``train_decoder.py`` with that config
     (``train.unet_training_mask`` picks the Unet). The upsamplers need no CLIP, so they train beside the
     CLIP from the start;

3. ``decoder/``     the three Unets joined into one export; ``dalle2.json``, the model index
   ``dream --model-dir OUTPUT`` reads (with the report's sampling settings as ``dream``'s defaults);
4. ``grid.png``, ``report.md``, ``report.json``  images for a list of prompts and the quality measure
   (:mod:`dalle2_pytorch.demo.report`).

The resolved training configs (paths and preset values filled in) are written to ``configs/``.
Every stage records its input fingerprint and duration in ``stages/{name}.json`` when it finishes; a
second run skips finished stages whose fingerprint still matches, and the training scripts resume
an interrupted run from its newest checkpoint. A stage whose inputs changed is redone from scratch,
and so is everything after it. A progress line with the time left is printed every 30 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dalle2_pytorch.demo.training_runs import InProcessTask, TrainingRun, run_tasks

__all__ = ["DemoPreset", "FULL", "TINY", "find_config_dir", "main", "run_demo"]

MODEL_INDEX = "dalle2.json"


@dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo run. ``*_overrides`` are dotted-key overrides of the shipped configs.

    Attributes:
        num_train, num_val: dataset samples; ``samples_per_shard`` must be a power of ten (the
            last digits of a sample key are its row in the shard's embedding file).
        image_size: side of the rendered dataset images (the decoder's output size).
        clip_steps, clip_batch_size, clip_model_kwargs, clip_evaluate: demo CLIP training (``train_clip``).
        prior_overrides: applied to ``demo_prior.json``.
        decoder_overrides: applied to ``demo_decoder.json`` for every Unet's run;
            ``base_overrides`` to the base Unet's run only, ``upsampler_overrides`` to each upsampler's.
        images_per_prompt: generated images per held-out prompt for the quality measure.
        grid_columns: samples per prompt in ``grid.png``.
        prior_candidates, prior_cond_scale, decoder_cond_scale: sampling settings of the report
            (and ``dream``'s defaults on the demo's model folder).
        estimates: expected seconds of each task on the demo machine (for the time-left estimate).
    """

    name: str
    num_train: int
    num_val: int
    image_size: int
    samples_per_shard: int
    clip_steps: int
    clip_batch_size: int = 64
    clip_model_kwargs: dict = field(default_factory=dict)
    clip_evaluate: bool = True
    prior_overrides: dict = field(default_factory=dict)
    decoder_overrides: dict = field(default_factory=dict)
    base_overrides: dict = field(default_factory=dict)
    upsampler_overrides: dict = field(default_factory=dict)
    images_per_prompt: int = 16
    grid_columns: int = 8
    prior_candidates: int = 16
    prior_cond_scale: float = 1.0
    decoder_cond_scale: float = 2.0
    estimates: dict = field(default_factory=dict)


#: The ``make demo`` run (timings in train_configs/README.md and the report).
FULL = DemoPreset(
    name="full",
    num_train=10_000,
    num_val=500,
    image_size=64,
    samples_per_shard=1000,
    clip_steps=3000,
    # the upsamplers only sharpen (their loss is nearly flat after a few epochs); 1,250 steps each at the
    # learning rate they were measured with (the base Unet's 3e-3 is from demo_decoder.json)
    upsampler_overrides={"train.epochs": 4, "train.cosine_decay_max_steps": 1250, "train.lr": 1e-3},
    estimates={"clip": 300, "embeddings": 10, "prior": 12, "decoder base unet": 900, "decoder up32 unet": 155,
               "decoder up64 unet": 150, "report": 30},
)

#: Seconds-long run at toy sizes for tests: every stage runs, nothing is any good.
TINY = DemoPreset(
    name="tiny",
    num_train=200,
    num_val=20,
    image_size=32,
    samples_per_shard=100,
    clip_steps=4,
    clip_batch_size=16,
    clip_model_kwargs={"image_widths": [16, 16], "dim_text": 16, "dim_image": 16, "dim_latent": 16,
                       "text_depth": 1, "text_heads": 2, "image_grid": 2},
    clip_evaluate=False,
    prior_overrides={
        "prior.net.dim": 16, "prior.image_embed_dim": 16, "prior.net.depth": 1, "prior.net.heads": 2,
        "prior.net.dim_head": 8, "data.batch_size": 32, "train.epochs": 1, "train.eval_timesteps": [4],
        "prior.sample_timesteps": 4,
    },
    decoder_overrides={
        "decoder.image_sizes": [8, 16, 32], "decoder.random_crop_sizes": [None, 8, 8],
        "decoder.unets.0.dim": 8, "decoder.unets.0.dim_mults": [1, 2], "decoder.unets.0.self_attn": [False, True],
        "decoder.unets.0.num_resnet_blocks": 1, "decoder.unets.0.image_embed_dim": 16,
        "decoder.unets.0.cond_dim": 16, "decoder.unets.1.dim": 8, "decoder.unets.1.dim_mults": [1, 2],
        "decoder.unets.1.image_embed_dim": 16, "decoder.unets.1.cond_dim": 16,
        "decoder.unets.2.dim": 8, "decoder.unets.2.dim_mults": [1, 2],
        "decoder.unets.2.image_embed_dim": 16, "decoder.unets.2.cond_dim": 16, "decoder.sample_timesteps": [4, 4, 4],
        "data.batch_size": 16, "train.n_sample_images": 2, "train.save_every_n_samples": 64,
        # a handful of steps: full learning rate from the first one, and an EMA that follows them, or the
        # exports keep the zero-initialised output convs (flat gray images that ignore the embedding)
        "train.lr": 1e-2, "train.warmup_steps": 0,
        "train.ema_update_after_step": 0, "train.ema_update_every": 1, "train.ema_beta": 0.5,
    },
    base_overrides={"train.epoch_samples": 64, "train.epochs": 1},
    upsampler_overrides={"train.epoch_samples": 32, "train.epochs": 1},
    images_per_prompt=2,
    grid_columns=2,
    prior_candidates=2,
    estimates={"clip": 2, "embeddings": 1, "prior": 10, "decoder base unet": 10, "decoder up16 unet": 10,
               "decoder up32 unet": 10, "report": 10},
)

PRESETS = {"full": FULL, "tiny": TINY}


# ----------------------------------------------------------------------------------------------
# bookkeeping


def fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (the identity of a stage's inputs)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class StageBook:
    """Per-stage state files ``{output}/stages/{name}.json``: ``{"key", "finished", "seconds"}``.

    ``key`` fingerprints the stage's inputs; a stage is reused only when it finished with the same key.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, name: str) -> dict | None:
        try:
            return json.loads((self.folder / f"{_slug(name)}.json").read_text())
        except (OSError, ValueError):
            return None

    def is_done(self, name: str, key: str) -> dict | None:
        state = self.get(name)
        return state if state is not None and state.get("finished") and state.get("key") == key else None

    def write(self, name: str, key: str, finished: bool, seconds: float | None = None, **extra: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{_slug(name)}.json"
        tmp = path.with_name(path.name + ".tmp")
        state = {"stage": name, "key": key, "finished": finished, "seconds": None if seconds is None else round(seconds, 2), **extra}
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


class Progress:
    """Prints stage headers and records per-stage durations (``timings``: name -> seconds, reused flag)."""

    def __init__(self, num_stages: int, echo: Callable[[str], None] = print) -> None:
        self.num_stages, self.echo, self.index = num_stages, echo, 0
        self.timings: dict[str, dict] = {}
        self.start = time.perf_counter()

    def stage(self, name: str, what: str) -> float:
        self.index += 1
        self.echo(f"\n[demo] stage {self.index}/{self.num_stages}: {name} - {what}  "
                  f"(elapsed {self.elapsed():.0f}s)")
        sys.stdout.flush()
        return time.perf_counter()

    def done(self, name: str, started: float, reused: bool, original_seconds: float | None = None) -> None:
        seconds = time.perf_counter() - started
        self.timings[name] = {"seconds": round(seconds, 2), "reused": reused}
        if reused and original_seconds is not None:
            self.timings[name]["original_seconds"] = original_seconds
        note = f"reused (originally {original_seconds:.0f}s)" if reused and original_seconds is not None else (
            "reused" if reused else "done")
        self.echo(f"[demo] {name}: {note} in {seconds:.1f}s")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def usable_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


CONFIG_FILES = ("demo_prior.json", "demo_decoder.json")


def find_config_dir(folder: str | os.PathLike | None = None) -> Path:
    """The folder holding the demo's training configs (default: the checkout's ``train_configs/``).

    Raises:
        FileNotFoundError: naming the missing files.
    """
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parents[2] / "train_configs"
    missing = [name for name in CONFIG_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} has no {' / '.join(missing)}: run the demo from a source checkout "
                                "or pass --configs DIR")
    return folder


def resolve_config(template: Path, overrides: dict[str, Any], out_path: Path | None) -> dict:
    """Reads a JSON config, applies dotted-key ``overrides`` and writes the result to ``out_path``
    (unless None)."""
    from dalle2_pytorch.config.base import load_json
    from dalle2_pytorch.training.scripts.cli import apply_override

    data = load_json(template)
    for key, value in overrides.items():
        apply_override(data, f"{key}={json.dumps(value)}")
    if out_path is None:
        return data
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(data, indent=2) + "\n")
    return data


# ----------------------------------------------------------------------------------------------
# stages


def _index_width(samples_per_shard: int) -> int:
    width = len(str(samples_per_shard)) - 1
    if samples_per_shard != 10**width or width < 1:
        raise ValueError(f"samples_per_shard must be a power of ten >= 10, got {samples_per_shard}")
    return width


@dataclass(frozen=True)
class StageResult:
    """What an in-process stage made: its folder, whether it was reused, and its original seconds."""

    path: Path
    reused: bool = False
    train_seconds: float | None = None


def compute_embeddings(info: Any, clip_dir: Path, out: Path, key: str, samples_per_shard: int, book: StageBook,
                       echo: Callable[[str], None] = print) -> StageResult:
    """CLIP image/text embeddings + caption metadata of every train shard (reused when ``key`` matches)."""
    done = book.is_done("embeddings", key)
    if done is not None and out.is_dir():
        return StageResult(out, True, done.get("seconds"))
    from dalle2_pytorch.clip_adapters import load_clip_folder
    from dalle2_pytorch.data import precompute_embeddings

    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    book.write("embeddings", key, finished=False)
    adapter = load_clip_folder(clip_dir)
    summary = precompute_embeddings(info.train_shards, out, adapter, batch_size=250,
                                    index_width=_index_width(samples_per_shard))
    echo(f"[demo] embedded {summary.samples} samples ({summary.dimension}-d) -> {out}")
    book.write("embeddings", key, finished=True, seconds=time.perf_counter() - started, samples=summary.samples)
    return StageResult(out)


def assemble_decoder(exports: Sequence[Path], out: Path) -> Path:
    """One decoder export from Unet ``i`` of the ``i``-th run's export (each run trained one Unet)."""
    from dalle2_pytorch.decoder import Decoder
    from dalle2_pytorch.training.export import export_model

    decoder = Decoder.from_checkpoint(exports[0])
    for i, export in enumerate(exports[1:], start=1):
        decoder.unets[i].load_state_dict(Decoder.from_checkpoint(export).unets[i].state_dict())
    return export_model(decoder, out, kind="decoder", config=decoder.config)


def write_model_index(out: Path, decoder_dir: Path, prior_export: Path, clip_dir: Path,
                      defaults: dict | None = None) -> Path:
    """``dalle2.json`` for ``dream --model-dir OUTPUT`` (paths relative to the output folder).

    ``defaults``: sampling settings ``dream`` uses unless told otherwise (``cond_scale``,
    ``prior_cond_scale``, ``prior_candidates``).
    """
    index = {
        "prior": os.path.relpath(prior_export, out),
        "decoder": os.path.relpath(decoder_dir, out),
        "clip": {"make": "small-clip", "model": os.path.relpath(clip_dir, out)},
    }
    if defaults:
        index["defaults"] = defaults
    path = out / MODEL_INDEX
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# the whole run


def run_demo(
    output: str | os.PathLike,
    preset: DemoPreset = FULL,
    *,
    config_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    seed: int = 0,
    echo: Callable[[str], None] = print,
    status_every: float = 30.0,
) -> dict:
    """Runs (or resumes) every stage of the demo into ``output``; returns the report dict.

    Args:
        output: the demo folder (created).
        preset: sizes (``FULL`` or ``TINY``).
        config_dir: folder with ``demo_prior.json`` / ``demo_decoder.json`` (default: the
            checkout's ``train_configs/``).
        threads: torch CPU threads (default: the CPUs this process may use).
        seed: seed of the dataset, CLIP and training runs.
        echo: where progress lines go.
        status_every: seconds between progress lines during the training.

    Raises:
        FileNotFoundError: the config folder lacks the demo configs.
        RuntimeError: a training run stopped without an export.
    """
    configs = find_config_dir(config_dir)
    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads or usable_cpus())))
    try:
        return _run_stages(out, preset, configs, seed, echo, status_every)
    finally:
        torch.set_num_threads(previous_threads)


def _decoder_steps(preset: DemoPreset, cfg: dict, num_train: int) -> int:
    batch = int(cfg["data"]["batch_size"])
    per_epoch = cfg["train"].get("epoch_samples") or num_train
    return int(cfg["train"]["epochs"]) * -(-int(per_epoch) // batch)


def _run_stages(out: Path, preset: DemoPreset, configs: Path, seed: int, echo: Callable[[str], None],
                status_every: float) -> dict:
    from dalle2_pytorch.demo import report
    from dalle2_pytorch.demo.shapes import generate_dataset
    from dalle2_pytorch.demo.train_clip import train_clip

    progress = Progress(num_stages=9, echo=echo)
    book = StageBook(out / "stages")
    echo(f"[demo] {preset.name} demo into {out} ({torch.get_num_threads()} CPU threads)")

    started = progress.stage("data", f"{preset.num_train} + {preset.num_val} captioned shape images")
    info = generate_dataset(out / "data", preset.num_train, preset.num_val, seed=seed, image_size=preset.image_size,
                            samples_per_shard=preset.samples_per_shard, verbose=True)
    progress.done("data", started, False)
    data_key = fingerprint(info.params)
    est = preset.estimates
    cfg_out = out / "configs"
    emb = out / "embeddings"
    clip_state: dict[str, str] = {}

    def clip_task(report_fraction: Callable[[float], None]):
        result = train_clip(info, out / "clip", steps=preset.clip_steps, batch_size=preset.clip_batch_size, seed=seed,
                            model_kwargs=preset.clip_model_kwargs, evaluate=preset.clip_evaluate,
                            log_every=max(1, preset.clip_steps // 10), on_progress=report_fraction)
        clip_state["key"] = fingerprint(info.params, file_digest(out / "clip" / "clip.safetensors"))
        return result

    def embeddings_task(report_fraction: Callable[[float], None]) -> StageResult:
        return compute_embeddings(info, out / "clip", emb, clip_state["key"], preset.samples_per_shard, book, echo)

    num_shards = len(info.train_shards)
    decoder_common = {
        "data.webdataset_base_url": str(Path(info.root) / "train" / "shapes-{}.tar"),
        "data.start_shard": 0,
        "data.end_shard": num_shards - 1,
        "data.shard_width": 6,
        "data.index_width": _index_width(preset.samples_per_shard),
        "seed": seed,
        **preset.decoder_overrides,
    }
    # the CLIP's fingerprint (its weights) is known once it is trained: runs that use it get their key then
    decoder_runs = []
    stages = unet_stages(resolve_config(configs / "demo_decoder.json", decoder_common, None))
    for index, (unet, name) in enumerate(stages):
        conditioned = index == 0
        mask = [i == index for i in range(len(stages))]
        extra = preset.base_overrides if conditioned else preset.upsampler_overrides
        cfg = resolve_config(configs / "demo_decoder.json", {
            **decoder_common, "data.img_embeddings_url": str(emb / "img_emb") if conditioned else None,
            "train.unet_training_mask": mask, "tracker.data_path": str(out / f"decoder_{unet}_run"), **extra,
        }, cfg_out / f"decoder_{unet}.json")
        settings = _without_paths(cfg)
        key = (lambda settings=settings: fingerprint(clip_state["key"], settings)) if conditioned else \
            fingerprint(data_key, settings)
        decoder_runs.append(TrainingRun(
            name, "decoder", cfg_out / f"decoder_{unet}.json", out / f"decoder_{unet}_run", key, _log_every(preset),
            after=("embeddings",) if conditioned else (), total_steps=_decoder_steps(preset, cfg, info.num_train),
            estimate=est.get(name, 60.0)))

    prior_cfg = resolve_config(configs / "demo_prior.json", {
        "prior.clip.model": str(out / "clip"),
        "data.image_url": str(emb / "img_emb"),
        "data.text_url": str(emb / "text_emb"),
        "data.meta_url": str(emb / "metadata"),
        "data.num_data_points": preset.num_train,
        "train.random_seed": seed,
        "tracker.data_path": str(out / "prior_run"),
        **preset.prior_overrides,
    }, cfg_out / "prior.json")
    prior_steps = int(prior_cfg["train"]["epochs"]) * -(-int(0.9 * preset.num_train) // int(prior_cfg["data"]["batch_size"]))
    prior_settings = _without_paths(prior_cfg)
    prior_run = TrainingRun("prior", "prior", cfg_out / "prior.json", out / "prior_run",
                            lambda: fingerprint(clip_state["key"], prior_settings), _log_every(preset),
                            after=("embeddings",), total_steps=prior_steps, estimate=est.get("prior", 30.0))
    base, *upsamplers = decoder_runs
    tasks = [InProcessTask("clip", clip_task, estimate=est.get("clip", 60.0)),
             InProcessTask("embeddings", embeddings_task, after=("clip",), estimate=est.get("embeddings", 10.0)),
             base, prior_run, *upsamplers]
    threads = torch.get_num_threads()
    results = run_tasks(tasks, workers=min(2, threads), threads=threads, book=book, progress=progress, echo=echo,
                        status_every=status_every, tail_estimate=est.get("report", 60.0), started_at=progress.start)

    started = progress.stage("models", f"join the decoder Unets; write {MODEL_INDEX}")
    decoder_dir = assemble_decoder([results[r.name] for r in decoder_runs], out / "decoder")
    defaults = {"cond_scale": preset.decoder_cond_scale, "prior_cond_scale": preset.prior_cond_scale,
                "prior_candidates": preset.prior_candidates}
    index = write_model_index(out, decoder_dir, results[prior_run.name], out / "clip", defaults)
    progress.done("models", started, False)

    started = progress.stage("report", "generate images, measure colour / shape / position / CLIP similarity")
    result = report.run_report(out, info, preset, seed=seed, echo=echo)
    progress.done("report", started, False)
    total = progress.elapsed()
    result.update(timings=progress.timings, total_seconds=round(total, 1), threads=torch.get_num_threads())
    report.write_report(out, result)
    echo(f"\n[demo] finished in {total / 60:.1f} min: {out / 'grid.png'}, {out / 'report.md'}; model index {index}")
    echo(f"[demo] try: dream \"a red circle\" --model-dir {out} --seed 0 --output {out / 'dream'}")
    return result


def unet_stages(decoder_config: dict) -> list[tuple[str, str]]:
    """(folder slug, task name) of each Unet's training run, from a decoder training config:
    ``("base", "decoder base unet")`` for the first, ``("up64", "decoder up64 unet")`` for an
    upsampler to 64 px."""
    sizes = [int(s) for s in decoder_config["decoder"]["image_sizes"]]
    slugs = ["base"] + [f"up{size}" for size in sizes[1:]]
    return [(slug, f"decoder {slug} unet") for slug in slugs]


def _log_every(preset: DemoPreset) -> int:
    return 100 if preset.name == "full" else 1


def _without_paths(config: dict) -> dict:
    """The config without the output-folder paths (so a moved output folder keeps its fingerprints)."""
    text = json.dumps(config, sort_keys=True)
    return json.loads(text, object_hook=lambda d: {k: v for k, v in d.items()
                                                   if k not in ("data_path", "image_url", "text_url", "meta_url",
                                                                "webdataset_base_url", "img_embeddings_url", "model")})


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (see the module docstring); returns the exit status. Every error is one line
    on stderr (``demo: error: ...``; ``--verbose`` adds the traceback), see
    :mod:`dalle2_pytorch.command_line`."""
    from dalle2_pytorch.command_line import run_command

    return run_command("demo", _main, argv)


def _main(argv: Sequence[str]) -> int:
    from dalle2_pytorch.command_line import ArgumentParser, UserError

    parser = ArgumentParser(prog="python -m dalle2_pytorch.demo.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", "-o", default="demo_output", help="demo folder (created; reused when run again)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: every stage in seconds (for tests)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all usable CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default=None, help="folder with demo_prior.json and demo_decoder.json")
    parser.add_argument("--verbose", "-v", action="store_true", help="print the traceback of an error")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.seed < 2**31:
        raise UserError(f"--seed must be between 0 and 2**31 - 1, got {args.seed}")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise UserError(f"--output {args.output} is an existing file; give a folder")
    run_demo(args.output, TINY if args.tiny else FULL, config_dir=args.configs, threads=args.threads, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
