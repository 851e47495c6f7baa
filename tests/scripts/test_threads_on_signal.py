"""`ThreadsOnSignal`: SIGUSR2 gives a training script every usable CPU, also when the signal came
while the script was still starting (the demo's scheduler starts its children with `start_child`,
which holds the signal until the handler is installed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dalle2_pytorch.training.scripts.runtime import ThreadsOnSignal

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR2") or len(os.sched_getaffinity(0)) < 2,
                                reason="needs SIGUSR2 and at least two usable CPUs")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_signal_raises_the_threads_to_every_usable_cpu(one_thread):
    with ThreadsOnSignal():
        assert torch.get_num_threads() == 1
        os.kill(os.getpid(), signal.SIGUSR2)
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
    # afterwards the signal is ignored, not left to its default action (ending the process)
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGUSR2)
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)


def test_the_environment_can_name_the_thread_count(one_thread, monkeypatch):
    monkeypatch.setenv(ThreadsOnSignal.ENV, "3")
    with ThreadsOnSignal():
        os.kill(os.getpid(), signal.SIGUSR2)
        assert torch.get_num_threads() == 3
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)


_CHILD = """
import sys, torch
torch.set_num_threads(1)
torch.ones(64, 64) @ torch.ones(64, 64)  # the thread pool exists before the signal comes
print("ready", flush=True)
sys.stdin.readline()  # the parent has sent the signal: the child is "still importing"
from dalle2_pytorch.training.scripts.runtime import ThreadsOnSignal
with ThreadsOnSignal():
    print(torch.get_num_threads(), flush=True)
"""


def _child_threads_after_early_signal(start) -> tuple[int, str]:
    process = start([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGUSR2)
    time.sleep(0.2)
    out, _ = process.communicate("go\n", timeout=120)
    return process.returncode, out.strip()


def test_a_signal_sent_before_the_handler_waits_for_it():
    from dalle2_pytorch.demo.training_runs import start_child

    assert _child_threads_after_early_signal(start_child) == (0, str(len(os.sched_getaffinity(0))))
    # the same child started with a plain Popen: the early signal ends it (what start_child prevents)
    assert _child_threads_after_early_signal(subprocess.Popen)[0] == -signal.SIGUSR2


def test_the_demo_names_the_same_signal_and_variable():
    from dalle2_pytorch.demo import training_runs

    assert (training_runs._MORE_CPUS, training_runs._THREADS_ENV) == (ThreadsOnSignal.SIGNAL, ThreadsOnSignal.ENV)
