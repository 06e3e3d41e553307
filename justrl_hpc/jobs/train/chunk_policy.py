"""What a chunk does next: one pure decision over the facts its driver gathered.

The driver (driver.py) gathers facts — how the preflight, Ray or the trainer ended, what was saved and logged,
whether the target was reached, the ledger's earlier chunks — and carries the answer out; every decision
about the chunk's own allocation is made here: finish the run, requeue the chunk, fail the run, or end the
chunk and leave the job to Slurm. As in NVIDIA's restart agent (nvidia-resiliency-ext, its attribution
DECISIONS.md), evidence, history and policy are separate layers, and the history of prior attempts (the
ledger's chunks since the last verified save) enters only here, through the no-progress policy
(progress_policy.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from justrl_hpc.core import stall
from justrl_hpc.jobs.train import progress_policy
from justrl_hpc.jobs.train.progress_policy import ChunkEnd

# What ended the chunk's work (where the driver asks):
#   preflight      a node failed its checks           no-address   no address the other nodes can reach
#   ray            Ray's head or nodes did not come   no-checkpoint  no verified checkpoint to resume from
#   target-saved   the target step was saved before   disk-low     not room for the next checkpoint
#   trainer-exited the trainer process ended          save-now     a save-now's save is done
#   limit-signal   the pre-limit signal or a USR2 preemption, after the save it asked for (or its budget)
#   sigterm        SIGTERM (a SIGTERM-only preemption, or the limit's own during a stop)
#   hang           the trainer's steps stalled past the S1 figure (`hung`); its stacks are written already
Ending = Literal["preflight", "no-address", "ray", "no-checkpoint", "target-saved", "disk-low", "trainer-exited",
                 "save-now", "limit-signal", "sigterm", "hang"]
Kind = Literal["finish", "requeue", "fail", "exit", "restart-in-job", "exclude", "continue"]
# Crash classes a fresh start of the trainer may cure, while every node lives (Ray's GCS says so): an NCCL
# error, a worker's OOM, a dead vLLM engine or Ray actor, an exception the patterns do not name. Not a full
# disk, a clean exit short of the target, a failed preflight or a lost node: a restart meets them again.
# A hung trainer (`hung`) is ended by the chunk first, then treated the same way when run.on_hang is restart.
RESTARTABLE = frozenset({"crashed-nccl", "crashed-oom", "crashed-node", "crashed-worker", "crashed-other", "hung"})


@dataclass(frozen=True)
class History:
    """The ledger's chunks since the run's last verified save, and the no-progress cap's figures."""

    ends: tuple[ChunkEnd, ...] = ()
    cap: int = 3
    chunk_limit_s: float = 0.0
    signal_lead_s: float = 0.0


@dataclass(frozen=True)
class Facts:
    ending: Ending
    reason: str = ""  # trainer-exited: classify_exit's class; preflight: the verdict; limit-signal: the stop reason
    detail: str = ""  # what the person reads with a failure (the exit status, the Ray error, the free space)
    reached_target: bool = False  # a verified save of the target step, its step logged
    stop_saved: bool = False  # a stop was asked for and a verified, logged save followed it
    saved: bool = False  # a verified save this chunk
    transient: bool = False  # preflight: every failed node's failures may pass on another try
    stopping_for_requeue: bool = False  # sigterm: it came during a stop for a requeue, and no chained job waits
    # This chunk as the no-progress count sees it: a step logged, seconds since its start and its trainer's start.
    stepped: bool = False
    seconds: float | None = None
    trainer_seconds: float | None = None
    # trainer-exited, for a restart inside the job: every node alive by Ray's GCS (None: not asked), restarts
    # this chunk so far and its cap, the seconds left before the pre-limit signal, and what a restart needs
    # (this chunk's start-up to its first step plus a step; None before its first step: not known to fit).
    nodes_alive: bool | None = None
    # preflight: the evidence against each node that failed on hard evidence (preflight.hard_evidence), the
    # nodes of the allocation and those failed, the nodes already left out (unexpired), the cap and the policy.
    hard: tuple[tuple[str, str], ...] = ()
    failed_nodes: tuple[str, ...] = ()
    alloc_nodes: int = 0
    excluded: tuple[str, ...] = ()
    max_excluded: int = 0
    exclude_policy: str = "off"
    restarts: int = 0
    max_restarts: int = 0
    time_left_s: float | None = None
    need_s: float | None = None
    on_hang: str = "restart"  # hang: run.on_hang


@dataclass(frozen=True)
class Action:
    kind: Kind
    reason: str = ""  # requeue: the `requeued` reason; fail: the `failed` reason
    notes: dict[str, str] = field(default_factory=dict)


def restart_need_s(trainer_started_at: float | None, step_times: list[float]) -> float | None:
    """What a restart needs before its first save can come: this trainer's start-up to its first step, plus a
    step (the mean so far; the start-up again when one step is all there is). None before the first step."""
    if not step_times or trainer_started_at is None:
        return None
    startup = step_times[0] - trainer_started_at
    if len(step_times) < 2:
        return 2 * startup
    return startup + (step_times[-1] - step_times[0]) / (len(step_times) - 1)


def hung(now: float, trainer_started_at: float, step_times: Sequence[float], factor: float, floor_s: float,
         startup_grace_s: float) -> float | None:
    """The stall limit (s) the trainer's steps are past, or None: no step for max(factor × p95 step, floor) since
    its last step, or that plus the start-up grace since it started when it has logged none (core/stall.py, the
    S1 alert's figure). `step_times` are this trainer's steps' wall times, oldest first."""
    durations = [b - a for a, b in zip(step_times, step_times[1:], strict=False)]
    waiting_first = not step_times
    limit = stall.limit_s(durations, waiting_first, factor, floor_s, startup_grace_s=startup_grace_s)
    since = step_times[-1] if step_times else trainer_started_at
    return limit if now - since > limit else None


def _can_restart(f: Facts) -> bool:
    return bool(f.reason in RESTARTABLE and f.nodes_alive and f.restarts < f.max_restarts
                and f.time_left_s is not None and f.need_s is not None and f.time_left_s >= f.need_s)


def _crash(f: Facts, h: History, reason: str, detail: str) -> Action:
    """Requeue after a crash, unless too many chunks in a row made no progress."""
    ends = [*h.ends, ChunkEnd(reason, f.stepped, f.seconds, f.trainer_seconds)]
    why = progress_policy.decide(ends, h.cap, h.chunk_limit_s, h.signal_lead_s, detail)
    if why is not None:
        return Action("fail", why)
    return Action("requeue", reason, notes={"detail": detail,
                                            "without_progress": f"{sum(map(progress_policy.counts, ends))}/{h.cap}"})


def _bad_nodes(f: Facts) -> Action:
    """Leave the failed nodes out and requeue, when every one of them failed on hard evidence, some node of
    the allocation passed (all failing is the install or the cluster file, not a node), and the nodes left out
    stay within the cap; else fail and say why none was left out."""
    hard = dict(f.hard)
    bad = sorted(set(f.failed_nodes))
    if f.exclude_policy == "off" or not bad or not set(bad) <= set(hard) or len(bad) >= f.alloc_nodes:
        return Action("fail", f.reason)
    out = sorted(set(f.excluded) | set(bad))
    nodes, evidence = ",".join(bad), "; ".join(f"{n}: {hard[n]}" for n in bad)
    if len(out) > f.max_excluded:
        return Action("fail", f"{f.reason} (not left out automatically: that would make {len(out)} nodes "
                      f"excluded, cluster.max_excluded_nodes is {f.max_excluded})")
    if f.exclude_policy == "observe":
        return Action("fail", f"{f.reason} (cluster.exclude_policy is observe: the chunk would have left "
                      f"{nodes} out and requeued)", notes={"would_exclude": nodes, "evidence": evidence})
    return Action("exclude", f.reason, notes={"nodes": nodes, "exclude": ",".join(out), "evidence": evidence})


def decide(f: Facts, h: History = History()) -> Action:
    """The chunk's next action. Pure: facts and history in, an action out."""
    if f.ending == "preflight":
        # A bad node stays bad: requeueing onto it would fail again. One only slow to import may pass next time.
        return _crash(f, h, "preflight", f.reason) if f.transient else _bad_nodes(f)
    if f.ending == "ray":
        return _crash(f, h, "crashed-node", f.detail)
    if f.ending in ("no-address", "no-checkpoint", "disk-low"):
        return Action("fail", f.detail)
    if f.ending == "target-saved":
        return Action("finish", notes={"note": "target already saved"})
    if f.ending == "trainer-exited":
        if f.reason == "finished":
            return Action("finish")
        if f.stop_saved:  # it ended on its own after the save a stop asked for: the stop's ending holds
            return Action("requeue", "stop-saved")
        if _can_restart(f):
            # In the allocation it holds: no queue wait (hours on a busy partition), no Ray bring-up.
            return Action("restart-in-job", f.reason, notes={"detail": f.detail, "restart": str(f.restarts + 1)})
        return _crash(f, h, f.reason, f.detail)
    if f.ending == "hang":
        if f.on_hang == "wait":  # stacks only: a person debugging it live; the S1 alert has paged them
            return Action("continue", "hung", notes={"detail": f.detail})
        if f.on_hang == "restart" and _can_restart(f):
            return Action("restart-in-job", "hung", notes={"detail": f.detail, "restart": str(f.restarts + 1)})
        return _crash(f, h, "hung", f.detail)
    if f.ending == "save-now":  # the save a stop asked for is done and the trainer stopped
        return Action("finish") if f.reached_target else Action("requeue", "save-now")
    if f.ending == "limit-signal":
        if f.reached_target:
            return Action("finish")
        if not f.saved:
            failed = _crash(f, h, f.reason or "signal", "the chunk ended before a save")
            if failed.kind == "fail":
                return failed
        return Action("requeue", f.reason or "signal")
    if f.ending == "sigterm":
        # Slurm requeues a preempted job itself when the partition says so; a cancelled job stays cancelled.
        # A SIGTERM during a stop for a requeue exits before submitit's requeue would: the chunk issues it.
        if f.stopping_for_requeue and not f.reached_target:
            return Action("requeue", f.reason, notes={"during": "sigterm"})
        return Action("exit")
    raise ValueError(f"unknown ending {f.ending!r}")
