"""What the dashboard shows about one run, as plain data: `load_view(run_dir, cache) -> RunView`.

No rich here, so scripts and tests use it without a screen. Every source may be missing, partial or
being written (a run folder is read while a chunk writes it): a missing source is "no data" in the view
and a note in `RunView.notes`, never an exception. Keep one `ViewCache` across refreshes: it holds a
cursor per file (ledger, alerts, telemetry, TensorBoard), so a refresh reads only the bytes added since
the last one, which keeps a dashboard left open for the 15 days of a run cheap.

Sources: run.yaml, ledger.jsonl, tensorboard/ (through monitor.tbreader.TBTail), telemetry/<host>.jsonl
(through monitor.telemetry.TelemetryTail), alerts.jsonl, monitor.heartbeat, checkpoints/ (only when the
ledger has no `saved` event) and Slurm (`slurm.job_state` of the newest job in the ledger).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from justrl_hpc.ledger import Ledger
from justrl_hpc.monitor.gpu_rules import GpuRuleSettings
from justrl_hpc.monitor.telemetry import HEAD_BYTES, Cursor, TelemetryTail
from justrl_hpc.monitor.train_rules import ENTROPY_HEALTHY, LENGTH_BAND_FRACTIONS, TRUNCATION_WARN

# -- what the curves panel shows ------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveSpec:
    key: str
    label: str
    tags: tuple[str, ...]  # the first tag present wins (verl renamed some metrics between versions)
    fmt: str  # format spec of the latest value


CURVES: tuple[CurveSpec, ...] = (
    CurveSpec("reward", "mean reward", ("critic/score/mean",), "+.3f"),
    CurveSpec("entropy", "entropy", ("actor/entropy", "actor/entropy_loss"), ".3f"),
    CurveSpec("length", "resp. length", ("response_length/mean",), ",.0f"),
    CurveSpec("clip", "clip ratio", ("response_length/clip_ratio",), ".3f"),
    CurveSpec("grad_norm", "grad norm", ("actor/grad_norm",), ".3f"),
    CurveSpec("step_time", "step time s", ("timing_s/step",), ",.1f"),
)
TB_TAGS: tuple[str, ...] = tuple(t for c in CURVES for t in c.tags)

# JustRL's healthy bands, shared with the alerting rules (monitor-facts.md (b)). Under the legacy trainer
# this recipe runs (use_v1=False) verl pads responses to the cap, so clip_ratio is the truncated share.
ENTROPY_BAND = ENTROPY_HEALTHY
CLIP_RATIO_MAX = TRUNCATION_WARN

RECENT_STEPS = 20  # step times for the ETA: the median of this many recent steps
SLURM_EVERY_S = 10.0  # ask scontrol at most this often per run, however fast the screen refreshes
HEARTBEAT_STALE_INTERVALS = 3.0
HEARTBEAT_STALE_MIN_S = 90.0
TELEMETRY_START_BYTES = 256 << 10  # a new dashboard reads only this much of each node's file
RESOLVED_SHOWN = 5


@dataclass
class Band:
    low: float | None = None
    high: float | None = None

    def judge(self, value: float | None) -> str:
        if value is None:
            return "none"
        if not math.isfinite(value):
            return "nan"
        if self.low is not None and value < self.low:
            return "low"
        if self.high is not None and value > self.high:
            return "high"
        return "ok"

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{_short(self.low)}–{_short(self.high)}"
        if self.high is not None:
            return f"≤ {_short(self.high)}"
        if self.low is not None:
            return f"≥ {_short(self.low)}"
        return ""


def _short(x: float) -> str:
    """1536 → 1.5k, 11981 → 12k, 0.05 → 0.05."""
    if abs(x) >= 10000:
        return f"{x / 1000:.0f}k"
    if abs(x) >= 1000:
        return f"{x / 1000:.1f}".rstrip("0").rstrip(".") + "k"
    return f"{x:g}"


@dataclass
class Curve:
    key: str
    label: str
    tag: str | None  # the tag read, None while no candidate has data
    fmt: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    band: Band | None = None

    @property
    def latest(self) -> float | None:
        return self.values[-1] if self.values else None

    @property
    def latest_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @property
    def state(self) -> str:
        """ok, low, high, nan (latest value not finite) or none (no data)."""
        if self.latest is None:
            return "none"
        if self.band is None:
            return "ok" if math.isfinite(self.latest) else "nan"
        return self.band.judge(self.latest)


@dataclass
class GpuCell:
    index: int
    util: float | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    temp: float | None = None
    power: float | None = None
    power_limit: float | None = None
    error: str | None = None  # this GPU's NVML error (GPU_IS_LOST)
    state: str = "ok"  # ok, idle, busy-low-power, hot, warm, mem-full, error, na

    @property
    def mem_fraction(self) -> float | None:
        if self.mem_used_mib is None or not self.mem_total_mib:
            return None
        return self.mem_used_mib / self.mem_total_mib


@dataclass
class NodeView:
    host: str
    last_time: float | None
    age_s: float | None
    interval: float
    job_id: str | None
    backend: str
    state: str  # live, silent, stopped (the agent's clean-stop line), error (NVML failing)
    nvml_error: str | None = None
    gpus: list[GpuCell] = field(default_factory=list)
    cpu_percent: float | None = None
    ram_used_bytes: float | None = None
    ram_total_bytes: float | None = None


@dataclass
class AlertView:
    key: str
    rule: str
    severity: str
    message: str
    since: float  # when this episode first fired
    last_time: float  # newest line about it (a re-fire or the resolution)
    step: int | None = None
    node: str | None = None
    gpu: int | None = None
    state: str = "firing"


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
class MonitorStatus:
    """The alerting daemon's dead-man: a dashboard must not look healthy while nobody is watching."""

    heartbeat: float | None
    age_s: float | None
    blind: bool
    text: str


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


# -- the cache: one per dashboard, one _RunCache per run folder -----------------------------------------------


@dataclass
class _RunCache:
    ledger_offset: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    yaml_stamp: tuple[int, int] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tb: Any = None  # monitor.tbreader.TBTail, made once the tensorboard folder exists
    telemetry: TelemetryTail | None = None
    latest_sample: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts_offset: int = 0
    alerts: dict[str, AlertView] = field(default_factory=dict)
    resolved: list[AlertView] = field(default_factory=list)
    slurm_at: float = float("-inf")
    slurm_job: str | None = None
    slurm_state: Any = None
    slurm_answered: bool = False  # scontrol answered (maybe "no such job") for slurm_job
    slurm_busy: bool = False


@dataclass
class ViewCache:
    """Cursors and parsed state per run folder; pass the same one to every load_view call.

    `slurm_in_background`: ask scontrol on a thread and show the last answer meanwhile (the live screen,
    which a slow or hung slurmctld must not freeze); `on_update` is called when such an answer arrives."""

    slurm_every_s: float = SLURM_EVERY_S
    slurm_in_background: bool = False
    on_update: Callable[[], None] | None = None
    runs: dict[str, _RunCache] = field(default_factory=dict)

    def for_run(self, run_dir: Path) -> _RunCache:
        return self.runs.setdefault(str(Path(run_dir).resolve()), _RunCache())


# -- loading ----------------------------------------------------------------------------------------------------


def load_view(
    run_dir: str | os.PathLike[str],
    cache: ViewCache | None = None,
    *,
    now: float | None = None,
    use_slurm: bool = True,
) -> RunView:
    """Read what is new in the run folder and return the whole view of the run at `now`."""
    run_dir = Path(run_dir)
    cache = cache if cache is not None else ViewCache()
    rc = cache.for_run(run_dir)
    now = time.time() if now is None else now
    view = RunView(name=run_dir.name, path=str(run_dir), now=now)
    _read_config(run_dir, rc, view)
    _read_ledger(run_dir, rc, view)
    _read_tensorboard(run_dir, rc, view)
    _read_telemetry(run_dir, rc, view)
    _read_alerts(run_dir, rc, view)
    view.monitor = _monitor_status(run_dir, now)
    _derive(run_dir, rc, view, cache, use_slurm)
    return view


def _read_config(run_dir: Path, rc: _RunCache, view: RunView) -> None:
    path = run_dir / "run.yaml"
    try:
        st = path.stat()
    except FileNotFoundError:
        view.notes.append("run.yaml: missing")
        rc.config = {}
        return
    stamp = (st.st_mtime_ns, st.st_size)
    if stamp != rc.yaml_stamp:
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            view.notes.append(f"run.yaml: unreadable ({type(exc).__name__})")
            data = None
        rc.config = data if isinstance(data, dict) else {}
        rc.yaml_stamp = stamp
    cfg = rc.config
    recipe = cfg.get("recipe") if isinstance(cfg.get("recipe"), dict) else {}
    run = cfg.get("run") if isinstance(cfg.get("run"), dict) else {}
    view.name = str(run.get("name") or view.name)
    view.recipe = _str_or_none(recipe.get("name"))
    view.model = _str_or_none(recipe.get("model_path"))
    target = recipe.get("total_training_steps")
    view.target_steps = target if isinstance(target, int) and target > 0 else None


def _read_ledger(run_dir: Path, rc: _RunCache, view: RunView) -> None:
    ledger = Ledger(run_dir)
    if not ledger.path.exists():
        view.notes.append("ledger.jsonl: missing")
        return
    events, rc.ledger_offset = ledger.tail(rc.ledger_offset)
    rc.events.extend(e for e in events if isinstance(e, dict))


def _read_tensorboard(run_dir: Path, rc: _RunCache, view: RunView) -> None:
    logdir = run_dir / "tensorboard"
    series: dict[str, list[tuple[int, float, float]]] = {}
    if rc.tb is None and logdir.is_dir():
        try:
            from justrl_hpc.monitor.tbreader import TBTail
        except ImportError as exc:
            view.notes.append(f"tensorboard: no reader ({exc})")
        else:
            rc.tb = TBTail(logdir, tags=list(TB_TAGS), recursive=False)
    if rc.tb is None:
        if not logdir.is_dir():
            view.notes.append("tensorboard/: missing")
    else:
        try:
            rc.tb.poll()
            series = {tag: list(rc.tb.series(tag)) for tag in TB_TAGS}
        except (OSError, ValueError) as exc:
            view.notes.append(f"tensorboard: {type(exc).__name__}: {exc}")
    bands = bands_for(rc.config)
    for spec in CURVES:
        tag = next((t for t in spec.tags if series.get(t)), None)
        points = series.get(tag, []) if tag else []
        view.curves.append(
            Curve(
                key=spec.key,
                label=spec.label,
                tag=tag,
                fmt=spec.fmt,
                steps=[int(p[0]) for p in points],
                values=[float(p[2]) for p in points],
                band=bands.get(spec.key),
            )
        )


def bands_for(config: dict[str, Any]) -> dict[str, Band]:
    """The healthy band of each curve for this run's recipe. JustRL's absolute entropy band means nothing for
    the CPU rehearsal's toy task (its answers are one token), so a CPU recipe (the rehearsal) gets no entropy band."""
    recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
    hp = recipe.get("hyperparameters") if isinstance(recipe.get("hyperparameters"), dict) else {}
    bands: dict[str, Band] = {"clip": Band(high=CLIP_RATIO_MAX)}
    if recipe.get("device") != "cpu":
        bands["entropy"] = Band(*ENTROPY_BAND)
    max_len = hp.get("data.max_response_length")
    if isinstance(max_len, int) and max_len > 0:
        lo, hi = LENGTH_BAND_FRACTIONS
        bands["length"] = Band(round(lo * max_len), round(hi * max_len))
    return bands


def _read_telemetry(run_dir: Path, rc: _RunCache, view: RunView) -> None:
    directory = run_dir / "telemetry"
    if not directory.is_dir():
        view.notes.append("telemetry/: missing")
        return
    if rc.telemetry is None:
        rc.telemetry = TelemetryTail(directory, _cursors_near_end(directory, TELEMETRY_START_BYTES))
    batch = rc.telemetry.poll(now=view.now)  # the tail corrects node clock skew (see telemetry.py)
    for host, samples in batch.samples.items():
        newest = max(samples, key=lambda s: s["time"])
        if host not in rc.latest_sample or newest["time"] >= rc.latest_sample[host]["time"]:
            rc.latest_sample[host] = newest
    settings = GpuRuleSettings()
    for host in sorted(rc.latest_sample):
        view.nodes.append(_node_view(rc.latest_sample[host], view.now, settings))


def _cursors_near_end(directory: Path, keep: int) -> dict[str, Cursor]:
    """Start each node's tail `keep` bytes before its end, at a line boundary: the dashboard needs the
    newest samples, not the hours of them an agent's file holds."""
    cursors: dict[str, Cursor] = {}
    for path in directory.glob("*.jsonl"):
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                if st.st_size <= keep:
                    continue
                head = fh.read(HEAD_BYTES).decode("latin-1")
                fh.seek(st.st_size - keep)
                chunk = fh.read(keep)
        except OSError:
            continue
        nl = chunk.find(b"\n")
        if nl < 0:
            continue
        cursors[path.name[: -len(".jsonl")]] = Cursor(
            inode=st.st_ino, offset=st.st_size - keep + nl + 1, head=head
        )
    return cursors


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _node_view(sample: dict[str, Any], now: float, st: GpuRuleSettings) -> NodeView:
    interval = _num(sample.get("interval")) or 5.0
    last = float(sample["time"])
    age = now - last
    arrived = _num(sample.get("arrived"))
    if arrived is not None:
        age = min(age, now - arrived)  # as gpu_rules.rule_agent_silent: a clock behind is not silence
    age = max(0.0, age)
    err = sample.get("nvml_error")
    err_name = None
    if isinstance(err, dict):
        err_name = str(err.get("name") or err.get("message") or "NVML error")
    elif err:
        err_name = str(err)
    if sample.get("final"):
        state = "stopped"
    elif age > max(st.silent_intervals * interval, st.silent_min_s):
        state = "silent"
    elif err_name and not sample.get("gpus"):
        state = "error"
    else:
        state = "live"
    hs = sample.get("host_stats") if isinstance(sample.get("host_stats"), dict) else {}
    node = NodeView(
        host=str(sample.get("host")),
        last_time=last,
        age_s=age,
        interval=interval,
        job_id=_str_or_none(sample.get("job_id")),
        backend=str(sample.get("backend") or ""),
        state=state,
        nvml_error=err_name,
        cpu_percent=_num(hs.get("cpu_percent")),
        ram_used_bytes=_num(hs.get("ram_used_bytes")),
        ram_total_bytes=_num(hs.get("ram_total_bytes")),
    )
    for g in sample.get("gpus") or ():
        if isinstance(g, dict) and isinstance(g.get("index"), int):
            node.gpus.append(_gpu_cell(g, st))
    node.gpus.sort(key=lambda c: c.index)
    return node


def _gpu_cell(g: dict[str, Any], st: GpuRuleSettings) -> GpuCell:
    cell = GpuCell(
        index=int(g["index"]),
        util=_num(g.get("DCGM_FI_DEV_GPU_UTIL")),
        mem_used_mib=_num(g.get("DCGM_FI_DEV_FB_USED")),
        mem_total_mib=_num(g.get("DCGM_FI_DEV_FB_TOTAL")),
        temp=_num(g.get("DCGM_FI_DEV_GPU_TEMP")),
        power=_num(g.get("DCGM_FI_DEV_POWER_USAGE")),
        power_limit=_num(g.get("DCGM_FI_DEV_ENFORCED_POWER_LIMIT")),
        error=_str_or_none(g.get("nvml_error")),
    )
    slowdown = _num(g.get("DCGM_FI_DEV_SLOWDOWN_TEMP"))
    gpu_max = _num(g.get("DCGM_FI_DEV_GPU_MAX_OP_TEMP"))
    warm_lines = [
        x for x in (gpu_max, None if slowdown is None else slowdown - st.temp_slowdown_margin_c) if x
    ]
    mem = cell.mem_fraction
    if cell.error:
        cell.state = "error"
    elif cell.util is None and cell.temp is None:
        cell.state = "na"
    elif cell.temp is not None and slowdown is not None and cell.temp >= slowdown:
        cell.state = "hot"
    elif cell.temp is not None and warm_lines and cell.temp >= min(warm_lines):
        cell.state = "warm"
    elif (
        cell.util is not None
        and cell.util >= st.nccl_hang_util
        and cell.power is not None
        and cell.power_limit
        and cell.power < st.nccl_hang_power_fraction * cell.power_limit
    ):
        cell.state = "busy-low-power"  # the NCCL-hang signature, one sample of it
    elif mem is not None and mem >= st.gpu_mem_info_fraction:
        cell.state = "mem-full"
    elif cell.util is not None and cell.util < 10:
        cell.state = "idle"
    return cell


def _read_alerts(run_dir: Path, rc: _RunCache, view: RunView) -> None:
    path = run_dir / "alerts.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(rc.alerts_offset)
            data = fh.read()
    except FileNotFoundError:
        data = b""
    end = data.rfind(b"\n")
    if end >= 0:
        rc.alerts_offset += end + 1
        for raw in data[: end + 1].split(b"\n"):
            if raw.strip():
                try:
                    _apply_alert(rc, json.loads(raw))
                except (ValueError, TypeError, KeyError):
                    continue  # a torn or foreign line; the daemon's own log says more
    sev_rank = {"critical": 0, "warn": 1, "info": 2}
    view.open_alerts = sorted(rc.alerts.values(), key=lambda a: (sev_rank.get(a.severity, 3), -a.since))
    view.resolved_alerts = list(reversed(rc.resolved[-RESOLVED_SHOWN:]))


def _apply_alert(rc: _RunCache, a: dict[str, Any]) -> None:
    key = str(a.get("key") or f"{a['rule']}:{a.get('node')}:{a.get('gpu')}")
    t = float(a.get("time") or 0.0)
    if a.get("state") == "resolved":
        firing = rc.alerts.pop(key, None)
        item = _alert_view(a, key, firing.since if firing else t, t)
        item.state = "resolved"
        rc.resolved.append(item)
        del rc.resolved[:-RESOLVED_SHOWN]
        return
    prev = rc.alerts.get(key)
    rc.alerts[key] = _alert_view(a, key, prev.since if prev else t, t)


def _alert_view(a: dict[str, Any], key: str, since: float, last: float) -> AlertView:
    return AlertView(
        key=key,
        rule=str(a.get("rule", "?")),
        severity=str(a.get("severity", "info")),
        message=str(a.get("message", "")),
        since=since,
        last_time=last,
        step=a.get("step") if isinstance(a.get("step"), int) else None,
        node=_str_or_none(a.get("node")),
        gpu=a.get("gpu") if isinstance(a.get("gpu"), int) else None,
    )


def _monitor_status(run_dir: Path, now: float) -> MonitorStatus:
    path = run_dir / "monitor.heartbeat"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return MonitorStatus(
            None, None, True, "monitor blind: no daemon heartbeat (monitor.heartbeat missing)"
        )
    except (OSError, ValueError):
        return MonitorStatus(None, None, True, "monitor blind: monitor.heartbeat unreadable")
    t = data.get("time") if isinstance(data, dict) else None
    beat = _num(t) if not isinstance(t, str) else _parse_time(t)
    if beat is None:
        return MonitorStatus(None, None, True, "monitor blind: monitor.heartbeat has no time")
    interval = _num(data.get("interval")) or 30.0
    age = max(0.0, now - beat)
    if age > max(HEARTBEAT_STALE_INTERVALS * interval, HEARTBEAT_STALE_MIN_S):
        return MonitorStatus(beat, age, True, f"monitor blind since {clock(beat)} ({duration(age)} ago)")
    return MonitorStatus(beat, age, False, f"monitor ok ({duration(age)} ago)")


# -- deriving the run's state from the ledger (+ Slurm) --------------------------------------------------------


def _derive(run_dir: Path, rc: _RunCache, view: RunView, cache: ViewCache, use_slurm: bool) -> None:
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
        view.ckpt_step, view.ckpt_time = _tracker(run_dir)
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
    view.status, view.status_reason = _status(events, view.job, view.chunks)
    if view.status in ("finished", "failed"):
        view.eta_s = None if view.status == "failed" else 0.0


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _etime(e: dict[str, Any]) -> float | None:
    t = e.get("time")
    return _parse_time(t) if isinstance(t, str) else _num(t)


def _parse_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _tracker(run_dir: Path) -> tuple[int | None, float | None]:
    """verl's tracker file, for a run folder whose ledger has no `saved` event (a run started by hand)."""
    path = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    try:
        text = path.read_text().strip()
        return int(text), path.stat().st_mtime
    except (OSError, ValueError):
        return None, None


def _chunks(events: list[dict[str, Any]], now: float) -> list[ChunkView]:
    # One derivation for the dashboard, `justrl-hpc report` and the benchmarks: justrl_hpc.report.
    from justrl_hpc.report import chunk_reports

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
        for c in chunk_reports(events)
    ]


def _recent_step_s(events: list[dict[str, Any]]) -> float | None:
    from justrl_hpc.report import median_step_s

    points: list[tuple[int, float]] = []
    for e in reversed(events):
        if e.get("event") == "step" and _is_int(e.get("step")):
            t = _etime(e)
            if t is not None:
                points.append((e["step"], t))
                if len(points) > RECENT_STEPS:
                    break
    return median_step_s(list(reversed(points)))


def _tb_step_s(view: RunView) -> float | None:
    c = view.curve("step_time")
    vals = [v for v in (c.values[-RECENT_STEPS:] if c else []) if math.isfinite(v) and v > 0]
    return statistics.median(vals) if vals else None


def _goodput(chunks: list[ChunkView], done: bool, now: float) -> float | None:
    """Share of the wall time since the first chunk started that went into steps the run kept (the running
    chunk's steps count as kept; queue waits between chunks count as lost)."""
    from justrl_hpc.report import wall_goodput

    return wall_goodput(chunks, done, now)


def _slurm_state(rc: _RunCache, cache: ViewCache, job_id: str, now: float) -> tuple[Any, bool]:
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


def _ask_slurm(rc: _RunCache, cache: ViewCache, job_id: str) -> None:
    from justrl_hpc import slurm

    try:
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
        end = _num(started.get("end_time"))
        if end is not None:
            view.end_time, view.time_left_s = end, max(0.0, end - now)
    return view


def _status(events: list[dict[str, Any]], job: JobView | None, chunks: list[ChunkView]) -> tuple[str, str]:
    if not events:
        return "no data", ""
    last = next((e for e in reversed(events) if e.get("event") != "step"), events[-1])
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


# -- small text helpers shared with the renderer ---------------------------------------------------------------


def _str_or_none(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def duration(seconds: float | None) -> str:
    """3d04h, 5h12m, 12m05s, 45s; '-' for unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(max(0.0, seconds)))
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


def clock(t: float | None) -> str:
    """Local wall time of an epoch, as month-day hour:minute."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t).strftime("%m-%d %H:%M")


def find_runs(root: Path) -> list[Path]:
    """Run folders directly under `root` (a folder with run.yaml or ledger.jsonl), by name."""
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and ((p / "run.yaml").is_file() or (p / "ledger.jsonl").is_file())
    )
