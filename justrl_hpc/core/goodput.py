"""Chunks and goodput, derived from a run's ledger: one derivation shared by `justrl-hpc report`, the
dashboard and benchmarks/bench_lifecycle.py, so the three never disagree about a run.

Per chunk: allocated wall time (started → requeued/finished/failed), the queue wait before it (from the
`submitted` or previous `requeued` event: the dev cluster has no Slurm accounting, so sacct cannot say when
a job became eligible), its start-up split into Ray up, the suite's resume check, and trainer init (model and
vLLM init plus checkpoint load: the ledger has no event between them), training time, the steps a crash
threw away (trained after the last checkpoint the next chunk resumed from), the tail at its end, and the
requeue gap. Goodput = useful training time (kept steps × the chunk's median step time) / allocated time.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from justrl_hpc.core.errors import UserError
from justrl_hpc.core.paths import RunPaths

END_EVENTS = ("requeued", "finished", "failed", "chunk-failed")


# -- per chunk ----------------------------------------------------------------------------------------------


@dataclass
class ChunkReport:
    chunk: int
    job_id: str | None
    hosts: str = ""
    eligible: float | None = None  # when the job could start: its submission or the previous requeue
    start: float | None = None
    ray_ready: float | None = None
    trainer_started: float | None = None
    first_step_time: float | None = None  # the first step's event (logged when that step completed)
    last_step_time: float | None = None
    stop_requested: float | None = None
    exited: float | None = None
    end: float | None = None  # None while the chunk runs
    start_step: int | None = None  # the step the trainer resumed from
    last_step: int | None = None
    saved_step: int | None = None  # the newest checkpoint this chunk wrote
    reason: str = ""  # why it ended: time-limit, preempted, finished, a crash class, running, vanished
    step_s: float | None = None  # the chunk's median step time
    pace_s: float | None = None  # step_s, or the run's median where this chunk logged too few steps
    requeue_gap_s: float | None = None  # requeued → the next incarnation started
    steps_lost: int = 0  # trained, then thrown away: the next chunk resumed from an earlier step
    kept_steps: int | None = None  # None while running
    skipped: list[int] = field(default_factory=list)  # torn checkpoints this chunk's resume moved aside
    # In-job restarts (the trainer crashed, the chunk started it again in its allocation): how many, the time
    # from each crash's decision to the restarted trainer's first step, and the steps trained again.
    restarts: int = 0
    restart_s: float = 0.0
    restart_lost_steps: int = 0
    restart_at: float | None = None  # a restart whose first step is still to come
    # Hangs (no step for the stall limit; the chunk took every process's stacks, then restarted or requeued):
    # how many, and the time each cost before anything was killed (the stall itself and the stacks' dump).
    hangs: int = 0
    hang_s: float = 0.0

    @property
    def steps_done(self) -> int | None:
        if self.last_step is None:
            return None
        return self.last_step - (self.start_step or 0)

    @property
    def first_step(self) -> int | None:
        return None if self.last_step is None else (self.start_step or 0) + 1

    @property
    def allocated_s(self) -> float | None:
        return _diff(self.end, self.start)

    @property
    def queue_wait_s(self) -> float | None:
        return _diff(self.start, self.eligible)

    @property
    def ray_up_s(self) -> float | None:
        return _diff(self.ray_ready, self.start)

    @property
    def resume_check_s(self) -> float | None:
        """Ray ready → trainer started: verifying the checkpoint, retention, the disk check."""
        return _diff(self.trainer_started, self.ray_ready)

    @property
    def train_start(self) -> float | None:
        """When the first step began: its event minus one step time (the event lands when it completes)."""
        if self.first_step_time is None:
            return None
        return self.first_step_time - (self.pace_s or 0.0)

    @property
    def trainer_init_s(self) -> float | None:
        """Trainer started → first step began: model/vLLM init and the checkpoint load."""
        return _diff(self.train_start, self.trainer_started)

    @property
    def to_first_step_s(self) -> float | None:
        return _diff(self.train_start, self.start)

    @property
    def training_s(self) -> float | None:
        return _diff(self.last_step_time, self.train_start)

    @property
    def useful_s(self) -> float:
        if self.pace_s is None:
            return 0.0
        steps = self.kept_steps if self.end is not None else self.steps_done
        return (steps or 0) * self.pace_s

    @property
    def lost_train_s(self) -> float:
        return self.steps_lost * (self.pace_s or 0.0)

    @property
    def tail_s(self) -> float | None:
        """Last step done → allocation handed back: the deadline save, the trainer's stop, the teardown."""
        return _diff(self.end, self.last_step_time)  # None for a chunk that never trained

    @property
    def stop_to_end_s(self) -> float | None:
        """Stop requested (signal, preemption, save-now) → allocation handed back."""
        return _diff(self.end, self.stop_requested)

    @property
    def exit_to_end_s(self) -> float | None:
        """Trainer exited → requeue (or finish) issued: the suite's own share of the tail."""
        return _diff(self.end, self.exited)

    @property
    def lost_s(self) -> float | None:
        """Allocated time that did not end up in kept steps (None while running)."""
        if self.end is None or self.start is None or self.pace_s is None:
            return None
        return max(0.0, (self.end - self.start) - self.useful_s)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, a - b)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def event_time(e: dict[str, Any]) -> float | None:
    t = e.get("time")
    if isinstance(t, str):
        try:
            return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return _num(t)


def median_step_s(points: list[tuple[int, float]]) -> float | None:
    """Median seconds between consecutive step events one step apart (a resume gap is not a step)."""
    gaps = [
        t1 - t0 for (s0, t0), (s1, t1) in zip(points, points[1:], strict=False) if s1 == s0 + 1 and t1 >= t0
    ]
    return statistics.median(gaps) if gaps else None


def chunk_reports(events: list[dict[str, Any]]) -> list[ChunkReport]:
    """The run's chunks in order, with every figure the ledger gives; the last one may still be running."""
    by_chunk: dict[int, ChunkReport] = {}
    step_times: dict[int, list[tuple[int, float]]] = {}
    eligible: float | None = None  # the newest submission or requeue not yet claimed by a chunk
    for e in events:
        kind = e.get("event")
        t = event_time(e)
        if kind == "submitted":
            eligible = t
            continue
        n = e.get("chunk")
        if not _is_int(n):
            continue
        c = by_chunk.get(n)
        if c is None:
            job = e.get("job_id")
            c = by_chunk[n] = ChunkReport(chunk=n, job_id=None if job in (None, "") else str(job))
        if kind == "started":
            c.start, c.hosts, c.eligible = t, str(e.get("hosts") or ""), eligible
            eligible = None
        elif kind == "ray-ready":
            c.ray_ready = t
        elif kind == "restarted-in-job":
            c.restarts, c.restart_at = c.restarts + 1, t
        elif kind == "hang":
            c.hangs += 1
            c.hang_s += (_num(e.get("stalled_s")) or 0.0) + (_num(e.get("seconds")) or 0.0)
        elif kind == "trainer-started" and c.trainer_started is not None:  # the same chunk's, after a restart
            if _is_int(e.get("step")) and c.last_step is not None:
                c.restart_lost_steps += max(0, c.last_step - e["step"])
                # What the chunk keeps is judged from here on: the steps past the restart's step are counted
                # above, not again when the next chunk resumes behind them (the soak saw them counted twice).
                c.last_step = e["step"]
        elif kind == "trainer-started":
            c.trainer_started = t
            if _is_int(e.get("step")):
                c.start_step = e["step"]
        elif kind == "step" and _is_int(e.get("step")):
            if c.restart_at is not None and t is not None:
                c.restart_s, c.restart_at = c.restart_s + (t - c.restart_at), None
            c.last_step = max(c.last_step or 0, e["step"])
            if t is not None:
                c.first_step_time = c.first_step_time if c.first_step_time is not None else t
                c.last_step_time = t
                step_times.setdefault(n, []).append((e["step"], t))
        elif kind == "saved" and _is_int(e.get("step")):
            c.saved_step = e["step"]
        elif kind == "stop-requested":
            c.stop_requested = c.stop_requested if c.stop_requested is not None else t
        elif kind == "checkpoint-skipped" and _is_int(e.get("step")):
            c.skipped.append(e["step"])
        elif kind == "trainer-exited":
            c.exited = t
            if c.start_step is None and _is_int(e.get("first_step")):
                c.start_step = e["first_step"] - 1
            if _is_int(e.get("step")):
                c.last_step = max(c.last_step or 0, e["step"])
            c.reason = c.reason or str(e.get("reason") or "exited")
        elif kind in END_EVENTS:
            c.end = t
            reason = str(e.get("reason") or "")
            if kind == "requeued":
                c.reason = reason or "requeued"
                eligible = t
            elif kind == "finished":
                c.reason = "finished"
            elif kind == "chunk-failed":
                c.reason = reason or "chunk-failed"
            else:
                c.reason = f"failed: {reason}" if reason else "failed"
    chunks = [by_chunk[k] for k in sorted(by_chunk)]
    for i, c in enumerate(chunks):
        if c.start_step is None and i > 0:
            prev = chunks[i - 1]
            c.start_step = prev.saved_step if prev.saved_step is not None else prev.start_step
        c.step_s = median_step_s(step_times.get(c.chunk, []))
        if c.end is None:
            later = chunks[i + 1].start if i + 1 < len(chunks) else None
            if later is not None:
                # no end event: killed with its node, or scancel -9
                c.end, c.reason = later, c.reason or "vanished"
            else:
                c.reason = c.reason or "running"
    overall = overall_step_s(chunks)
    for i, c in enumerate(chunks):
        c.pace_s = c.step_s or overall
        if c.reason not in ("vanished", "running") and i + 1 < len(chunks):
            c.requeue_gap_s = _diff(chunks[i + 1].start, c.end)
        if c.end is None or c.last_step is None:
            if c.end is not None:
                c.kept_steps = 0
            continue
        # What survived is what the next chunk resumed from (a save the resume found torn does not count);
        # with no later chunk, the newest save this chunk made.
        resumed = next((d.start_step for d in chunks[i + 1 :] if d.trainer_started is not None), None)
        if c.reason == "finished":
            survived = c.last_step
        elif resumed is not None:
            survived = resumed
        else:
            survived = c.saved_step if c.saved_step is not None else (c.start_step or 0)
        lost = max(0, c.last_step - max(survived, c.start_step or 0))
        c.kept_steps = max(0, c.last_step - (c.start_step or 0) - lost)
        c.steps_lost = lost + c.restart_lost_steps
    return chunks


def overall_step_s(chunks: list[Any]) -> float | None:
    known = [c.step_s for c in chunks if c.step_s]
    return statistics.median(known) if known else None


class _ChunkLike(Protocol):
    start: float | None
    end: float | None
    step_s: float | None
    kept_steps: int | None

    @property
    def steps_done(self) -> int | None: ...


def wall_goodput(chunks: list[Any], done: bool, now: float) -> float | None:
    """Share of the wall time since the first chunk started that went into steps the run kept: the
    dashboard's figure (the running chunk's steps count as kept; waits between chunks count as lost)."""
    items: list[_ChunkLike] = chunks
    starts = [c.start for c in items if c.start is not None]
    ends = [c.end for c in items if c.end is not None]
    if not starts:
        return None
    wall = (max(ends) if done and ends else now) - min(starts)
    overall = overall_step_s(items)
    productive = 0.0
    for c in items:
        step_s = c.step_s or overall
        if step_s is None:
            continue
        steps = c.kept_steps if c.end is not None else (c.steps_done or 0)
        productive += (steps or 0) * step_s
    if wall <= 0 or overall is None:
        return None
    return max(0.0, min(1.0, productive / wall))


# -- the whole run ------------------------------------------------------------------------------------------


@dataclass
class RunReport:
    name: str
    finished: bool
    failed: str | None
    target_step: int | None
    last_step: int | None
    saved_step: int | None
    wall_s: float | None  # first submission → end (or now)
    allocated_s: float
    useful_s: float
    goodput: float | None  # useful / allocated
    wall_goodput: float | None  # useful / wall time since the first chunk started
    steps_lost: int
    queue_wait_s: float
    startup_s: float  # chunk start → first step began, summed
    tail_s: float
    requeue_gap_s: float
    chunks: list[ChunkReport]
    restarts_in_job: int = 0
    restart_s: float = 0.0  # each in-job restart's crash → the restarted trainer's first step, summed
    hangs: int = 0
    hang_s: float = 0.0  # each hang's last step → its stacks taken, summed

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "chunks"}
        out["chunks"] = [chunk_dict(c) for c in self.chunks]
        return out


def chunk_dict(c: ChunkReport) -> dict[str, Any]:
    return {
        "chunk": c.chunk,
        "job_id": c.job_id,
        "hosts": c.hosts,
        "reason": c.reason,
        "start_step": c.start_step,
        "first_step": c.first_step,
        "last_step": c.last_step,
        "saved_step": c.saved_step,
        "steps_lost": c.steps_lost,
        "kept_steps": c.kept_steps,
        "skipped_checkpoints": c.skipped,
        "step_s": _r(c.step_s),
        "allocated_s": _r(c.allocated_s),
        "queue_wait_s": _r(c.queue_wait_s),
        "ray_up_s": _r(c.ray_up_s),
        "resume_check_s": _r(c.resume_check_s),
        "trainer_init_s": _r(c.trainer_init_s),
        "to_first_step_s": _r(c.to_first_step_s),
        "training_s": _r(c.training_s),
        "useful_s": _r(c.useful_s),
        "lost_train_s": _r(c.lost_train_s),
        "tail_s": _r(c.tail_s),
        "stop_to_end_s": _r(c.stop_to_end_s),
        "exit_to_end_s": _r(c.exit_to_end_s),
        "requeue_gap_s": _r(c.requeue_gap_s),
        "restarts_in_job": c.restarts,
        "restart_s": _r(c.restart_s),
        "restart_lost_steps": c.restart_lost_steps,
        "hangs": c.hangs,
        "hang_s": _r(c.hang_s),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def run_report(
    events: list[dict[str, Any]], target_step: int | None = None, now: float | None = None, name: str = ""
) -> RunReport:
    now = time.time() if now is None else now
    chunks = chunk_reports(events)
    finished = any(e.get("event") == "finished" for e in events)
    failed = next((str(e.get("reason") or "") for e in reversed(events) if e.get("event") == "failed"), None)
    done = finished or failed is not None
    steps = [e["step"] for e in events if e.get("event") == "step" and _is_int(e.get("step"))]
    saved = [e["step"] for e in events if e.get("event") == "saved" and _is_int(e.get("step"))]
    times = [t for t in (event_time(e) for e in events) if t is not None]
    submitted = [event_time(e) for e in events if e.get("event") == "submitted"]
    first = next((t for t in submitted if t is not None), min(times) if times else None)
    end = max(times) if done and times else now
    allocated = sum((c.allocated_s if c.end is not None else _diff(now, c.start)) or 0.0 for c in chunks)
    useful = sum(c.useful_s for c in chunks)
    return RunReport(
        name=name,
        finished=finished,
        failed=failed,
        target_step=target_step,
        last_step=max(steps) if steps else None,
        saved_step=max(saved) if saved else None,
        wall_s=_diff(end, first),
        allocated_s=allocated,
        useful_s=useful,
        goodput=(useful / allocated) if allocated > 0 else None,
        wall_goodput=wall_goodput(chunks, done, now),
        steps_lost=sum(c.steps_lost for c in chunks),
        queue_wait_s=sum(c.queue_wait_s or 0.0 for c in chunks),
        startup_s=sum(c.to_first_step_s or 0.0 for c in chunks),
        tail_s=sum(c.tail_s or 0.0 for c in chunks if c.end is not None),
        requeue_gap_s=sum(c.requeue_gap_s or 0.0 for c in chunks),
        chunks=chunks,
        restarts_in_job=sum(c.restarts for c in chunks),
        restart_s=sum(c.restart_s for c in chunks),
        hangs=sum(c.hangs for c in chunks),
        hang_s=sum(c.hang_s for c in chunks),
    )


def report_run(run_dir: Path, now: float | None = None) -> RunReport:
    """The report of a run folder; UserError when it is not one."""
    from justrl_hpc.core.ledger import Ledger

    if not RunPaths(run_dir).ledger.is_file():
        raise UserError(
            f"{run_dir} has no ledger.jsonl (not a run folder, or nothing was ever submitted)", "RUN"
        )
    return run_report(Ledger(run_dir).read(), target_of(run_dir), now, run_dir.name)


def target_of(run_dir: Path) -> int | None:
    import yaml

    try:
        data = yaml.safe_load(RunPaths(run_dir).run_yaml.read_text()) or {}
    except (OSError, ValueError):
        return None
    target = (data.get("recipe") or {}).get("total_training_steps") if isinstance(data, dict) else None
    return target if _is_int(target) else None
