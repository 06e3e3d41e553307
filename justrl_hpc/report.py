"""`justrl-hpc report RUN`: where a run's allocated time went, per chunk and overall, read off its ledger.

One derivation of chunks and goodput from `ledger.jsonl`, shared by this report, the dashboard
(monitor/view.py) and benchmarks/bench_lifecycle.py, so the three never disagree about a run.

Per chunk: allocated wall time (started → requeued/finished/failed), the queue wait before it (from the
`submitted` or previous `requeued` event: the dev cluster has no Slurm accounting, so sacct cannot say when
a job became eligible), its start-up split into Ray up, the suite's resume check, and trainer init (model and
vLLM init plus checkpoint load: the ledger has no event between them), training time, the steps a crash
threw away (trained after the last checkpoint the next chunk resumed from), the tail at its end, and the
requeue gap. Goodput = useful training time (kept steps × the chunk's median step time) / allocated time.

Also `model_real_run`: the same figures modelled for the real 4,380-step run, the suite's way and the
published (naive) way, from the overheads a rehearsal measured.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from justrl_hpc.errors import UserError

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
        elif kind == "trainer-started":
            c.trainer_started = t
            if _is_int(e.get("step")):
                c.start_step = e["step"]
        elif kind == "step" and _is_int(e.get("step")):
            c.last_step = e["step"]
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
        c.steps_lost = max(0, c.last_step - max(survived, c.start_step or 0))
        c.kept_steps = max(0, c.last_step - (c.start_step or 0) - c.steps_lost)
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
    )


def report_run(run_dir: Path, now: float | None = None) -> RunReport:
    """The report of a run folder; UserError when it is not one."""
    from justrl_hpc.ledger import Ledger

    if not (run_dir / "ledger.jsonl").is_file():
        raise UserError(
            f"{run_dir} has no ledger.jsonl (not a run folder, or nothing was ever submitted)", "RUN"
        )
    return run_report(Ledger(run_dir).read(), target_of(run_dir), now, run_dir.name)


def target_of(run_dir: Path) -> int | None:
    import yaml

    try:
        data = yaml.safe_load((run_dir / "run.yaml").read_text()) or {}
    except (OSError, ValueError):
        return None
    target = (data.get("recipe") or {}).get("total_training_steps") if isinstance(data, dict) else None
    return target if _is_int(target) else None


def find_run_dir(name_or_path: str) -> Path:
    path = Path(name_or_path)
    for candidate in (path, Path("runs") / name_or_path):
        if (candidate / "ledger.jsonl").is_file() or (candidate / "run.yaml").is_file():
            return candidate.resolve()
    raise UserError(
        f"no run folder {name_or_path!r} (looked there and under runs/ for run.yaml or ledger.jsonl)", "RUN"
    )


# -- the text table -----------------------------------------------------------------------------------------


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 3600:
        return f"{x / 3600:.1f}h"
    if x >= 100:
        return f"{x / 60:.1f}m"
    return f"{x:.1f}s"


def format_report(r: RunReport) -> str:
    state = "finished" if r.finished else (f"failed: {r.failed}" if r.failed is not None else "not finished")
    good = "-" if r.goodput is None else f"{100 * r.goodput:.1f}%"
    lines = [
        f"run {r.name}: {state}; step {r.last_step if r.last_step is not None else '-'}"
        f" of {r.target_step if r.target_step is not None else '?'}, last checkpoint "
        f"{r.saved_step if r.saved_step is not None else '-'}; {len(r.chunks)} chunks",
        f"goodput {good} (useful {_s(r.useful_s)} of {_s(r.allocated_s)} allocated); wall {_s(r.wall_s)}; "
        f"steps lost {r.steps_lost}",
        f"time: queue wait {_s(r.queue_wait_s)}, start-up {_s(r.startup_s)}, tail {_s(r.tail_s)}, "
        f"requeue gaps {_s(r.requeue_gap_s)}",
        "",
    ]
    head = (
        "chunk",
        "job",
        "ended",
        "steps",
        "lost",
        "alloc",
        "queue",
        "ray",
        "resume",
        "init",
        "train",
        "tail",
        "gap",
        "good",
    )
    rows = [head]
    for c in r.chunks:
        alloc = c.allocated_s
        good_c = f"{100 * c.useful_s / alloc:.0f}%" if alloc else "-"
        steps = "-" if c.last_step is None else f"{c.first_step}-{c.last_step}"
        rows.append(
            (
                str(c.chunk),
                c.job_id or "-",
                c.reason[:24],
                steps,
                str(c.steps_lost),
                _s(alloc),
                _s(c.queue_wait_s),
                _s(c.ray_up_s),
                _s(c.resume_check_s),
                _s(c.trainer_init_s),
                _s(c.training_s),
                _s(c.tail_s),
                _s(c.requeue_gap_s),
                good_c,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(w) if i < 3 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    lines.append("")
    lines.append(
        "queue: submitted/requeued → started; ray: started → Ray saw every node; resume: checkpoint check; "
        "init: trainer start → first step began (model/vLLM init + checkpoint load); "
        "tail: last step → allocation handed back; gap: requeued → next chunk started"
    )
    return "\n".join(lines)


# -- the real run, modelled ---------------------------------------------------------------------------------


@dataclass
class RealRunModel:
    """The real run's figures. Sources: justrl-recipe.md (4,380 steps, ~296 s/step, ~21 GB checkpoints, saves
    every 50 steps), cluster-facts.md (Slurm's ~120 s BeginTime hold after a requeue), config defaults
    (24 h chunks, 900 s signal lead)."""

    target_steps: int = 4380
    step_s: float = 296.0
    chunk_s: float = 24 * 3600.0
    signal_lead_s: float = 900.0
    save_freq: int = 50
    checkpoint_gb: float = 21.0
    # 1/3 GB/s effective to a parallel filesystem (plan.py's ~3 s per GB): a 21 GB save takes ~63 s, and the
    # load at start-up is taken at the same rate (a conservative choice: reads are usually faster).
    fs_gb_per_s: float = 1 / 3
    # Actor/ref FSDP init (~60 s for 1.5B on 32 ranks) + vLLM engine start: a vLLM 1B model measured 43 s of
    # CUDA-graph capture and ~132 s until ready (Nemotron-3-Embed-1B model card, vLLM 0.25). 60 + 132.
    init_s: float = 192.0
    suite_startup_s: float = 12.5  # chunk start → trainer start (Ray up + resume check), measured
    stop_tail_s: float = 2.0  # last save landed → allocation handed back, measured
    requeue_gap_s: float = 11.8  # requeued → next chunk started with the suite's release, measured
    naive_hold_s: float = 120.0  # plain --requeue: Slurm's BeginTime hold, measured on the dev cluster
    naive_signal_lead_s: float = 90.0  # a fixed --signal=USR2@90 (submitit's default slurm_signal_delay_s)

    @property
    def save_s(self) -> float:
        return self.checkpoint_gb / self.fs_gb_per_s

    def startup_s(self, first: bool) -> float:
        return self.suite_startup_s + self.init_s + (0.0 if first else self.save_s)


def _simulate(m: RealRunModel, suite: bool) -> dict[str, Any]:
    """Chunk by chunk to the target step.

    Suite: the step in flight when the pre-limit signal comes completes, is saved, and the allocation is
    handed back; the release makes the requeued job eligible at once. Naive (the published way): periodic
    saves only; a fixed --signal requeues the job as it comes, so the step in flight and every step since the
    last periodic save are lost (a save the signal interrupts is torn); then Slurm's BeginTime hold."""
    step, chunks, allocated, gaps, lost_steps, saves = 0, 0, 0.0, 0.0, 0, 0
    lead = m.signal_lead_s if suite else m.naive_signal_lead_s
    signal_at = m.chunk_s - lead
    while step < m.target_steps:
        chunks += 1
        resumed = saved = step
        t = m.startup_s(first=chunks == 1)
        while step < m.target_steps and t < signal_at:
            if not suite and t + m.step_s > signal_at:
                break  # this step would be cut by the signal
            t += m.step_s
            step += 1
            if step % m.save_freq == 0 or step == m.target_steps:
                if not suite and t + m.save_s > signal_at and step < m.target_steps:
                    break  # the signal lands during this save: torn, resumed from the one before
                t += m.save_s
                saves += 1
                saved = step
        if step == resumed:
            raise ValueError("a chunk trains no step: its start-up does not fit in the chunk")
        if suite:
            if saved != step:
                t += m.save_s  # the deadline save
                saves += 1
                saved = step
            t += m.stop_tail_s
        elif step < m.target_steps:
            t = signal_at
        lost_steps += step - saved
        step = saved
        allocated += t
        if step < m.target_steps:
            gaps += m.requeue_gap_s if suite else m.naive_hold_s
    useful = m.target_steps * m.step_s
    return {
        "chunks": chunks,
        "allocated_h": round(allocated / 3600, 2),
        "wall_h": round((allocated + gaps) / 3600, 2),
        "steps_lost": lost_steps,
        "saves": saves,
        "goodput": round(useful / allocated, 4),
        "wall_goodput": round(useful / (allocated + gaps), 4),
    }


def model_real_run(
    requeue_gap_s: float | None = None,
    suite_startup_s: float | None = None,
    stop_tail_s: float | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Modelled goodput of the 4,380-step run, the suite's way and the naive way; measured overheads (from a
    rehearsal's report) replace the defaults when given."""
    m = RealRunModel(**overrides)
    if requeue_gap_s is not None:
        m.requeue_gap_s = requeue_gap_s
    if suite_startup_s is not None:
        m.suite_startup_s = suite_startup_s
    if stop_tail_s is not None:
        m.stop_tail_s = stop_tail_s
    return {
        "inputs": {**asdict(m), "save_s": round(m.save_s, 1), "checkpoint_load_s": round(m.save_s, 1)},
        "suite": _simulate(m, suite=True),
        "naive": _simulate(m, suite=False),
    }


def measured_overheads(r: RunReport) -> dict[str, float]:
    """A rehearsal's per-chunk overheads the model takes: median start-up, stop tail and requeue gap."""
    startup = [
        c.trainer_started - c.start for c in r.chunks if c.trainer_started is not None and c.start is not None
    ]
    tails = [c.tail_s for c in r.chunks if c.tail_s is not None and c.reason not in ("running", "vanished")]
    gaps = [c.requeue_gap_s for c in r.chunks if c.requeue_gap_s is not None]
    out: dict[str, float] = {}
    if startup:
        out["suite_startup_s"] = round(statistics.median(startup), 2)
    if tails:
        out["stop_tail_s"] = round(statistics.median(tails), 2)
    if gaps:
        out["requeue_gap_s"] = round(statistics.median(gaps), 2)
    return out


# -- the verb -----------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="justrl-hpc report",
        description="Where a run's allocated time went: goodput per chunk and overall.",
    )
    p.add_argument("run", help="run name under runs/ or a run folder")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = p.parse_args(argv)
    report = report_run(find_run_dir(args.run))
    if args.json:
        print(json.dumps(report.to_dict(), separators=(",", ":")))
    else:
        print(format_report(report))
    return 0
