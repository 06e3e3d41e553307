"""What the dashboard shows about one run, as plain data: `load_view(run_dir, cache) -> RunView`.

No rich here, so scripts and tests use it without a screen. `load_view` reads every source of the run
folder through `sources` (a missing source is "no data" in the view and a note in `RunView.notes`, never an
exception) and derives the run's state from the ledger and Slurm: the step, ETA and goodput, the chunk
timeline, the newest job and the status. Keep one `ViewCache` across refreshes: it holds a cursor per file
(ledger, alerts, telemetry, TensorBoard), so a refresh reads only the bytes added since the last one, which
keeps a dashboard left open for the 15 days of a run cheap; and it asks Slurm (`slurm.job_state` of the
newest job in the ledger) at most every `slurm_every_s`.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from justrl_hpc.core import goodput, slurm
from justrl_hpc.core.ledger import NOTES
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.monitor.dashboard.sources import (
    AlertView,
    Curve,
    MonitorStatus,
    NodeView,
    RunCache,
    monitor_status,
    num,
    parse_time,
    read_alerts,
    read_config,
    read_curves,
    read_ledger,
    read_nodes,
    read_tracker,
    str_or_none,
)

RECENT_STEPS = 20  # step times for the ETA: the median of this many recent steps
SLURM_EVERY_S = 10.0  # ask scontrol at most this often per run, however fast the screen refreshes


@dataclass
class ChunkView:
    chunk: int
    job_id: str | None
    start: float | None
    end: float | None  # None while the chunk runs
    hosts: str = ""
    start_step: int | None = None  # the step the trainer resumed from
    last_step: int | None = None
    saved_step: int | None = None  # the newest checkpoint this chunk wrote
    ended: str = ""  # why it ended: time-limit, finished, a crash class, … ("running", "vanished")
    step_s: float | None = None  # the chunk's median step time
    kept_steps: int | None = None  # steps up to the chunk's last checkpoint (None while running)
    lost_s: float | None = None  # wall time that did not end up in kept steps (None while running)

    @property
    def steps_done(self) -> int | None:
        if self.last_step is None:
            return None
        return self.last_step - (self.start_step or 0)


@dataclass
class JobView:
    job_id: str
    state: str  # Slurm's state, or "unknown" when Slurm does not answer
    reason: str = ""
    nodes: str = ""
    end_time: float | None = None
    time_left_s: float | None = None
    from_slurm: bool = True


@dataclass
class RunView:
    name: str
    path: str
    now: float
    recipe: str | None = None
    model: str | None = None
    target_steps: int | None = None
    step: int | None = None
    step_s: float | None = None  # recent median seconds per step
    goodput: float | None = None  # kept step time / wall time since the first chunk started
    eta_s: float | None = None
    status: str = "no data"  # submitted, running, pending, requeued, finished, failed, stopped, no data
    status_reason: str = ""
    chunk: int | None = None
    job: JobView | None = None
    ckpt_step: int | None = None
    ckpt_time: float | None = None
    curves: list[Curve] = field(default_factory=list)
    nodes: list[NodeView] = field(default_factory=list)
    open_alerts: list[AlertView] = field(default_factory=list)
    resolved_alerts: list[AlertView] = field(default_factory=list)
    chunks: list[ChunkView] = field(default_factory=list)
    monitor: MonitorStatus | None = None
    notes: list[str] = field(default_factory=list)  # sources that could not be read, said once each
    bare: bool = False  # not a suite run (no run.yaml, no ledger): chunks, goodput and the job are absent
    metrics_from: str | None = None  # where the curves come from (sources.locate's label)

    @property
    def progress(self) -> float | None:
        if self.step is None or not self.target_steps:
            return None
        return min(1.0, self.step / self.target_steps)

    @property
    def ckpt_age_s(self) -> float | None:
        return None if self.ckpt_time is None else max(0.0, self.now - self.ckpt_time)

    def curve(self, key: str) -> Curve | None:
        return next((c for c in self.curves if c.key == key), None)


@dataclass
class ViewCache:
    """Cursors and parsed state per run folder; pass the same one to every load_view call.

    `slurm_in_background`: ask scontrol on a thread and show the last answer meanwhile (the live screen,
    which a slow or hung slurmctld must not freeze); `on_update` is called when such an answer arrives."""

    slurm_every_s: float = SLURM_EVERY_S
    slurm_in_background: bool = False
    on_update: Callable[[], None] | None = None
    runs: dict[str, RunCache] = field(default_factory=dict)

    def for_run(self, run_dir: Path) -> RunCache:
        return self.runs.setdefault(str(Path(run_dir).resolve()), RunCache())


# -- loading ----------------------------------------------------------------------------------------------------


def load_view(
    run_dir: str | os.PathLike[str],
    cache: ViewCache | None = None,
    *,
    now: float | None = None,
    use_slurm: bool = True,
    console_log: Path | None = None,
) -> RunView:
    """Read what is new in the run folder and return the whole view of the run at `now`. A folder the suite
    did not make (no run.yaml, no ledger.jsonl: verl run by hand) shows its curves and alerts; what only a
    suite run has (chunks, goodput, the Slurm job, the target) is marked absent (`view.bare`)."""
    run_dir = Path(run_dir)
    paths = RunPaths(run_dir)
    cache = cache if cache is not None else ViewCache()
    rc = cache.for_run(run_dir)
    if console_log is not None:
        rc.console_log = Path(console_log)
    now = time.time() if now is None else now
    view = RunView(name=run_dir.name, path=str(run_dir), now=now)
    view.bare = not paths.run_yaml.exists() and not paths.ledger.exists()
    notes: list[str] = []
    _identify(view, read_config(paths, rc, notes))
    read_ledger(paths, rc, notes)
    view.notes += [] if view.bare else notes
    view.curves = read_curves(paths, rc, view.notes)
    view.metrics_from = rc.metrics_from
    view.nodes = read_nodes(paths, rc, now, view.notes)
    if view.bare:  # what a suite run would have is said once, as absent, by the panels
        view.notes = [n for n in view.notes if not n.endswith(": missing")]
    view.open_alerts, view.resolved_alerts = read_alerts(paths, rc)
    view.monitor = monitor_status(run_dir, now)
    _derive(paths, rc, view, cache, use_slurm)
    return view


def _identify(view: RunView, cfg: dict[str, Any]) -> None:
    """The run's name, recipe, model and target steps from its run.yaml."""
    recipe = cfg.get("recipe") if isinstance(cfg.get("recipe"), dict) else {}
    run = cfg.get("run") if isinstance(cfg.get("run"), dict) else {}
    view.name = str(run.get("name") or view.name)
    view.recipe = str_or_none(recipe.get("name"))
    view.model = str_or_none(recipe.get("model_path"))
    target = recipe.get("total_training_steps")
    view.target_steps = target if isinstance(target, int) and target > 0 else None


# -- deriving the run's state from the ledger (+ Slurm) --------------------------------------------------------


def _derive(paths: RunPaths, rc: RunCache, view: RunView, cache: ViewCache, use_slurm: bool) -> None:
    events = rc.events
    now = view.now
    steps = [
        (int(e["step"]), _etime(e)) for e in events if e.get("event") == "step" and _is_int(e.get("step"))
    ]
    view.chunks = _chunks(events, now)
    # the step: ledger first (the supervisor's view), TensorBoard when a ledger has no step events
    tb_steps = [c.latest_step for c in view.curves if c.latest_step is not None]
    if steps:
        view.step = steps[-1][0]
    elif tb_steps:
        view.step = max(tb_steps)
    saved = [e for e in events if e.get("event") == "saved" and _is_int(e.get("step"))]
    if saved:
        view.ckpt_step, view.ckpt_time = int(saved[-1]["step"]), _etime(saved[-1])
    else:
        view.ckpt_step, view.ckpt_time = read_tracker(paths)
    if view.step is None and view.ckpt_step is not None:
        view.step = view.ckpt_step
    view.step_s = _recent_step_s(events) or _tb_step_s(view)
    done = any(e.get("event") in ("finished", "failed") for e in events)
    view.goodput = _goodput(view.chunks, done, now)
    if view.step is not None and view.target_steps and view.step_s:
        remaining = max(0, view.target_steps - view.step)
        eff = min(1.0, max(0.05, view.goodput)) if view.goodput else 1.0
        view.eta_s = remaining * view.step_s / eff
    started = [e for e in events if e.get("event") == "started"]
    if started and _is_int(started[-1].get("chunk")):
        view.chunk = int(started[-1]["chunk"])
    job_ids = [str(e["job_id"]) for e in events if e.get("job_id")]
    js, answered = None, True
    if job_ids and use_slurm:
        js, answered = _slurm_state(rc, cache, job_ids[-1], now)
    if job_ids:
        view.job = _job_view(job_ids[-1], js, started[-1] if started else None, view.chunks, now)
        if not answered:
            view.job.state = "asking"
        elif use_slurm and rc.slurm_problem is not None:
            view.job.state, view.job.reason = "unreachable", rc.slurm_problem
    view.status, view.status_reason = _status(events, view.job, view.chunks)
    if view.bare:
        view.status = "verl folder" if view.step is not None else "no data"
    if view.status in ("finished", "failed"):
        view.eta_s = None if view.status == "failed" else 0.0


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _etime(e: dict[str, Any]) -> float | None:
    t = e.get("time")
    return parse_time(t) if isinstance(t, str) else num(t)


def _chunks(events: list[dict[str, Any]], now: float) -> list[ChunkView]:
    # One derivation for the dashboard, `justrl-hpc report` and the benchmarks: justrl_hpc.core.goodput.
    return [
        ChunkView(
            chunk=c.chunk,
            job_id=c.job_id,
            start=c.start,
            end=c.end,
            hosts=c.hosts,
            start_step=c.start_step,
            last_step=c.last_step,
            saved_step=c.saved_step,
            ended=c.reason,
            step_s=c.step_s,
            kept_steps=c.kept_steps,
            lost_s=c.lost_s,
        )
        for c in goodput.chunk_reports(events)
    ]


def _recent_step_s(events: list[dict[str, Any]]) -> float | None:
    points: list[tuple[int, float]] = []
    for e in reversed(events):
        if e.get("event") == "step" and _is_int(e.get("step")):
            t = _etime(e)
            if t is not None:
                points.append((e["step"], t))
                if len(points) > RECENT_STEPS:
                    break
    return goodput.median_step_s(list(reversed(points)))


def _tb_step_s(view: RunView) -> float | None:
    c = view.curve("step_time")
    vals = [v for v in (c.values[-RECENT_STEPS:] if c else []) if math.isfinite(v) and v > 0]
    return statistics.median(vals) if vals else None


def _goodput(chunks: list[ChunkView], done: bool, now: float) -> float | None:
    """Share of the wall time since the first chunk started that went into steps the run kept (the running
    chunk's steps count as kept; queue waits between chunks count as lost)."""
    return goodput.wall_goodput(chunks, done, now)


def _slurm_state(rc: RunCache, cache: ViewCache, job_id: str, now: float) -> tuple[Any, bool]:
    """The last answer about `job_id` (None: Slurm does not know it or did not answer) and whether one has
    come yet; asks again every slurm_every_s."""
    if rc.slurm_job != job_id:
        rc.slurm_job, rc.slurm_state, rc.slurm_answered, rc.slurm_at = job_id, None, False, float("-inf")
    if now - rc.slurm_at >= cache.slurm_every_s and not rc.slurm_busy:
        rc.slurm_at, rc.slurm_busy = now, True
        if cache.slurm_in_background:
            threading.Thread(target=_ask_slurm, args=(rc, cache, job_id), name="slurm", daemon=True).start()
        else:
            _ask_slurm(rc, cache, job_id)
    return rc.slurm_state, rc.slurm_answered


def _ask_slurm(rc: RunCache, cache: ViewCache, job_id: str) -> None:
    # A ping first: with the controller down a job query waits out Slurm's retries (~18 s) and then reads
    # as "no such job", which it cannot know.
    state = None
    try:
        rc.slurm_problem = slurm.controller_problem(timeout=2.0)
        if rc.slurm_problem is None:
            state = slurm.job_state(job_id)
    finally:
        rc.slurm_busy = False
    if rc.slurm_job == job_id:
        rc.slurm_state, rc.slurm_answered = state, True
        if cache.slurm_in_background and cache.on_update is not None:
            cache.on_update()


def _job_view(
    job_id: str, js: Any, started: dict[str, Any] | None, chunks: list[ChunkView], now: float
) -> JobView:
    if js is not None:
        view = JobView(job_id=job_id, state=js.state, reason=js.reason, nodes=js.nodes, end_time=js.end_time)
        if js.state == "RUNNING" and js.end_time is not None:
            view.time_left_s = max(0.0, js.end_time - now)
        return view
    # No answer from Slurm (another machine, Slurm down): what the ledger says, marked as such.
    view = JobView(job_id=job_id, state="unknown", from_slurm=False)
    if started is not None and str(started.get("job_id")) == job_id and chunks and chunks[-1].end is None:
        view.nodes = str(started.get("hosts") or "")
        end = num(started.get("end_time"))
        if end is not None:
            view.end_time, view.time_left_s = end, max(0.0, end - now)
    return view


def _status(events: list[dict[str, Any]], job: JobView | None, chunks: list[ChunkView]) -> tuple[str, str]:
    if not events:
        return "no data", ""
    last = next((e for e in reversed(events) if e.get("event") not in NOTES), events[-1])
    kind = str(last.get("event"))
    if kind == "finished":
        return "finished", ""
    if kind == "failed":
        return "failed", str(last.get("reason") or "")
    if job is not None and job.from_slurm:
        if job.state == "PENDING":
            return "pending", job.reason
        if job.state in ("RUNNING", "CONFIGURING", "COMPLETING"):
            return "running", ""
        if job.state in ("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"):
            return "requeued", job.reason
        if job.state in (
            "CANCELLED",
            "FAILED",
            "TIMEOUT",
            "NODE_FAIL",
            "OUT_OF_MEMORY",
            "BOOT_FAIL",
            "DEADLINE",
        ):
            return "stopped", f"job {job.job_id} {job.state}; resubmit with --resume"
        if job.state == "COMPLETED":
            return "stopped", f"job {job.job_id} completed without finishing the run; resubmit with --resume"
    if kind == "submitted":
        return "submitted", ""
    if kind == "requeued":
        return "requeued", str(last.get("reason") or "")
    if chunks and chunks[-1].end is None:
        return "running", ""  # per the ledger; the job line says Slurm did not answer
    return kind, ""
