"""The demo's training runs: ``train_prior.py`` / ``train_decoder.py`` as child processes, in lanes.

The prior, the base Unet and the upsampler only need the CLIP embeddings, not each other, so the
demo trains them side by side: with two or more CPUs, lane 1 trains the base Unet while lane 2
trains the prior and then the upsampler, each lane a separate process with half the CPU threads.
On small CPUs one-thread processes in parallel do more work per second than one process with two
threads (the convolutions of tiny Unets do not scale across threads), so this is the demo's
largest speed-up. With one CPU the runs go one after the other.

Every run is the real training script (``python train_prior.py --config_file ...`` through its
module), so its checkpoints, resume and export are the ones a user gets; its output goes to
``logs/{run folder}.log`` and, prefixed with the run's name, to the demo's progress output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["TrainingRun", "TrainingRunError", "run_in_lanes"]


class TrainingRunError(RuntimeError):
    """A training run of the demo stopped without an export (exit status 3 of the demo command)."""

    exit_status = 3

_SCRIPT_MODULES = {
    "prior": "dalle2_pytorch.training.scripts.prior_script",
    "decoder": "dalle2_pytorch.training.scripts.decoder_script",
}


@dataclass(frozen=True)
class TrainingRun:
    """One training script run of the demo.

    Args:
        name: stage name (``"prior"``, ``"decoder base unet"``, ...).
        kind: ``"prior"`` or ``"decoder"`` (which script).
        config_path: the resolved JSON config.
        run_dir: the config's ``tracker.data_path`` (checkpoints, export).
        key: fingerprint of the run's inputs; a finished run with the same key is reused.
        log_every: the script's ``--log-every``.
    """

    name: str
    kind: str
    config_path: Path
    run_dir: Path
    key: str
    log_every: int

    @property
    def export(self) -> Path:
        return self.run_dir / "export"

    @property
    def log_path(self) -> Path:
        """The script's output (beside ``run_dir``: the tracker wants its folder to itself)."""
        return self.run_dir.parent / "logs" / f"{self.run_dir.name}.log"

    def command(self, start_over: bool = False) -> list[str]:
        script = _SCRIPT_MODULES[self.kind]
        return [sys.executable, "-c", f"import sys; from {script} import cli; sys.exit(cli())",
                "--config_file", str(self.config_path), "--log-every", str(self.log_every), "--cpu",
                *(["--start-over"] if start_over else [])]

    def can_resume(self) -> bool:
        """True when the run folder holds a checkpoint that verifies (the script continues it)."""
        from dalle2_pytorch.training.checkpoint import checkpoint_problems

        return any(problem is None for _, problem in checkpoint_problems(self.run_dir / "checkpoints"))


def run_in_lanes(lanes: Sequence[Sequence[TrainingRun]], *, threads: int, book, progress,
                 echo: Callable[[str], None]) -> dict[str, Path]:
    """Runs each lane's runs in order, the lanes at the same time; returns ``{name: export folder}``.

    Args:
        lanes: runs per lane (empty lanes are dropped).
        threads: CPU threads shared by the lanes (each lane gets ``threads // lanes``, at least 1).
        book: the demo's ``StageBook`` (finished runs with the same key are reused).
        progress: the demo's ``Progress`` (timings).
        echo: progress output.

    Raises:
        RuntimeError: a run stopped without an export (the message names it and its log); the
            other lanes are finished first so their work is kept.
    """
    lanes = [list(lane) for lane in lanes if lane]
    per_lane = max(1, threads // max(1, len(lanes)))
    exports: dict[str, Path] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def work(lane: list[TrainingRun]) -> None:
        for run in lane:
            try:
                export = _run_one(run, per_lane, book, progress, echo, lock)
            except Exception as e:  # reported below; a failed run ends its lane only
                with lock:
                    errors.append(str(e))
                return
            with lock:
                exports[run.name] = export

    if len(lanes) > 1:
        echo(f"[demo] {len(lanes)} training lanes side by side ({per_lane} CPU thread(s) each): " + "; ".join(
            " then ".join(run.name for run in lane) for lane in lanes))
    workers = [threading.Thread(target=work, args=(lane,), daemon=True) for lane in lanes]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise TrainingRunError("; ".join(errors))
    return exports


def _run_one(run: TrainingRun, threads: int, book, progress, echo: Callable[[str], None],
             lock: threading.Lock) -> Path:
    with lock:
        started = progress.stage(run.name, f"{'train_prior.py' if run.kind == 'prior' else 'train_decoder.py'} "
                                           f"--config_file {run.config_path}")
        done = book.is_done(run.name, run.key)
    if done is not None and (run.export / "model.safetensors").is_file():
        with lock:
            progress.done(run.name, started, True, done.get("seconds"))
        return run.export
    state = book.get(run.name)
    if run.run_dir.exists() and (state is None or state.get("key") != run.key):
        echo(f"[demo] {run.run_dir} was trained from other inputs: starting it again")
        shutil.rmtree(run.run_dir)
    start_over = False
    if run.run_dir.exists() and run.can_resume():
        echo(f"[demo] resuming the unfinished run in {run.run_dir}")
    elif run.run_dir.exists():  # stopped before its first checkpoint: the script would refuse to start over it
        echo(f"[demo] {run.run_dir} has no usable checkpoint: starting it again (the old folder is kept as "
             f"{run.run_dir.name}.old-<time>)")
        start_over = True
    book.write(run.name, run.key, finished=False)
    status = _spawn(run, threads, echo, start_over)
    if status != 0 or not (run.export / "model.safetensors").is_file():
        raise TrainingRunError(f"{run.name} training stopped (exit status {status}) without an export in {run.export} "
                           f"(log: {run.log_path}); run the demo again to resume it")
    book.write(run.name, run.key, finished=True, seconds=time.perf_counter() - started)
    with lock:
        progress.done(run.name, started, False)
    return run.export


def _spawn(run: TrainingRun, threads: int, echo: Callable[[str], None], start_over: bool = False) -> int:
    """Runs the script as a child process; its output goes to ``log_path`` and, prefixed, to ``echo``."""
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding dalle2_pytorch/
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"[{run.name}] "
    command = run.command(start_over)
    with open(run.log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command[3:])}  ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                   text=True, bufsize=1)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                log.flush()
                echo(prefix + line.rstrip("\n"))
            return process.wait()
        except BaseException:
            process.terminate()  # the script saves a checkpoint on SIGTERM; a later run resumes it
            process.wait()
            raise
