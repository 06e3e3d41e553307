"""What a chunk does next (jobs/train/chunk_policy.py), as a table: every ending the driver meets, with and
without the history the ledger gives. The driver's carrying out is exercised on the dev cluster (the
lifecycle and fault suites); here, only the decisions."""

from __future__ import annotations

import pytest

from justrl_hpc.jobs.train.chunk_policy import Action, Facts, History, decide
from justrl_hpc.jobs.train.progress_policy import ChunkEnd

CAP = 3
QUIET = History((), CAP, 180.0, 30.0)
CRASH_LOOP = History((ChunkEnd("crashed-other", True), ChunkEnd("crashed-nccl", True)), CAP, 180.0, 30.0)
TOO_SHORT = History((ChunkEnd("time-limit", False, 150, 120), ChunkEnd("time-limit", False, 150, 118)), CAP, 180.0,
                    30.0)
CURABLE = {"reason": "crashed-nccl", "detail": "status 1", "stepped": True, "nodes_alive": True, "restarts": 1,
           "max_restarts": 2, "time_left_s": 100.0, "need_s": 100.0}
BAD_N3 = {"reason": "preflight failed on n3: gpu-remap: GPU 2: a row remap failed", "failed_nodes": ("n3",),
          "hard": (("n3", "gpu-remap: GPU 2: a row remap failed"),), "alloc_nodes": 4, "max_excluded": 1,
          "exclude_policy": "act"}
PREEMPTED = History((ChunkEnd("preempted", False), ChunkEnd("preempted", False)), CAP, 180.0, 30.0)

CASES: list[tuple[str, Facts, History, str, str]] = [
    # (what, facts, history, kind, reason fragment)
    ("every node failed its preflight: fail, say which", Facts("preflight", reason="preflight failed on n2: gpu-ecc"),
     QUIET, "fail", "preflight failed on n2"),
    ("a slow first import: requeue", Facts("preflight", reason="preflight on n2 may pass", transient=True),
     QUIET, "requeue", "preflight"),
    ("a slow import after two crashes: the cap", Facts("preflight", reason="may pass", transient=True),
     CRASH_LOOP, "fail", "3 chunks in a row made no progress; last: preflight"),
    # A node that failed on hard evidence is left out (cluster.exclude_policy), within the cap.
    ("one node's failed row remap: leave it out", Facts("preflight", **BAD_N3), QUIET, "exclude",
     "preflight failed on n3"),
    ("observe: say what it would have done, and fail", Facts("preflight", **{**BAD_N3, "exclude_policy": "observe"}),
     QUIET, "fail", "observe: the chunk would have left n3 out"),
    ("off: fail as before", Facts("preflight", **{**BAD_N3, "exclude_policy": "off"}), QUIET, "fail",
     "preflight failed on n3: gpu-remap"),
    ("one node out already: a second is over the cap", Facts("preflight", **{**BAD_N3, "excluded": ("n7",)}),
     QUIET, "fail", "that would make 2 nodes excluded, cluster.max_excluded_nodes is 1"),
    ("the same node again (its exclusion lapsed or never took) stays within the cap",
     Facts("preflight", **{**BAD_N3, "excluded": ("n3",)}), QUIET, "exclude", "n3"),
    ("a soft failure (low /dev/shm) never excludes", Facts("preflight", **{**BAD_N3, "hard": ()}), QUIET, "fail",
     "preflight failed on n3"),
    ("a node with a hard and a node with a soft failure: no guess", Facts("preflight", **{
        **BAD_N3, "failed_nodes": ("n3", "n4")}), QUIET, "fail", "preflight failed on n3"),
    ("every node failed: the install, not a node", Facts("preflight", **{
        **BAD_N3, "failed_nodes": ("n3", "n4"), "hard": (("n3", "x"), ("n4", "y")), "alloc_nodes": 2,
        "max_excluded": 4}), QUIET, "fail", "preflight failed on n3"),
    ("no address", Facts("no-address", detail="no address the other nodes can reach: x"), QUIET, "fail",
     "no address"),
    ("Ray's nodes missing: a crash of a node", Facts("ray", detail="Ray saw 3/4 nodes"), QUIET, "requeue",
     "crashed-node"),
    ("Ray's nodes missing a third time", Facts("ray", detail="Ray saw 3/4 nodes"), CRASH_LOOP, "fail",
     "last: crashed-node (Ray saw 3/4 nodes)"),
    ("no checkpoint to resume from", Facts("no-checkpoint", detail="no checkpoint to resume from: torn"), QUIET,
     "fail", "no checkpoint"),
    ("the target was saved by the chunk before", Facts("target-saved", reached_target=True), QUIET, "finish", ""),
    ("no room for the next checkpoint", Facts("disk-low", detail="/ckpt has 1 GB free"), QUIET, "fail",
     "1 GB free"),
    ("the trainer finished", Facts("trainer-exited", reason="finished", reached_target=True), CRASH_LOOP, "finish",
     ""),
    ("the trainer crashed, nothing before", Facts("trainer-exited", reason="crashed-nccl", detail="status 1",
                                                  stepped=True), QUIET, "requeue", "crashed-nccl"),
    ("the trainer ran out of memory a third time", Facts("trainer-exited", reason="crashed-oom", detail="status 137"),
     CRASH_LOOP, "fail", "last: crashed-oom (status 137)"),
    ("a full disk crash is a crash too", Facts("trainer-exited", reason="crashed-disk"), QUIET, "requeue",
     "crashed-disk"),
    ("the trainer exited cleanly short of the target", Facts("trainer-exited", reason="exited-early"), QUIET,
     "requeue", "exited-early"),
    ("it ended after the save a stop asked for", Facts("trainer-exited", reason="crashed-other", stop_saved=True),
     CRASH_LOOP, "requeue", "stop-saved"),
    # In-job restart: a crash a fresh start may cure, every node alive, restarts left, time for a start-up and a step.
    ("NCCL error, nodes alive, time left: restart in the job", Facts("trainer-exited", **CURABLE), CRASH_LOOP,
     "restart-in-job", "crashed-nccl"),
    ("a worker's OOM restarts too", Facts("trainer-exited", **{**CURABLE, "reason": "crashed-oom"}), QUIET,
     "restart-in-job", "crashed-oom"),
    ("an actor death with every node alive", Facts("trainer-exited", **{**CURABLE, "reason": "crashed-node"}),
     QUIET, "restart-in-job", "crashed-node"),
    ("a worker killed, its node alive", Facts("trainer-exited", **{**CURABLE, "reason": "crashed-worker"}),
     QUIET, "restart-in-job", "crashed-worker"),
    ("an unclassified exception", Facts("trainer-exited", **{**CURABLE, "reason": "crashed-other"}), QUIET,
     "restart-in-job", "crashed-other"),
    ("a node lost (Ray's GCS): requeue", Facts("trainer-exited", **{**CURABLE, "nodes_alive": False}), QUIET,
     "requeue", "crashed-nccl"),
    ("Ray's GCS not asked", Facts("trainer-exited", **{**CURABLE, "nodes_alive": None}), QUIET, "requeue",
     "crashed-nccl"),
    ("a full disk is not cured by a restart", Facts("trainer-exited", **{**CURABLE, "reason": "crashed-disk"}),
     QUIET, "requeue", "crashed-disk"),
    ("a clean exit short of the target is not either", Facts("trainer-exited", **{**CURABLE,
                                                                                  "reason": "exited-early"}),
     QUIET, "requeue", "exited-early"),
    ("the restarts used up: requeue", Facts("trainer-exited", **{**CURABLE, "restarts": 2}), QUIET, "requeue",
     "crashed-nccl"),
    ("the restarts used up after two crashes: the cap", Facts("trainer-exited", **{**CURABLE, "restarts": 2}),
     CRASH_LOOP, "fail", "last: crashed-nccl"),
    ("too little time left for a start-up and a step", Facts("trainer-exited", **{**CURABLE, "time_left_s": 99}),
     QUIET, "requeue", "crashed-nccl"),
    ("no step yet this chunk: not known to fit", Facts("trainer-exited", **{**CURABLE, "need_s": None}), QUIET,
     "requeue", "crashed-nccl"),
    ("no end time known", Facts("trainer-exited", **{**CURABLE, "time_left_s": None}), QUIET, "requeue",
     "crashed-nccl"),
    ("restarts off", Facts("trainer-exited", **{**CURABLE, "max_restarts": 0}), QUIET, "requeue", "crashed-nccl"),
    ("save-now's save done", Facts("save-now"), QUIET, "requeue", "save-now"),
    ("save-now's save was the target", Facts("save-now", reached_target=True), QUIET, "finish", ""),
    ("the limit, a save made", Facts("limit-signal", reason="time-limit", saved=True), CRASH_LOOP, "requeue",
     "time-limit"),
    ("the limit, the target saved", Facts("limit-signal", reason="time-limit", saved=True, reached_target=True),
     QUIET, "finish", ""),
    ("the limit before any save, nothing before", Facts("limit-signal", reason="time-limit"), QUIET, "requeue",
     "time-limit"),
    ("the limit before verl's first step, a third time: too short", Facts("limit-signal", reason="time-limit",
                                                                          seconds=150, trainer_seconds=121),
     TOO_SHORT, "fail", "too short for the start-up (trainer ran 120 s, 118 s, 121 s"),
    ("the limit before a save after crashes", Facts("limit-signal", reason="time-limit", stepped=True), CRASH_LOOP,
     "fail", "last: time-limit (the chunk ended before a save)"),
    ("a preemption before the first step is no crash", Facts("limit-signal", reason="preempted"), PREEMPTED,
     "requeue", "preempted"),
    ("a USR2 without a stop reason", Facts("limit-signal"), QUIET, "requeue", "signal"),
    ("SIGTERM: a preemption, Slurm decides", Facts("sigterm", reason=""), QUIET, "exit", ""),
    ("SIGTERM during the limit's stop: the chunk requeues", Facts("sigterm", reason="time-limit",
                                                                  stopping_for_requeue=True), QUIET, "requeue",
     "time-limit"),
    ("SIGTERM during the stop, target saved", Facts("sigterm", reason="time-limit", stopping_for_requeue=True,
                                                    reached_target=True), QUIET, "exit", ""),
    # A hung trainer (its stacks written already), by run.on_hang.
    ("hang, restart: in the job when a restart may", Facts("hang", **{**CURABLE, "reason": "hung"}), QUIET,
     "restart-in-job", "hung"),
    ("hang, restart, restarts spent: requeue", Facts("hang", **{**CURABLE, "reason": "hung", "restarts": 2}), QUIET,
     "requeue", "hung"),
    ("hang, restart, no time for a start-up and a step: requeue",
     Facts("hang", **{**CURABLE, "reason": "hung", "time_left_s": 99.0}), QUIET, "requeue", "hung"),
    ("hang, restart, a node lost: requeue", Facts("hang", **{**CURABLE, "reason": "hung", "nodes_alive": False}),
     QUIET, "requeue", "hung"),
    ("hang, requeue: requeue though a restart may", Facts("hang", **{**CURABLE, "reason": "hung",
                                                                     "on_hang": "requeue"}), QUIET, "requeue", "hung"),
    ("hang, wait: stacks only, the trainer left as it is",
     Facts("hang", **{**CURABLE, "reason": "hung", "on_hang": "wait"}), QUIET, "continue", "hung"),
    ("hang after two crashed chunks: the cap", Facts("hang", reason="hung", on_hang="requeue"), CRASH_LOOP, "fail",
     "3 chunks in a row made no progress; last: hung"),
]


@pytest.mark.parametrize(("what", "facts", "history", "kind", "reason"), CASES, ids=[c[0] for c in CASES])
def test_chunk_policy(what: str, facts: Facts, history: History, kind: str, reason: str) -> None:
    action = decide(facts, history)
    assert action.kind == kind, action
    assert reason in action.reason, action


def test_every_ending_is_decided() -> None:
    from typing import get_args

    from justrl_hpc.jobs.train.chunk_policy import Ending

    assert {c[1].ending for c in CASES} == set(get_args(Ending))
    with pytest.raises(ValueError):
        decide(Facts("nonsense"))  # type: ignore[arg-type]


def test_a_crash_requeue_says_how_many_chunks_made_no_progress() -> None:
    action = decide(Facts("trainer-exited", reason="crashed-nccl", detail="status 1"),
                    History((ChunkEnd("crashed-other", True),), CAP))
    assert action == Action("requeue", "crashed-nccl", {"detail": "status 1", "without_progress": "2/3"})
    sigterm = decide(Facts("sigterm", reason="save-now", stopping_for_requeue=True))
    assert sigterm.notes == {"during": "sigterm"}
    restart = decide(Facts("trainer-exited", **CURABLE))
    assert restart.notes == {"detail": "status 1", "restart": "2"}
    out = decide(Facts("preflight", **{**BAD_N3, "excluded": ("n1",), "max_excluded": 2}))
    assert out.notes == {"nodes": "n3", "exclude": "n1,n3", "evidence": "n3: gpu-remap: GPU 2: a row remap failed"}


# (what, now, trainer started, its steps' wall times, hung: the limit passed, or None). Figures: factor 3,
# floor 60 s, start-up grace 100 s, so the limit is max(3 × p95 step, 60) and 160 s + the default before a step.
HUNG = [
    ("a step 50 s ago, 10 s steps: not yet (floor 60 s)", 1050.0, 0.0, [1000.0 - 10 * i for i in range(5)][::-1],
     None),
    ("a step 61 s ago, 10 s steps: hung at the floor", 1061.0, 0.0, [1000.0 - 10 * i for i in range(5)][::-1], 60.0),
    ("30 s steps: 3 × p95 = 90 s, 80 s is not hung", 1080.0, 0.0, [1000.0 - 30 * i for i in range(5)][::-1], None),
    ("30 s steps: 91 s is", 1091.0, 0.0, [1000.0 - 30 * i for i in range(5)][::-1], 90.0),
    ("no step yet: max(3 × 300 s default, 60) + 100 s grace", 999.0, 0.0, [], None),
    ("no step 1001 s after its start", 1001.0, 0.0, [], 1000.0),
    ("one step: no duration known, the default's limit", 1000.0 + 901, 0.0, [1000.0], 900.0),
]


@pytest.mark.parametrize(("what", "now", "started", "steps", "limit"), HUNG, ids=[h[0] for h in HUNG])
def test_when_the_trainer_counts_as_hung(what: str, now: float, started: float, steps: list[float],
                                         limit: float | None) -> None:
    from justrl_hpc.jobs.train.chunk_policy import hung

    assert hung(now, started, steps, 3.0, 60.0, 100.0) == limit


def test_the_chunk_takes_stacks_at_the_monitors_stall_figure() -> None:
    """The run's defaults and the S1 alert's agree (one figure, core/stall.py)."""
    from justrl_hpc.core.config import RunConfig
    from justrl_hpc.monitor.rules.progress import ProgressSettings

    run, s1 = RunConfig(), ProgressSettings()
    assert (run.hang_factor, run.hang_min_s, run.hang_startup_grace_s) == (
        s1.stall_warn_factor, s1.stall_warn_min_s, s1.startup_grace_s)


@pytest.mark.parametrize(
    ("requeue", "run_ended", "chained", "then"),
    [
        (True, None, False, "requeue"),
        (True, None, True, "chained"),
        # The limit's signal during the run's last step: the handler stopped the trainer at its target and the run
        # finished (2026-12-07: submitit's None made the job FAILED; now it ends COMPLETED).
        (False, "finished", False, "completed"),
        (False, "finished", True, "completed"),
        (False, "failed", False, "end"),
        (False, None, False, "end"),
    ],
)
def test_what_a_chunk_does_after_the_limit_signal(requeue: bool, run_ended: str | None, chained: bool,
                                                  then: str) -> None:
    from justrl_hpc.jobs.train.entry import after_limit_signal

    assert after_limit_signal(requeue, run_ended, chained) == then
