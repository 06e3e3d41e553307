"""`justrl-hpc report RUN`: goodput per chunk and overall, from ledgers written through the real `Ledger`.

Two ledgers are real rehearsals' (tests/data/rehearsal-run/ledger.jsonl: verl's, finished through 14 chunk limits;
rehearsal_cancelled_ledger.jsonl: scancelled in its 8th chunk; both recorded with `justrl-hpc rehearse` on the
dev cluster), replayed line by line; the others follow the same event sequences the chunk driver writes
(justrl_hpc/jobs/train/driver.py) at round times, so every figure has an exact expected value: a crash that lost the steps
after its last save, a preemption, a torn checkpoint found at resume, a run that failed for good. The CLI runs
as a real subprocess. No Slurm needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from justrl_hpc.core.goodput import chunk_reports, event_time, run_report
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.launcher.real_run_model import RealRunModel, model_real_run
from justrl_hpc.monitor.dashboard.snapshot import _chunks, _goodput

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "tests" / "data" / "rehearsal-run" / "ledger.jsonl"
CANCELLED = REPO / "tests" / "data" / "rehearsal_cancelled_ledger.jsonl"
T0 = 1_800_000_000.0


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Run:
    """A run folder: run.yaml with its target step, and a ledger written by the real Ledger."""

    def __init__(self, root: Path, name: str, target: int) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True)
        (self.dir / "run.yaml").write_text(yaml.safe_dump({"recipe": {"total_training_steps": target}}))
        self.ledger = Ledger(self.dir)
        self.job = "100"

    def ev(self, event: str, t: float, chunk: int | None, step: int | None = None, **fields: Any) -> None:
        self.ledger.append(
            event, job_id=self.job, chunk=chunk, step=step, time=iso(T0 + t), host="n1", pid=7, **fields
        )

    def steps(
        self, chunk: int, first: int, last: int, t_first: float, step_s: float, saves: tuple[int, ...] = ()
    ) -> None:
        for s in range(first, last + 1):
            t = t_first + (s - first) * step_s
            self.ev("step", t, chunk, step=s)
            if s in saves:
                self.ev("saved", t + 0.5, chunk, step=s, bytes=4096)


def report_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "justrl_hpc.cli", "report", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def report_json(run_dir: Path) -> dict[str, Any]:
    out = report_cli(str(run_dir), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# -- a crash that lost steps, a preemption, the finish ---------------------------------------------------------


@pytest.fixture
def crash_run(tmp_path: Path) -> Run:
    """Target 30, saves every 10, 2 s steps. Chunk 1 crashes (NCCL) at step 25 after its save at 20: 21–25
    are lost. Chunk 2 resumes at 20, is preempted, saves 29 at the step boundary. Chunk 3 finishes at 30."""
    r = Run(tmp_path, "crashy", target=30)
    r.ev("submitted", 0, None, nodes=2, recipe="rehearsal", fingerprint="abc")
    r.ev("started", 10, 1, restart=0, nodes=2, hosts="n1,n2", end_time=T0 + 1000)
    r.ev("ray-ready", 30, 1, nodes_seen=2, gpus_seen=0.0, seconds=20.0)
    r.ev("trainer-started", 32, 1, step=0, seconds_since_start=22.0)
    r.steps(1, 1, 25, t_first=42, step_s=2, saves=(10, 20))  # step 25 at 90
    r.ev(
        "trainer-exited",
        95,
        1,
        step=25,
        exit_code=1,
        reason="crashed-nccl",
        first_step=1,
        last_saved=20,
        progress=True,
    )
    r.ev("requeued", 96, 1, step=20, reason="crashed-nccl")
    r.ev("started", 100, 2, restart=1, nodes=2, hosts="n3,n4", end_time=T0 + 1100)
    r.ev("ray-ready", 110, 2, nodes_seen=2, gpus_seen=0.0, seconds=10.0)
    r.ev("trainer-started", 111, 2, step=20, seconds_since_start=11.0)
    r.steps(2, 21, 28, t_first=122, step_s=2)  # step 28 at 136
    r.ev("stop-requested", 137, 2, step=28, reason="preempted")
    r.steps(2, 29, 29, t_first=138, step_s=2, saves=(29,))
    r.ev(
        "trainer-exited",
        140,
        2,
        step=29,
        exit_code=130,
        reason="stopped",
        first_step=21,
        last_saved=29,
        progress=True,
    )
    r.ev("requeued", 141, 2, step=29, reason="preempted")
    r.ev("started", 150, 3, restart=2, nodes=2, hosts="n1,n2", end_time=T0 + 1200)
    r.ev("ray-ready", 160, 3, nodes_seen=2, gpus_seen=0.0, seconds=10.0)
    r.ev("trainer-started", 161, 3, step=29, seconds_since_start=11.0)
    r.steps(3, 30, 30, t_first=172, step_s=2, saves=(30,))
    r.ev(
        "trainer-exited",
        174,
        3,
        step=30,
        exit_code=0,
        reason="finished",
        first_step=30,
        last_saved=30,
        progress=True,
    )
    r.ev("finished", 174, 3, step=30)
    return r


def test_crash_preemption_and_finish_exact_figures(crash_run: Run) -> None:
    rep = report_json(crash_run.dir)
    assert (rep["finished"], rep["failed"], rep["target_step"], rep["last_step"]) == (True, None, 30, 30)
    c1, c2, c3 = rep["chunks"]
    assert [c["reason"] for c in rep["chunks"]] == ["crashed-nccl", "preempted", "finished"]
    assert [c["job_id"] for c in rep["chunks"]] == ["100"] * 3
    assert [(c["first_step"], c["last_step"], c["steps_lost"]) for c in rep["chunks"]] == [
        (1, 25, 5),
        (21, 29, 0),
        (30, 30, 0),
    ]
    # chunk 1: queued 10 s after the submission; Ray 20 s; resume check 2 s; the first step began at 40
    # (its event at 42 minus a 2 s step): init 8 s, 30 s from the allocation to training; trained 40→90.
    assert c1 == {
        **c1,
        "allocated_s": 86.0,
        "queue_wait_s": 10.0,
        "ray_up_s": 20.0,
        "resume_check_s": 2.0,
        "trainer_init_s": 8.0,
        "to_first_step_s": 30.0,
        "training_s": 50.0,
        "kept_steps": 20,
        "useful_s": 40.0,
        "lost_train_s": 10.0,
        "tail_s": 6.0,
        "requeue_gap_s": 4.0,
        "step_s": 2.0,
    }
    # chunk 2: the queue wait after a requeue is the requeue gap; the preemption's save at 29 kept everything
    assert c2 == {
        **c2,
        "allocated_s": 41.0,
        "queue_wait_s": 4.0,
        "trainer_init_s": 9.0,
        "training_s": 18.0,
        "kept_steps": 9,
        "useful_s": 18.0,
        "tail_s": 3.0,
        "requeue_gap_s": 9.0,
    }
    # chunk 3: one step, so its pace is the run's median (2 s); the finish keeps it
    assert c3 == {
        **c3,
        "allocated_s": 24.0,
        "step_s": None,
        "kept_steps": 1,
        "useful_s": 2.0,
        "tail_s": 2.0,
        "requeue_gap_s": None,
        "trainer_init_s": 9.0,
    }
    assert rep["allocated_s"] == 151.0 and rep["useful_s"] == 60.0
    assert rep["goodput"] == pytest.approx(60 / 151)
    assert rep["steps_lost"] == 5 and rep["queue_wait_s"] == 23.0 and rep["requeue_gap_s"] == 13.0
    assert rep["wall_s"] == 174.0
    # the dashboard's figure: kept step time over the wall since the first chunk started (10 → 174)
    assert rep["wall_goodput"] == pytest.approx(60 / 164)


def test_the_dashboard_shares_the_derivation(crash_run: Run) -> None:
    events = crash_run.ledger.read()
    views = _chunks(events, now=T0 + 200)
    reps = chunk_reports(events)
    assert [(v.ended, v.kept_steps, v.lost_s) for v in views] == [
        (c.reason, c.kept_steps, c.lost_s) for c in reps
    ]
    assert [v.lost_s for v in views] == [46.0, 23.0, 22.0]
    assert _goodput(views, True, T0 + 200) == pytest.approx(60 / 164)


def test_table_names_every_chunk(crash_run: Run) -> None:
    out = report_cli(str(crash_run.dir))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "run crashy: finished; step 30 of 30, last checkpoint 30; 3 chunks"
    assert (
        lines[1].startswith("goodput 39.7% (useful 60.0s of 2.5m allocated)") and "steps lost 5" in lines[1]
    )
    header = next(i for i, line in enumerate(lines) if line.startswith("chunk"))
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [row[:5] for row in rows] == [
        ["1", "100", "crashed-nccl", "1-25", "5"],
        ["2", "100", "preempted", "21-29", "0"],
        ["3", "100", "finished", "30-30", "0"],
    ]


def test_run_name_under_runs_is_found(crash_run: Run, tmp_path: Path) -> None:
    runs = tmp_path / "cwd" / "runs"
    runs.mkdir(parents=True)
    crash_run.dir.rename(runs / "crashy")
    out = report_cli("crashy", "--json", cwd=tmp_path / "cwd")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["finished"] is True


# -- a torn checkpoint found at resume; a run that failed for good ----------------------------------------------


def test_torn_checkpoint_counts_the_steps_back_to_the_verified_one(tmp_path: Path) -> None:
    """Killed while writing step 6 (saves every 2): chunk 2 moves the torn folder aside, resumes at 4."""
    r = Run(tmp_path, "torn", target=10)
    r.ev("submitted", 0, None, nodes=2)
    r.ev("started", 5, 1, restart=0, nodes=2, hosts="n1,n2")
    r.ev("ray-ready", 15, 1, nodes_seen=2, gpus_seen=0.0, seconds=10.0)
    r.ev("trainer-started", 16, 1, step=0, seconds_since_start=11.0)
    r.steps(1, 1, 6, t_first=25, step_s=1, saves=(2, 4))  # step 6 at 30; its save is torn: no `saved`
    r.ev(
        "trainer-exited",
        33,
        1,
        step=6,
        exit_code=-9,
        reason="crashed-other",
        first_step=1,
        last_saved=4,
        progress=True,
    )
    r.ev("requeued", 34, 1, step=4, reason="crashed-other")
    r.ev("started", 40, 2, restart=1, nodes=2, hosts="n1,n2")
    r.ev("ray-ready", 50, 2, nodes_seen=2, gpus_seen=0.0, seconds=10.0)
    r.ev("checkpoint-skipped", 51, 2, step=6, reason="truncated shard", moved_to="global_step_6.torn-1")
    r.ev("trainer-started", 52, 2, step=4, seconds_since_start=12.0)
    r.steps(2, 5, 10, t_first=60, step_s=1, saves=(6, 8, 10))  # step 10 at 65
    r.ev(
        "trainer-exited",
        66,
        2,
        step=10,
        exit_code=0,
        reason="finished",
        first_step=5,
        last_saved=10,
        progress=True,
    )
    r.ev("finished", 66, 2, step=10)
    rep = run_report(r.ledger.read(), target_step=10, name="torn")
    c1, c2 = rep.chunks
    assert (c1.steps_lost, c1.kept_steps, c1.lost_train_s) == (2, 4, 2.0)
    assert (c2.skipped, c2.start_step, c2.first_step, c2.kept_steps, c2.steps_lost) == ([6], 4, 5, 6, 0)
    assert c2.resume_check_s == 2.0 and c2.trainer_init_s == 7.0
    assert rep.finished and rep.steps_lost == 2
    assert rep.allocated_s == 29.0 + 26.0 and rep.useful_s == 10.0
    assert rep.goodput == pytest.approx(10 / 55)
    assert report_json(r.dir)["chunks"][1]["skipped_checkpoints"] == [6]


def test_a_run_that_failed_for_good(tmp_path: Path) -> None:
    """Ray never saw every node (chunk-failed), and the cap of chunks without progress ended the chain."""
    r = Run(tmp_path, "broken", target=10)
    r.ev("submitted", 0, None, nodes=2)
    r.ev("started", 3, 1, restart=0, nodes=2, hosts="n1,n2")
    r.ev("chunk-failed", 33, 1, reason="crashed-node", detail="Ray saw 1/2 nodes and 0/0 GPUs after 30 s")
    r.ev("failed", 34, 1, reason="1 chunks in a row made no progress; last: crashed-node")
    rep = report_json(r.dir)
    assert rep["finished"] is False and rep["failed"].startswith("1 chunks in a row")
    assert rep["last_step"] is None and rep["goodput"] == 0.0 and rep["allocated_s"] == 31.0
    (c,) = rep["chunks"]
    assert (c["reason"], c["first_step"], c["last_step"], c["steps_lost"], c["kept_steps"]) == (
        "failed: 1 chunks in a row made no progress; last: crashed-node",
        None,
        None,
        0,
        0,
    )
    assert c["queue_wait_s"] == 3.0 and c["ray_up_s"] is None and c["tail_s"] is None


def test_an_in_job_restart_is_its_own_heading_and_its_retrained_steps_are_lost(tmp_path: Path) -> None:
    """Steps 1–6 (saved at 4), a crash, the trainer started again in the same chunk from step 4: steps 5 and 6
    are trained twice (lost), and the crash → first step after the restart is the restart's cost."""
    r = Run(tmp_path, "restart", target=10)
    r.ev("submitted", 0, None, nodes=2)
    r.ev("started", 5, 1, restart=0, nodes=2, hosts="n1,n2")
    r.ev("ray-ready", 15, 1)
    r.ev("trainer-started", 20, 1, step=0)
    r.steps(1, 1, 6, 60, 10, saves=(4,))
    r.ev("trainer-exited", 115, 1, step=6, exit_code=-9, reason="crashed-other", last_saved=4, progress=True)
    r.ev("restarted-in-job", 120, 1, step=4, crash="crashed-other", restart=1, of=2)
    r.ev("trainer-started", 121, 1, step=4)
    r.steps(1, 5, 10, 180, 10, saves=(8, 10))
    r.ev("trainer-exited", 232, 1, step=10, exit_code=0, reason="finished")
    r.ev("finished", 233, 1, step=10)
    rep = report_json(r.dir)
    assert rep["finished"] and rep["restarts_in_job"] == 1 and rep["restart_s"] == 60.0
    (c,) = rep["chunks"]
    assert (c["start_step"], c["last_step"], c["kept_steps"], c["steps_lost"]) == (0, 10, 10, 2)
    assert (c["restarts_in_job"], c["restart_s"], c["restart_lost_steps"]) == (1, 60.0, 2)
    out = report_cli(str(r.dir))
    assert "in-job restarts 1 (60.0s from crash to the next step)" in out.stdout, out.stdout



def test_a_hang_counts_its_stall_and_its_dump_and_the_requeue_after_it(tmp_path: Path) -> None:
    """Steps 1–5 (saved at 4), no step for 95 s, the stacks taken in 5 s, the trainer killed and the chunk
    requeued (its restarts spent): the hang's 100 s is its own heading, and step 5 is lost."""
    r = Run(tmp_path, "hang", target=10)
    r.ev("submitted", 0, None, nodes=2)
    r.ev("started", 5, 1, restart=0, nodes=2, hosts="n1,n2")
    r.ev("ray-ready", 15, 1)
    r.ev("trainer-started", 20, 1, step=0)
    r.steps(1, 1, 5, 60, 10, saves=(4,))
    r.ev("hang", 200, 1, step=5, stacks="logs/stacks/20261207T120000Z", seconds=5.0, stalled_s=95, limit_s=90,
         on_hang="requeue", stack_files=12, nodes_answered=2, silent=None)
    r.ev("trainer-exited", 201, 1, step=5, exit_code=-9, reason="hung", last_saved=4, progress=True)
    r.ev("requeued", 203, 1, step=4, reason="hung")
    r.ev("started", 210, 2, restart=1, nodes=2, hosts="n1,n2")
    r.ev("trainer-started", 220, 2, step=4)
    r.steps(2, 5, 10, 260, 10, saves=(10,))
    r.ev("trainer-exited", 320, 2, step=10, exit_code=0, reason="finished")
    r.ev("finished", 321, 2, step=10)
    rep = report_json(r.dir)
    assert (rep["hangs"], rep["hang_s"], rep["restarts_in_job"]) == (1, 100.0, 0)
    first, second = rep["chunks"]
    assert (first["reason"], first["hangs"], first["hang_s"], first["steps_lost"]) == ("hung", 1, 100.0, 1)
    assert second["hangs"] == 0
    out = report_cli(str(r.dir))
    assert "hangs 1 (1.7m from the last step to the stacks taken)" in out.stdout, out.stdout

# -- the real rehearsal's ledger -------------------------------------------------------------------------------


def replay(src: Path, run_dir: Path, target: int) -> None:
    """Every recorded event through the real Ledger, with its recorded time and fields."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump({"recipe": {"total_training_steps": target}}))
    ledger = Ledger(run_dir)
    for line in src.read_text().splitlines():
        e = json.loads(line)
        ledger.append(
            e.pop("event"), job_id=e.pop("job_id"), chunk=e.pop("chunk"), step=e.pop("step", None), **e
        )


# `justrl-hpc rehearse --name rehearsal-demo` on the dev cluster (verl's own trainer on the CPU backend, 120
# steps, 2-minute chunks; the README's run of 2026-12-02), the figures computed from the recorded lines'
# timestamps alone (started → its requeued/finished; requeued → the next started), not by the code under test:
# (ended, first step, last step, allocated s, requeue gap s).
RECORDED_TARGET = 120
RECORDED_CHUNKS = [
    ("time-limit", 1, 7, 78.608, 14.088),  # 02:33:53.463 → 02:35:12.071
    ("time-limit", 8, 16, 74.594, 13.746),
    ("time-limit", 17, 22, 76.658, 13.843),
    ("time-limit", 23, 32, 76.869, 13.384),
    ("time-limit", 33, 39, 77.646, 13.985),
    ("time-limit", 40, 40, 83.454, 14.072),
    ("time-limit", 41, 61, 99.287, 13.031),
    ("time-limit", 62, 75, 75.029, 13.515),
    ("time-limit", 76, 81, 75.679, 13.629),
    ("time-limit", 82, 89, 78.813, 13.411),
    ("time-limit", 90, 99, 75.202, 14.280),
    ("time-limit", 100, 101, 75.147, 13.137),  # step 100 saved by chunk 11 but never logged: retrained here
    ("time-limit", 102, 107, 78.537, 13.841),
    ("time-limit", 108, 117, 74.250, 14.199),
    ("finished", 118, 120, 66.407, None),  # 02:55:25.397 → finished 02:56:31.804
]


def test_recorded_rehearsal(tmp_path: Path) -> None:
    run_dir = tmp_path / "rehearsal"
    replay(RECORDED, run_dir, target=RECORDED_TARGET)
    assert (run_dir / "ledger.jsonl").read_text() == RECORDED.read_text()  # the real writer, byte for byte
    rep = report_json(run_dir)
    assert (rep["finished"], rep["target_step"], rep["last_step"]) == (True, RECORDED_TARGET, RECORDED_TARGET)
    chunks = rep["chunks"]
    assert len(chunks) == len(RECORDED_CHUNKS)
    for c, (reason, first, last, alloc, gap) in zip(chunks, RECORDED_CHUNKS, strict=True):
        assert (c["job_id"], c["reason"], c["first_step"], c["last_step"], c["steps_lost"]) == (
            "149",
            reason,
            first,
            last,
            0,
        )
        assert c["allocated_s"] == pytest.approx(alloc, abs=0.001)
        assert c["requeue_gap_s"] == (None if gap is None else pytest.approx(gap, abs=0.001))
    # submitted 02:33:53.156 → started 02:33:53.463; Ray ready 02:34:11.297 (after both nodes' preflight)
    assert chunks[0]["queue_wait_s"] == pytest.approx(0.307, abs=0.001)
    assert chunks[0]["ray_up_s"] == pytest.approx(17.834, abs=0.001)
    assert [c["queue_wait_s"] for c in chunks[1:]] == [c["requeue_gap_s"] for c in chunks[:-1]]
    # each chunk resumed where the one before stopped: the steps tile 1..target once, all kept
    assert [c["first_step"] for c in chunks[1:]] == [c["last_step"] + 1 for c in chunks[:-1]]
    assert [c["kept_steps"] for c in chunks] == [last - first + 1 for _, first, last, _, _ in RECORDED_CHUNKS]
    assert rep["allocated_s"] == pytest.approx(sum(c[3] for c in RECORDED_CHUNKS), abs=0.01)
    # submitted → the last event: the head node's clean-up, 10 s after finished, still inside the allocation
    assert rep["wall_s"] == pytest.approx(1368.989, abs=0.001)
    # A chunk of one step has no step time of its own (chunk 6): it is paced at the run's median.
    assert chunks[5]["step_s"] is None and chunks[5]["kept_steps"] == 1
    assert rep["useful_s"] == pytest.approx(sum(c["useful_s"] for c in chunks), abs=0.01)
    assert all(c["useful_s"] == pytest.approx(c["kept_steps"] * c["step_s"], abs=0.01) for c in chunks if c["step_s"])
    assert rep["goodput"] == pytest.approx(rep["useful_s"] / rep["allocated_s"])
    assert 0.15 < rep["goodput"] < 0.18  # ~1.3 s steps behind ~60 s of start-up in 75 s chunks


def test_recorded_rehearsal_cancelled_mid_chunk(tmp_path: Path) -> None:
    """A real rehearsal (2-minute chunks, a loaded machine) cancelled with scancel in its 8th chunk: the
    chunk's SIGTERM handler asked for a stop, then the job was gone before any end event."""
    run_dir = tmp_path / "cancelled"
    replay(CANCELLED, run_dir, target=120)
    events = Ledger(run_dir).read()
    last = event_time(events[-1])
    assert last is not None
    rep = run_report(events, target_step=120, now=last, name="cancelled")
    assert (rep.finished, rep.failed, rep.last_step, rep.saved_step, rep.steps_lost) == (
        False,
        None,
        29,
        29,
        0,
    )
    assert [c.reason for c in rep.chunks] == ["time-limit"] * 7 + ["running"]
    assert [(c.first_step, c.last_step) for c in rep.chunks[:7]] == [
        (1, 2),
        (3, 8),
        (9, 14),
        (15, 20),
        (21, 22),
        (23, 24),
        (25, 29),
    ]
    c8 = rep.chunks[7]
    assert c8.end is None and c8.last_step is None and c8.start_step == 29
    assert c8.stop_requested is not None and c8.stop_to_end_s is None
    # chunk 1: started 07:34:24.726 → requeued 07:35:31.374; chunk 8 counted up to its last event (41.951 s)
    assert rep.chunks[0].allocated_s == pytest.approx(66.648, abs=0.001)
    assert rep.allocated_s == pytest.approx(
        sum(c.allocated_s or 0 for c in rep.chunks[:7]) + 41.951, abs=0.001
    )


# -- the real run, modelled ------------------------------------------------------------------------------------


def test_model_small_exact() -> None:
    """10 steps of 100 s, saves every 4 (10 s each), 1000 s chunks, 20 s start-up + 10 s load after the first.

    Suite: signal at 900. Chunk 1 steps 1–8 (saves at 4, 8) end at 20+800+20 = 840 < 900, step 9 runs to 940,
    its deadline save to 950, +2 s tail = 952. Chunk 2 starts at 30 (with load), step 10 + save = 140, +2 = 142.
    Naive (signal at 990): chunk 1 trains 1–9 (saves at 4, 8; ends 940), step 10 would pass 990: requeued at
    990, step 9 lost. Chunk 2: 30 + 2 steps + final save = 240."""
    m = dict(
        target_steps=10,
        step_s=100.0,
        chunk_s=1000.0,
        signal_lead_s=100.0,
        save_freq=4,
        checkpoint_gb=1.0,
        fs_gb_per_s=0.1,
        init_s=0.0,
        naive_signal_lead_s=10.0,
        naive_hold_s=120.0,
    )
    out = model_real_run(requeue_gap_s=5.0, suite_startup_s=20.0, stop_tail_s=2.0, **m)
    assert out["suite"] == {
        "chunks": 2,
        "allocated_h": round(1094 / 3600, 2),
        "wall_h": round(1099 / 3600, 2),
        "steps_lost": 0,
        "saves": 4,
        "goodput": round(1000 / 1094, 4),
        "wall_goodput": round(1000 / 1099, 4),
    }
    assert out["naive"] == {
        "chunks": 2,
        "allocated_h": round(1230 / 3600, 2),
        "wall_h": round(1350 / 3600, 2),
        "steps_lost": 1,
        "saves": 3,
        "goodput": round(1000 / 1230, 4),
        "wall_goodput": round(1000 / 1350, 4),
    }


def test_model_of_the_real_run_meets_its_target() -> None:
    out = model_real_run()
    m = RealRunModel()
    assert out["inputs"]["save_s"] == 63.0 and m.target_steps == 4380 and m.chunk_s == 86400
    assert out["suite"]["goodput"] >= 0.98 and out["suite"]["steps_lost"] == 0
    assert out["naive"]["goodput"] < out["suite"]["goodput"] - 0.05 and out["naive"]["steps_lost"] > 0
    assert out["naive"]["chunks"] > out["suite"]["chunks"]


# -- bad input -------------------------------------------------------------------------------------------------


def test_no_such_run_is_one_error_line(tmp_path: Path) -> None:
    out = report_cli(str(tmp_path / "nope"))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: RUN: no run folder") and len(out.stderr.splitlines()) == 1


def test_run_folder_without_ledger_is_one_error_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "run.yaml").write_text("recipe: {total_training_steps: 5}\n")
    out = report_cli(str(run_dir), "--json")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: RUN: ") and "no ledger.jsonl" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.yaml"]  # nothing written


def test_steps_a_restart_retrains_are_counted_once_when_the_next_chunk_resumes_behind_the_crash(tmp_path: Path):
    """The soak's chunk 13 (seed 2): trainer 1 logged 54–59 from 53 and was killed; restarted from 53, trainer 2
    logged 54–56 and saved 56; the next chunk resumed from 56. Six steps were lost, not nine."""
    r = Run(tmp_path, "twice", target=60)
    r.ev("submitted", 0, None, nodes=2)
    r.ev("started", 5, 1, restart=0, nodes=2, hosts="n1,n2")
    r.ev("trainer-started", 20, 1, step=53)
    r.steps(1, 54, 59, 60, 2)
    r.ev("trainer-exited", 75, 1, step=59, exit_code=-9, reason="crashed-other", last_saved=53, progress=True)
    r.ev("restarted-in-job", 110, 1, step=53, crash="crashed-other", restart=1, of=2)
    r.ev("trainer-started", 111, 1, step=53)
    r.steps(1, 54, 56, 160, 2, saves=(56,))
    r.ev("trainer-exited", 170, 1, step=56, exit_code=1, reason="stopped", last_saved=56, progress=True)
    r.ev("requeued", 171, 1, step=56, reason="preempted")
    r.ev("started", 180, 2, restart=1, nodes=2, hosts="n1,n2")
    r.ev("trainer-started", 190, 2, step=56)
    r.steps(2, 57, 60, 240, 2, saves=(60,))
    r.ev("trainer-exited", 250, 2, step=60, exit_code=0, reason="finished")
    r.ev("finished", 251, 2, step=60)
    rep = report_json(r.dir)
    first = rep["chunks"][0]
    assert (first["restart_lost_steps"], first["steps_lost"], first["last_step"]) == (6, 6, 56), first
    assert rep["steps_lost"] == 6
