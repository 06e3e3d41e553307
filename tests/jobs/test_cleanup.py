"""Finding what a chunk left by the environment mark its processes inherit: real orphans re-parented away
from the test, real /dev/shm segments, one held open by a live process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from justrl_hpc.jobs.train import cleanup
from justrl_hpc.jobs.train.cleanup import MARK_ENV, Mark


def orphan(mark: Mark | None, *argv: str) -> psutil.Process:
    """A process whose parent exited at once (re-parented to init or a subreaper), started with `mark`."""
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    if mark is not None:
        env[MARK_ENV] = str(mark)
    code = "import time; time.sleep(600)"
    out = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}" {" ".join(argv)} >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, env=env, start_new_session=True, check=True)
    proc = psutil.Process(int(out.stdout.strip()))
    deadline = time.monotonic() + 5
    while proc.ppid() == os.getpid() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.ppid() != os.getpid()
    return proc


@pytest.fixture
def run_mark(tmp_path: Path) -> Iterator[Mark]:
    mark = Mark(cleanup.run_id(tmp_path / "run"), "5001", 2, f"n-{uuid.uuid4().hex[:6]}")
    before = os.environ.get(MARK_ENV)
    yield mark
    if before is None:
        os.environ.pop(MARK_ENV, None)
    else:
        os.environ[MARK_ENV] = before


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_mark_round_trips_and_a_foreign_string_is_no_mark() -> None:
    m = Mark("abc123", "77", 3, "n2")
    assert Mark.parse(str(m)) == m
    assert Mark.parse("nonsense") is None and Mark.parse("a/b/x/d") is None


def test_chunk_start_ends_earlier_incarnations_and_gone_jobs_only(run_mark: Mark, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    earlier = orphan(Mark(run_mark.run, run_mark.job_id, 1, run_mark.node), "VLLM::EngineCore")
    gone_job = orphan(Mark("otherrun0000", "4000", 0, run_mark.node), "ray::IDLE")
    live_job = orphan(Mark("otherrun0000", "4100", 0, run_mark.node))
    other_node = orphan(Mark(run_mark.run, run_mark.job_id, 1, "elsewhere"))
    unmarked = orphan(None)
    try:
        found = cleanup.at_start(run_mark, control, active_jobs={run_mark.job_id, "4100"})
        assert found["processes"] == 2 and found["incarnations"] == ["4000/0", f"{run_mark.job_id}/1"]
        assert found["kinds"] == {"ray": 1, "vllm": 1}
        assert not alive(earlier) and not alive(gone_job)
        assert alive(live_job) and alive(other_node) and alive(unmarked)
        assert os.environ[MARK_ENV] == str(run_mark)  # every child of this task carries it from now on
    finally:
        for p in (earlier, gone_job, live_job, other_node, unmarked):
            if alive(p):
                p.kill()


def test_chunk_end_ends_what_this_incarnation_started_and_its_stray_segments(run_mark: Mark, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    cleanup.at_start(run_mark, control, active_jobs={run_mark.job_id})
    child = orphan(run_mark, "python", "-m", "verl.trainer.main_ppo")  # a trainer whose parent was SIGKILLed
    tag = uuid.uuid4().hex[:8]
    stray = cleanup.SHM / f"nccl-{tag}"
    held = cleanup.SHM / f"torch_{tag}"
    foreign = cleanup.SHM / f"somebody-{tag}"
    for p in (stray, held, foreign):
        p.write_bytes(b"x" * 4096)
    # Not this chunk's (no mark): someone else's process that holds a segment open.
    unmarked = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(held)!r}); import time; time.sleep(600)"],
                              env=unmarked)
    temp_dir = tmp_path / "justrl-ray-5001-2"
    temp_dir.mkdir()
    cleanup.note_temp_dir(control, run_mark, str(temp_dir))
    try:
        deadline = time.monotonic() + 10
        while str(held) not in {f.path for f in psutil.Process(holder.pid).open_files()}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        found = cleanup.at_end(run_mark, control)
        assert found["processes"] == 1 and found["kinds"] == {"trainer": 1} and not alive(child)
        assert found["shm_removed"] == 1 and not stray.exists() and held.exists() and foreign.exists()
        assert found["temp_dirs_removed"] == 1 and not temp_dir.exists()
        assert not cleanup.snapshot_file(control, run_mark).exists()
    finally:
        holder.kill()
        holder.wait()
        for p in (stray, held, foreign):
            p.unlink(missing_ok=True)
        if alive(child):
            child.kill()


def test_a_killed_incarnation_s_segments_and_temp_dirs_go_at_the_next_start(run_mark: Mark, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    cleanup.at_start(run_mark, control, active_jobs={run_mark.job_id})  # the incarnation that will be killed
    tag = uuid.uuid4().hex[:8]
    stray = cleanup.SHM / f"nccl-{tag}"
    stray.write_bytes(b"x")
    temp_dir = tmp_path / "justrl-ray-5001-2"
    temp_dir.mkdir()
    cleanup.note_temp_dir(control, run_mark, str(temp_dir))
    try:
        nxt = Mark(run_mark.run, run_mark.job_id, run_mark.restart + 1, run_mark.node)
        found = cleanup.at_start(nxt, control, active_jobs={run_mark.job_id})
        assert found["shm_removed"] == 1 and not stray.exists()
        assert found["temp_dirs_removed"] == 1 and not temp_dir.exists()
        assert [p.name for p in control.iterdir()] == [cleanup.snapshot_file(control, nxt).name]
    finally:
        stray.unlink(missing_ok=True)


def test_the_releaser_is_not_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    """It must outlive the job: the end-of-incarnation sweep would otherwise end it."""
    from justrl_hpc.jobs.train.release import spawn_releaser

    job = str(900000 + os.getpid() % 1000)
    monkeypatch.setenv(MARK_ENV, f"r/{job}/0/n1")
    spawn_releaser(job)  # polls Slurm for a job that does not exist, until we end it
    deadline = time.monotonic() + 10
    found: list[psutil.Process] = []
    while not found and time.monotonic() < deadline:
        found = [p for p in psutil.process_iter(["cmdline"])
                 if p.info["cmdline"] and p.info["cmdline"][-2:] == ["justrl_hpc.jobs.train.release", job]]
        time.sleep(0.05)
    assert found, "the releaser did not start"
    try:
        assert cleanup.mark_of(found[0].pid) is None
        assert found[0].ppid() != os.getpid()
    finally:
        for p in found:
            p.kill()


def test_a_second_sweep_at_the_end_removes_no_segment(run_mark: Mark, tmp_path: Path) -> None:
    """A teardown that runs twice: the second has no start snapshot and must not take every segment for new."""
    control = tmp_path / "control"
    control.mkdir()
    cleanup.at_start(run_mark, control, active_jobs={run_mark.job_id})
    cleanup.at_end(run_mark, control)
    other = cleanup.SHM / f"nccl-{uuid.uuid4().hex[:8]}"  # someone else's, made after this chunk started
    other.write_bytes(b"x")
    try:
        assert cleanup.at_end(run_mark, control)["shm_removed"] == 0 and other.exists()
    finally:
        other.unlink(missing_ok=True)
