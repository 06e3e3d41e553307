"""Each file of a run folder, read into a part of the dashboard's view: run.yaml (the config), ledger.jsonl
(its events), tensorboard/ (the training curves), telemetry/<host>.jsonl (the nodes and their GPUs),
alerts.jsonl (open and resolved alerts), monitor.heartbeat (the alerting daemon's liveness) and verl's
checkpoint tracker.

Every source may be missing, partial or being written (a run folder is read while a chunk writes it): a
missing source is "no data" and a note, never an exception. `RunCache` holds each source's cursor, so a
refresh reads only the bytes added since the last one. No rich here; `snapshot.load_view` puts the parts
together into a `RunView`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from justrl_hpc.core.ledger import Ledger
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.monitor.rules.gpu_settings import GpuRuleSettings
from justrl_hpc.monitor.rules.training import ENTROPY_PUBLISHED, LENGTH_BAND_FRACTIONS, TRUNCATION_WARN
from justrl_hpc.monitor.sources.telemetry import HEAD_BYTES, Cursor, TelemetryTail

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

# JustRL's bands (monitor-facts.md (b)). Entropy's is the paper's figure, shown as labelled context only: the
# figure's entropy was miscomputed (thunlp/JustRL#5) and a healthy reproduction sits elsewhere (thunlp/JustRL#3).
# Under the legacy trainer this recipe runs (use_v1=False) verl pads responses to the cap, so clip_ratio is the
# truncated share.
ENTROPY_BAND = ENTROPY_PUBLISHED
CLIP_RATIO_MAX = TRUNCATION_WARN

HEARTBEAT_STALE_INTERVALS = 3.0
HEARTBEAT_STALE_MIN_S = 90.0
TELEMETRY_START_BYTES = 256 << 10  # a new dashboard reads only this much of each node's file
RESOLVED_SHOWN = 5


# -- the parts of a view ------------------------------------------------------------------------------------


@dataclass
class Band:
    low: float | None = None
    high: float | None = None
    context: str = ""  # a label ("paper") for a band shown beside the curve that never judges its value

    def judge(self, value: float | None) -> str:
        if value is None:
            return "none"
        if not math.isfinite(value):
            return "nan"
        if self.context:
            return "ok"
        if self.low is not None and value < self.low:
            return "low"
        if self.high is not None and value > self.high:
            return "high"
        return "ok"

    def text(self) -> str:
        if self.low is not None and self.low == self.high:
            text = _short(self.low)  # one published figure (the paper's endpoint)
        elif self.low is not None and self.high is not None:
            text = f"{_short(self.low)}–{_short(self.high)}"
        elif self.high is not None:
            text = f"≤ {_short(self.high)}"
        elif self.low is not None:
            text = f"≥ {_short(self.low)}"
        else:
            return ""
        return f"{self.context} {text}" if self.context else text


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
class MonitorStatus:
    """The alerting daemon's dead-man: a dashboard must not look healthy while nobody is watching."""

    heartbeat: float | None
    age_s: float | None
    blind: bool
    text: str


# -- what is kept per run folder between refreshes ------------------------------------------------------------


@dataclass
class RunCache:
    """A cursor and the parsed state per source of one run folder, and the last answer from Slurm."""

    ledger_offset: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    yaml_stamp: tuple[int, int] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tb: Any = None  # sources.tensorboard.TBTail or sources.console_log.ConsoleLogTail, once there are metrics
    console_log: Path | None = None  # named by the user (a file given as RUN)
    metrics_from: str | None = None  # where the curves come from (MetricsSource.short)
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
    slurm_problem: str | None = None  # the controller did not answer `scontrol ping`: what it said instead


# -- the readers: each appends what it could not read to `notes` --------------------------------------------------


def read_config(paths: RunPaths, rc: RunCache, notes: list[str]) -> dict[str, Any]:
    """run.yaml, parsed again only when it changed ({} while missing or unreadable)."""
    path = paths.run_yaml
    try:
        st = path.stat()
    except FileNotFoundError:
        notes.append(f"{path.name}: missing")
        rc.config = {}
        return rc.config
    stamp = (st.st_mtime_ns, st.st_size)
    if stamp != rc.yaml_stamp:
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            notes.append(f"{path.name}: unreadable ({type(exc).__name__})")
            data = None
        rc.config = data if isinstance(data, dict) else {}
        rc.yaml_stamp = stamp
    return rc.config


def read_ledger(paths: RunPaths, rc: RunCache, notes: list[str]) -> list[dict[str, Any]]:
    """Every event of the ledger so far (the new lines appended to `rc.events`)."""
    ledger = Ledger(paths.root)
    if not ledger.path.exists():
        notes.append(f"{ledger.path.name}: missing")
        return rc.events
    events, rc.ledger_offset = ledger.tail(rc.ledger_offset)
    rc.events.extend(e for e in events if isinstance(e, dict))
    return rc.events


def read_curves(paths: RunPaths, rc: RunCache, notes: list[str]) -> list[Curve]:
    """One Curve per CURVES entry from wherever sources.locate finds verl's metrics (TensorBoard events or a
    console log), with the healthy band for rc.config."""
    from justrl_hpc.monitor.sources.locate import locate

    series: dict[str, list[tuple[int, float, float]]] = {}
    if rc.tb is None:
        found = locate(paths.root, rc.console_log)
        if found is None:
            notes.append("metrics: none yet (no tensorboard/, event files or verl console log)")
        elif found.kind == "console":
            from justrl_hpc.monitor.sources.console_log import ConsoleLogTail

            rc.tb, rc.metrics_from = ConsoleLogTail(found.path, tags=TB_TAGS), found.short(paths.root)
        else:
            try:
                from justrl_hpc.monitor.sources.tensorboard import TBTail
            except ImportError as exc:
                notes.append(f"{found.path.name}: no reader ({exc})")
            else:
                rc.tb, rc.metrics_from = TBTail(found.path, tags=list(TB_TAGS), recursive=False), found.short(paths.root)
    if rc.tb is not None:
        try:
            rc.tb.poll()
            series = {tag: list(rc.tb.series(tag)) for tag in TB_TAGS}
        except (OSError, ValueError) as exc:
            notes.append(f"metrics: {type(exc).__name__}: {exc}")
    bands = bands_for(rc.config)
    curves = []
    for spec in CURVES:
        tag = next((t for t in spec.tags if series.get(t)), None)
        points = series.get(tag, []) if tag else []
        curves.append(
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
    evaluated = read_evaluations(paths)
    return curves + ([evaluated] if evaluated is not None else [])


def read_evaluations(paths: RunPaths) -> Curve | None:
    """The benchmark average of each evaluation along the run (eval/step_N/summary.json, core/eval_along.py),
    beside the paper's endpoint for the same nine benchmarks as context; None when nothing was evaluated."""
    points, published = [], None
    for summary in (paths.root / "eval").glob("step_*/summary.json"):
        try:
            data = json.loads(summary.read_text())
            points.append((int(data["step"]), float(data["average"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not an evaluation of this run's steps
        if isinstance(data.get("published"), dict) and isinstance(data["published"].get("average"), int | float):
            published = float(data["published"]["average"])
    if not points:
        return None
    points.sort()
    band = Band(published, published, context="paper") if published is not None else None
    return Curve(key="eval", label="eval average", tag="eval/average", fmt=".1f",
                 steps=[p[0] for p in points], values=[p[1] for p in points], band=band)


def bands_for(config: dict[str, Any]) -> dict[str, Band]:
    """The healthy band of each curve for this run's recipe. JustRL's absolute entropy band means nothing for
    the CPU rehearsal's toy task (its answers are one token), so a CPU recipe (the rehearsal) gets no entropy band."""
    recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
    hp = recipe.get("hyperparameters") if isinstance(recipe.get("hyperparameters"), dict) else {}
    bands: dict[str, Band] = {"clip": Band(high=CLIP_RATIO_MAX)}
    # The paper's entropy band, as context, for JustRL's recipes only: not for the rehearsal's toy task, nor for
    # a folder of unknown task (no run.yaml: verl run by hand).
    if recipe and recipe.get("device") != "cpu":
        bands["entropy"] = Band(*ENTROPY_BAND, context="paper")
    max_len = hp.get("data.max_response_length")
    if isinstance(max_len, int) and max_len > 0:
        lo, hi = LENGTH_BAND_FRACTIONS
        bands["length"] = Band(round(lo * max_len), round(hi * max_len))
    return bands


def read_nodes(paths: RunPaths, rc: RunCache, now: float, notes: list[str]) -> list[NodeView]:
    """Each node's newest telemetry sample, by host."""
    directory = paths.telemetry
    if not directory.is_dir():
        notes.append(f"{directory.name}/: missing")
        return []
    if rc.telemetry is None:
        rc.telemetry = TelemetryTail(directory, _cursors_near_end(directory, TELEMETRY_START_BYTES))
    batch = rc.telemetry.poll(now=now)  # the tail corrects node clock skew (see sources/telemetry.py)
    for host, samples in batch.samples.items():
        newest = max(samples, key=lambda s: s["time"])
        if host not in rc.latest_sample or newest["time"] >= rc.latest_sample[host]["time"]:
            rc.latest_sample[host] = newest
    settings = GpuRuleSettings()
    return [_node_view(rc.latest_sample[host], now, settings) for host in sorted(rc.latest_sample)]


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
        cursors[path.stem] = Cursor(inode=st.st_ino, offset=st.st_size - keep + nl + 1, head=head)
    return cursors


def _node_view(sample: dict[str, Any], now: float, st: GpuRuleSettings) -> NodeView:
    interval = num(sample.get("interval")) or 5.0
    last = float(sample["time"])
    age = now - last
    arrived = num(sample.get("arrived"))
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
        job_id=str_or_none(sample.get("job_id")),
        backend=str(sample.get("backend") or ""),
        state=state,
        nvml_error=err_name,
        cpu_percent=num(hs.get("cpu_percent")),
        ram_used_bytes=num(hs.get("ram_used_bytes")),
        ram_total_bytes=num(hs.get("ram_total_bytes")),
    )
    for g in sample.get("gpus") or ():
        if isinstance(g, dict) and isinstance(g.get("index"), int):
            node.gpus.append(_gpu_cell(g, st))
    node.gpus.sort(key=lambda c: c.index)
    return node


def _gpu_cell(g: dict[str, Any], st: GpuRuleSettings) -> GpuCell:
    cell = GpuCell(
        index=int(g["index"]),
        util=num(g.get("DCGM_FI_DEV_GPU_UTIL")),
        mem_used_mib=num(g.get("DCGM_FI_DEV_FB_USED")),
        mem_total_mib=num(g.get("DCGM_FI_DEV_FB_TOTAL")),
        temp=num(g.get("DCGM_FI_DEV_GPU_TEMP")),
        power=num(g.get("DCGM_FI_DEV_POWER_USAGE")),
        power_limit=num(g.get("DCGM_FI_DEV_ENFORCED_POWER_LIMIT")),
        error=str_or_none(g.get("nvml_error")),
    )
    slowdown = num(g.get("DCGM_FI_DEV_SLOWDOWN_TEMP"))
    gpu_max = num(g.get("DCGM_FI_DEV_GPU_MAX_OP_TEMP"))
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


def read_alerts(paths: RunPaths, rc: RunCache) -> tuple[list[AlertView], list[AlertView]]:
    """The open alerts (critical first, newest first) and the last resolved ones (newest first)."""
    try:
        with open(paths.alerts, "rb") as fh:
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
    open_alerts = sorted(rc.alerts.values(), key=lambda a: (sev_rank.get(a.severity, 3), -a.since))
    return open_alerts, list(reversed(rc.resolved[-RESOLVED_SHOWN:]))


def _apply_alert(rc: RunCache, a: dict[str, Any]) -> None:
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
        node=str_or_none(a.get("node")),
        gpu=a.get("gpu") if isinstance(a.get("gpu"), int) else None,
    )


def monitor_status(run_dir: str | os.PathLike[str], now: float) -> MonitorStatus:
    """The alerting daemon's heartbeat in the run folder `run_dir`: blind when missing or stale."""
    path = RunPaths(Path(run_dir)).heartbeat
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return MonitorStatus(None, None, True, f"monitor blind: no daemon heartbeat ({path.name} missing)")
    except (OSError, ValueError):
        return MonitorStatus(None, None, True, f"monitor blind: {path.name} unreadable")
    t = data.get("time") if isinstance(data, dict) else None
    beat = num(t) if not isinstance(t, str) else parse_time(t)
    if beat is None:
        return MonitorStatus(None, None, True, f"monitor blind: {path.name} has no time")
    interval = num(data.get("interval")) or 30.0
    age = max(0.0, now - beat)
    if isinstance(data.get("ended"), str):
        # The daemon stopped because the run ended (--until-ended): nothing is left unwatched.
        return MonitorStatus(beat, age, False, f"monitor done: stopped with the run ({data['ended']}) at {clock(beat)}")
    if age > max(HEARTBEAT_STALE_INTERVALS * interval, HEARTBEAT_STALE_MIN_S):
        return MonitorStatus(beat, age, True, f"monitor blind since {clock(beat)} ({duration(age)} ago)")
    return MonitorStatus(beat, age, False, f"monitor ok ({duration(age)} ago)")


def read_tracker(paths: RunPaths) -> tuple[int | None, float | None]:
    """verl's tracker file, for a run folder whose ledger has no `saved` event (a run started by hand)."""
    try:
        text = paths.tracker.read_text().strip()
        return int(text), paths.tracker.stat().st_mtime
    except (OSError, ValueError):
        return None, None


# -- small value and text helpers, shared with snapshot and the panels ---------------------------------------------


def num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def str_or_none(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def parse_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


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
