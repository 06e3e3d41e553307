"""A hang's stacks from real processes: one that registered the worker hook answers by faulthandler (and keeps
running), a stopped one answers only through py-spy, and the request a node's task answers lands in the same
folder the driver's summary reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from justrl_hpc.jobs.train import cleanup, stacks
from justrl_hpc.jobs.train.cleanup import MARK_ENV, Mark
from justrl_hpc.jobs.train.in_worker import deadline_hook

# The worker the hook runs in, as Ray starts it: the hook installed, then work in a frame we can name.
WORKER = textwrap.dedent("""
    import sys, time
    from justrl_hpc.jobs.train.in_worker import deadline_hook
    deadline_hook.install()
    def waiting_in_a_named_frame():
        print("ready", flush=True)
        while True:
            time.sleep(0.1)
    waiting_in_a_named_frame()
""")


@pytest.fixture
def mark(tmp_path: Path) -> Mark:
    return Mark(cleanup.run_id(tmp_path / "run"), "7001", 1, f"n-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def workers(mark: Mark, tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    control = tmp_path / "control"
    env = {**os.environ, MARK_ENV: str(mark), deadline_hook.CONTROL_ENV: str(control)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_a_registered_worker_answers_by_faulthandler_and_a_stopped_one_through_py_spy(
        mark: Mark, tmp_path: Path, workers: list[subprocess.Popen[str]]) -> None:
    control = tmp_path / "control"
    running, stopped = workers
    os.kill(stopped.pid, signal.SIGSTOP)
    assert stacks.py_spy() is not None, "py-spy is in the train extra: the install must have put it beside python"

    folder = tmp_path / "stacks" / "t1"
    index = stacks.dump_node(mark, control, folder, wait_s=3)

    rows = {r["pid"]: r for r in index["processes"]}
    assert {running.pid, stopped.pid} <= set(rows)
    answered = (folder / f"{mark.node}-{running.pid}.txt").read_text()
    assert "waiting_in_a_named_frame" in answered and rows[running.pid]["faulthandler"] == "ok"
    assert rows[stopped.pid]["faulthandler"].startswith("no answer")
    assert not (folder / f"{mark.node}-{stopped.pid}.txt").exists()
    assert "waiting_in_a_named_frame" in (folder / f"{mark.node}-{stopped.pid}.py-spy.txt").read_text()
    assert rows[stopped.pid]["py_spy"] == "ok" and rows[running.pid]["py_spy"] == "ok"
    # The signal is one the worker registered: it is still there, still working.
    assert running.poll() is None and psutil.Process(running.pid).status() != psutil.STATUS_ZOMBIE
    assert json.loads((folder / f"index-{mark.node}.json").read_text()) == index

    os.kill(stopped.pid, signal.SIGCONT)  # now the stopped one answers its pending signal too
    deadline = time.monotonic() + 5
    reg = deadline_hook.stacks_file(control, mark.job_id, mark.restart, mark.node, stopped.pid)
    while "waiting_in_a_named_frame" not in reg.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "waiting_in_a_named_frame" in reg.read_text()


def test_an_unregistered_process_is_never_sent_the_signal(mark: Mark, tmp_path: Path) -> None:
    # Its default action would end the process: only processes with a registration file are signalled.
    env = {**os.environ, MARK_ENV: str(mark)}
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        time.sleep(0.5)
        index = stacks.dump_node(mark, tmp_path / "control", tmp_path / "out", wait_s=1)
        row = next(r for r in index["processes"] if r["pid"] == bare.pid)
        assert "faulthandler" not in row and row["py_spy"] == "ok"
        assert bare.poll() is None
    finally:
        bare.kill()
        bare.wait()


def test_a_request_is_answered_once_per_folder_and_the_summary_counts_what_answered(
        mark: Mark, tmp_path: Path, workers: list[subprocess.Popen[str]]) -> None:
    control = tmp_path / "control"
    assert stacks.answer(mark, control, set()) is None  # nothing asked yet
    folder = tmp_path / "stacks" / "t2"
    stacks.request(control, mark.job_id, mark.restart, folder)
    answered: set[str] = set()
    assert stacks.answer(mark, control, answered) == str(folder)
    assert stacks.answer(mark, control, answered) is None
    assert stacks.wait_for_nodes(folder, 1, timeout_s=1) == 1
    got = stacks.summary(folder)
    assert got["nodes_answered"] == 1 and got["stack_files"] >= 4 and got["silent"] is None

    # An earlier incarnation's registrations go at the next driver start; this one's stay.
    old = deadline_hook.stacks_file(control, mark.job_id, mark.restart - 1, mark.node, 1)
    old.write_text("")
    stacks.forget_registrations(control, mark.job_id, mark.restart)
    assert not old.exists()
    assert deadline_hook.stacks_file(control, mark.job_id, mark.restart, mark.node, workers[0].pid).exists()


def test_python_is_told_by_the_program_not_by_a_path_under_site_packages() -> None:
    assert stacks._is_python("/venv/bin/python3.11 -m verl.trainer.main_ppo")
    assert stacks._is_python("ray::WorkerDict.actor_rollout_update_actor")
    assert stacks._is_python("VLLM::EngineCore")
    assert not stacks._is_python("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x=1")
    assert not stacks._is_python("/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server --a")
