"""The demo's training work: ``train_prior.py`` / ``train_decoder.py`` child processes and in-process
tasks (the CLIP, the embeddings), scheduled on the CPUs with their dependencies, with an ETA.

The pieces of the demo depend on each other only partly: the upsamplers need nothing but images
(the decoder conditions only its base Unet on CLIP image embeddings, as unCLIP does), the CLIP
needs the images, and the prior and the base Unet need the CLIP's embeddings. So the demo runs
``workers`` (one per CPU, at most two) tasks at a time, each with one thread: on small CPUs
one-thread processes side by side do more work per second than one process with two threads (the
convolutions of tiny Unets do not scale across threads). A worker takes the first task, in the
given order, whose dependencies are done: with two CPUs, CLIP -> embeddings -> base Unet on one
and the upsamplers -> prior on the other. When a worker finds nothing left to start, the runs still
going get its CPUs: they are signalled (SIGUSR2, ``ThreadsOnSignal`` in the scripts) to use every
usable CPU, so the base Unet's long tail runs on two threads (1.5x the steps per second of one).

Every training run is the real script (``python train_prior.py --config_file ...`` through its
module), so its checkpoints, resume and export are the ones a user gets; its output goes to
``logs/{run folder}.log`` and, prefixed with the run's name, to the demo's output. A failed task
stops the tasks that depend on it; the others finish first so their work is kept.

Progress: every ``status_every`` seconds (and whenever a task starts or ends) one line with the
elapsed time, each running task's share done and an estimate of the time left, simulated from
each task's expected duration corrected by the speed measured so far.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["InProcessTask", "Schedule", "TrainingRun", "TrainingRunError", "run_in_lanes", "run_tasks", "start_child"]


# ``training.scripts.runtime.ThreadsOnSignal``'s signal and variable (named here: importing it would load
# accelerate into the demo process); the scripts take ``$DALLE2_THREADS_ON_SIGNAL`` threads on the signal
_MORE_CPUS = getattr(signal, "SIGUSR2", None)
_THREADS_ENV = "DALLE2_THREADS_ON_SIGNAL"


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
        name: task name (``"prior"``, ``"decoder base unet"``, ...).
        kind: ``"prior"`` or ``"decoder"`` (which script).
        config_path: the resolved JSON config.
        run_dir: the config's ``tracker.data_path`` (checkpoints, export).
        key: fingerprint of the run's inputs, or a function giving it when the run starts (inputs made
            by earlier tasks); a finished run with the same key is reused.
        log_every: the script's ``--log-every``.
        after: names of the tasks that must finish first.
        total_steps: optimiser steps of the whole run (for progress; None: unknown).
        estimate: expected seconds on the demo machine with one thread (for the ETA).
    """

    name: str
    kind: str
    config_path: Path
    run_dir: Path
    key: str | Callable[[], str]
    log_every: int
    after: tuple[str, ...] = ()
    total_steps: int | None = None
    estimate: float = 60.0

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

    def fraction_done(self) -> float | None:
        """Share of ``total_steps`` done, read from the last record of the run's ``metrics.jsonl``."""
        if not self.total_steps:
            return None
        step = _last_step(self.run_dir / "metrics.jsonl")
        return None if step is None else min(1.0, step / self.total_steps)


@dataclass
class InProcessTask:
    """Work done in the demo's own process (one thread): ``run(report)`` returns the task's result.

    ``report(fraction)`` may be called with the share done (for the progress line).
    """

    name: str
    run: Callable[[Callable[[float], None]], Any]
    after: tuple[str, ...] = ()
    estimate: float = 30.0
    _fraction: float | None = field(default=None, repr=False)

    def fraction_done(self) -> float | None:
        return self._fraction


Task = TrainingRun | InProcessTask


def _last_step(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Schedule:
    """Which tasks ran / run / wait, and the time-left estimate (a greedy replay of the schedule)."""

    def __init__(self, tasks: Sequence[Task], workers: int, tail_estimate: float = 0.0) -> None:
        self.tasks = list(tasks)
        self.workers = workers
        self.tail_estimate = tail_estimate  # work after the tasks (the report), seconds
        self.started: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self.failed: set[str] = set()

    def _speed(self, now: float) -> float:
        """Measured seconds per estimated second (1 before anything was measured)."""
        ratios = []
        for task in self.tasks:
            if task.name in self.finished and task.name in self.started:
                ratios.append((self.finished[task.name] - self.started[task.name]) / max(task.estimate, 1e-6))
            elif task.name in self.started:
                done = task.fraction_done()
                if done is not None and done >= 0.05:
                    ratios.append((now - self.started[task.name]) / done / max(task.estimate, 1e-6))
        return sorted(ratios)[len(ratios) // 2] if ratios else 1.0

    def remaining(self, now: float) -> float:
        """Seconds until the tasks (and the tail) are done, by replaying the greedy schedule."""
        speed = self._speed(now)
        ends = {name: 0.0 for name in self.finished}  # seconds from now
        free: list[float] = []  # when each worker is free again
        for task in self.tasks:
            if task.name not in self.started or task.name in self.finished or task.name in self.failed:
                continue
            done = task.fraction_done()
            elapsed = now - self.started[task.name]
            if done is not None and done >= 0.05:
                rest = elapsed / done * (1 - done)
            else:
                rest = max(task.estimate * speed - elapsed, 0.1 * task.estimate * speed)
            ends[task.name] = rest
            free.append(rest)
        free += [0.0] * max(0, self.workers - len(free))
        pending = [t for t in self.tasks if t.name not in self.started and not any(d in self.failed for d in t.after)]
        while pending:
            worker = min(range(len(free)), key=free.__getitem__)

            def ready_at(task: Task) -> float:
                return max([0.0] + [ends.get(d, float("inf")) for d in task.after])

            ready = [t for t in pending if ready_at(t) <= free[worker] + 1e-9]
            task = ready[0] if ready else min(pending, key=ready_at)
            start = max(free[worker], ready_at(task))
            if start == float("inf"):
                break
            ends[task.name] = free[worker] = start + task.estimate * speed
            pending.remove(task)
        return max(free) + self.tail_estimate * speed

    def status(self, now: float, started_at: float) -> str:
        running = []
        for task in self.tasks:
            if task.name in self.started and task.name not in self.finished and task.name not in self.failed:
                done = task.fraction_done()
                running.append(f"{task.name} {'' if done is None else f'{100 * done:.0f}% '}"
                               f"({_clock(now - self.started[task.name])})")
        waiting = [t.name for t in self.tasks if t.name not in self.started]
        left = self.remaining(now)
        parts = [f"[demo] {_clock(now - started_at)} elapsed, about {_clock(left)} to go"]
        if running:
            parts.append("running: " + ", ".join(running))
        if waiting:
            parts.append("waiting: " + ", ".join(waiting))
        return " | ".join(parts)


def run_tasks(tasks: Sequence[Task], *, workers: int, threads: int, book, progress, echo: Callable[[str], None],
              status_every: float = 30.0, tail_estimate: float = 0.0, started_at: float | None = None) -> dict[str, Any]:
    """Runs ``tasks`` on ``workers`` workers, respecting ``after``; returns ``{name: result}``.

    A training run's result is its export folder; an in-process task's is what it returned.

    Args:
        tasks: in order of preference (a free worker takes the first ready one).
        workers: tasks at a time.
        threads: CPU threads shared by the workers (each child process gets ``threads // workers``).
        book: the demo's ``StageBook`` (finished runs with the same key are reused).
        progress: the demo's ``Progress`` (timings).
        echo: progress output.
        status_every: seconds between progress lines.
        tail_estimate: expected seconds of the work after these tasks (for the time-left estimate).
        started_at: ``time.perf_counter()`` of the demo's start (for the elapsed time).

    Raises:
        RuntimeError: a task failed (the message names it and, for a run, its log); tasks that do
            not depend on it are finished first so their work is kept.
    """
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    unknown = sorted({d for t in tasks for d in t.after} - set(names))
    if unknown:
        raise ValueError(f"tasks depend on unknown tasks {unknown}")
    workers = max(1, min(workers, len(tasks)))
    per_worker = max(1, threads // workers)
    schedule = Schedule(tasks, workers, tail_estimate)
    started_at = time.perf_counter() if started_at is None else started_at
    results: dict[str, Any] = {}
    errors: list[str] = []
    pending = list(tasks)
    cond = threading.Condition()
    done_event = threading.Event()

    def say_status() -> None:
        echo(schedule.status(time.perf_counter(), started_at))

    def next_task() -> Task | None:
        with cond:
            while True:
                for task in list(pending):
                    if any(d in schedule.failed for d in task.after):
                        pending.remove(task)
                        schedule.failed.add(task.name)
                        errors.append(f"{task.name} was not run: it needs {', '.join(d for d in task.after if d in schedule.failed)}")
                        cond.notify_all()
                        break
                    if all(d in schedule.finished for d in task.after):
                        pending.remove(task)
                        schedule.started[task.name] = time.perf_counter()
                        return task
                else:
                    if not pending:
                        return None
                    cond.wait()

    children = _Children(echo, enabled=per_worker < threads, threads=threads)

    def work() -> None:
        while (task := next_task()) is not None:
            try:
                if isinstance(task, TrainingRun):
                    result = _run_one(task, per_worker, book, progress, echo, cond, children)
                else:
                    result = _run_in_process(task, progress, cond)
            except Exception as e:  # reported below; a failed task stops only its dependents
                with cond:
                    errors.append(str(e))
                    schedule.failed.add(task.name)
                    cond.notify_all()
                continue
            with cond:
                results[task.name] = result
                schedule.finished[task.name] = time.perf_counter()
                cond.notify_all()
            say_status()
        children.lend()  # nothing is left to start: the runs still going (or starting) get this worker's CPUs

    def monitor() -> None:
        while not done_event.wait(status_every):
            say_status()

    if workers > 1:
        echo(f"[demo] {workers} workers side by side ({per_worker} CPU thread(s) each): "
             + ", ".join(f"{t.name}{' (after ' + ', '.join(t.after) + ')' if t.after else ''}" for t in tasks))
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(per_worker)  # the in-process tasks share the CPUs with the children
    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    threads_ = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    try:
        for w in threads_:
            w.start()
        for w in threads_:
            w.join()
    finally:
        done_event.set()
        torch.set_num_threads(previous_threads)
    if errors:
        raise TrainingRunError("; ".join(errors))
    return results


def run_in_lanes(lanes: Sequence[Sequence[TrainingRun]], *, threads: int, book, progress,
                 echo: Callable[[str], None]) -> dict[str, Path]:
    """Each lane's runs in order, the lanes side by side (``run_tasks`` with one worker per lane,
    each run after the previous one of its lane); returns ``{name: export folder}``."""
    from dataclasses import replace

    tasks: list[TrainingRun] = []
    for lane in (list(lane) for lane in lanes if lane):
        for i, run in enumerate(lane):
            tasks.append(replace(run, after=tuple(run.after) + ((lane[i - 1].name,) if i else ())))
    # the lanes interleaved, so that each worker starts with a different lane's first run
    return run_tasks(tasks, workers=len([lane for lane in lanes if lane]), threads=threads, book=book,
                     progress=progress, echo=echo)


def _run_in_process(task: InProcessTask, progress, lock: threading.Condition) -> Any:
    with lock:
        started = progress.stage(task.name, "in the demo process")

    def report(fraction: float) -> None:
        task._fraction = float(fraction)

    result = task.run(report)
    with lock:
        progress.done(task.name, started, bool(getattr(result, "reused", False)),
                      getattr(result, "train_seconds", None) if getattr(result, "reused", False) else None)
    return result


def _run_one(run: TrainingRun, threads: int, book, progress, echo: Callable[[str], None],
             lock: threading.Condition, children: _Children | None = None) -> Path:
    key = run.key() if callable(run.key) else run.key
    with lock:
        started = progress.stage(run.name, f"{'train_prior.py' if run.kind == 'prior' else 'train_decoder.py'} "
                                           f"--config_file {run.config_path}")
        done = book.is_done(run.name, key)
    if done is not None and (run.export / "model.safetensors").is_file():
        with lock:
            progress.done(run.name, started, True, done.get("seconds"))
        return run.export
    state = book.get(run.name)
    if run.run_dir.exists() and (state is None or state.get("key") != key):
        echo(f"[demo] {run.run_dir} was trained from other inputs: starting it again")
        shutil.rmtree(run.run_dir)
    start_over = False
    if run.run_dir.exists() and run.can_resume():
        echo(f"[demo] resuming the unfinished run in {run.run_dir}")
    elif run.run_dir.exists():  # stopped before its first checkpoint: the script would refuse to start over it
        echo(f"[demo] {run.run_dir} has no usable checkpoint: starting it again (the old folder is kept as "
             f"{run.run_dir.name}.old-<time>)")
        start_over = True
    book.write(run.name, key, finished=False)
    status = _spawn(run, threads, echo, start_over, children)
    if status != 0 or not (run.export / "model.safetensors").is_file():
        raise TrainingRunError(f"{run.name} training stopped (exit status {status}) without an export in {run.export} "
                           f"(log: {run.log_path}); run the demo again to resume it")
    book.write(run.name, key, finished=True, seconds=time.perf_counter() - started)
    with lock:
        progress.done(run.name, started, False)
    return run.export


class _Children:
    """The running training scripts of ``run_tasks``. Once a worker has nothing left to start
    (``lend``), every running script, and any started after, is signalled to use every usable CPU."""

    def __init__(self, echo: Callable[[str], None], enabled: bool, threads: int) -> None:
        self._echo, self._enabled, self.threads = echo, enabled and _MORE_CPUS is not None, threads
        self._running: dict[str, subprocess.Popen] = {}
        self._lending = False
        self._lock = threading.Lock()

    def _signal(self, name: str, process: subprocess.Popen) -> None:
        if process.poll() is None:
            self._echo(f"[demo] {name}: nothing else is left to start, it now uses {self.threads} CPU threads")
            process.send_signal(_MORE_CPUS)

    def add(self, name: str, process: subprocess.Popen) -> None:
        with self._lock:
            self._running[name] = process
            if self._lending:
                self._signal(name, process)

    def remove(self, name: str) -> None:
        with self._lock:
            self._running.pop(name, None)

    def lend(self) -> None:
        if not self._enabled:
            return
        with self._lock:
            if not self._lending:
                self._lending = True
                for name, process in self._running.items():
                    self._signal(name, process)


def start_child(command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` with the more-CPUs signal (SIGUSR2) blocked in the child from its start: a
    signal mask survives fork and exec, and every thread the child creates inherits it, so the signal
    waits until the script's ``ThreadsOnSignal`` installs its handler and unblocks it (instead of
    ending a child that is still importing)."""
    blocked = [_MORE_CPUS] if _MORE_CPUS is not None else []
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # this thread only; the child inherits it
    try:
        return subprocess.Popen(list(command), **popen_kwargs)
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def _spawn(run: TrainingRun, threads: int, echo: Callable[[str], None], start_over: bool = False,
           children: _Children | None = None) -> int:
    """Runs the script as a child process (``start_child``); its output goes to ``log_path`` and,
    prefixed, to ``echo``. While it runs it is in ``children`` under the run's name."""
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding dalle2_pytorch/
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if children is not None:
        env[_THREADS_ENV] = str(children.threads)  # what ``lend`` promises
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"[{run.name}] "
    command = run.command(start_over)
    with open(run.log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command[3:])}  ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        process = start_child(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        if children is not None:
            children.add(run.name, process)
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
        finally:
            if children is not None:
                children.remove(run.name)
