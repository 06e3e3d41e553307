"""GPU and host health rules over the node agents' samples (monitor-facts.md section (b): G1–G14, S2, S5).

    evaluate(samples_by_host, now, settings) -> list[Finding]

Pure: the findings that hold *now*, given the recent samples of each host (oldest first, as
telemetry.SampleWindow keeps them; it must cover settings.history_s()). The engine turns them into alerts
(fire once per key, re-fire after its cool-down, resolve when a key stops appearing). Counters are judged
by their increase inside a window (sum of positive steps, so a driver reload that zeroes a volatile counter
is not a negative rate); thresholds of the part (slowdown, GPU_MAX, MEM_MAX temperatures, power limit,
PCIe width) come from the samples, never from here.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from justrl_hpc.monitor.model import Finding, Severity
from justrl_hpc.monitor.nvml import HW_SLOWDOWN_MASK

GIB = 1 << 30

XID_MEANING = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    38: "driver firmware error",
    39: "PCIe/host error",
    42: "video processor exception",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    48: "double-bit ECC error",
    54: "power connector issue",
    56: "display engine error",
    57: "memory clock error",
    58: "unstable video memory interface",
    60: "clock unstable",
    61: "micro-controller breakpoint",
    62: "micro-controller halt",
    63: "row remapping event",
    64: "row remapping failure",
    67: "NVLink issue",
    73: "NVENC error",
    74: "NVLink error",
    78: "vGPU start failed",
    79: "fallen off the bus",
    92: "high single-bit ECC rate",
    94: "contained memory error",
    95: "uncontained memory error",
    109: "context-switch timeout",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "ECC unrecovered error",
    154: "GPU recovery action changed",
}
XID_ACTION = {
    48: "drain the node",
    62: "reset the GPU",
    64: "reset the GPU, then drain if it repeats",
    74: "check NVLink; reset the GPU",
    79: "reboot the node (GPU off the bus)",
    94: "the job restarts",
    95: "reset the GPU; drain the node",
    109: "reset the GPU",
    119: "reset the GPU",
    120: "reset the GPU",
    140: "reset the GPU",
    63: "check remapped rows pending (reset at the next chunk boundary)",
}
RECOVERY_ACTIONS = {
    0: "NONE",
    1: "GPU_RESET",
    2: "NODE_REBOOT",
    3: "DRAIN_P2P",
    4: "DRAIN_AND_RESET",
    5: "RECOVER_IMEX_DOMAIN",
    6: "BUS_RESET",
    7: "SYSTEM_REBOOT",
}
# DCGM PCIe replay budget per lane per minute, for Gen1..Gen6 (DcgmHealthWatch.cpp).
PCIE_REPLAY_PER_LANE_MIN = {1: 0.15, 2: 0.3, 3: 0.48, 4: 0.96, 5: 1.92, 6: 3.84}

THERMAL_COUNTERS = (
    "DCGM_FI_DEV_THERMAL_VIOLATION",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN",
)


@dataclass
class GpuRuleSettings:
    """Defaults from monitor-facts.md (b); the `gpu:` section of configs/monitor.yaml overrides them."""

    xid_critical: tuple[int, ...] = (48, 62, 64, 74, 79, 95, 109, 119, 120, 140)
    xid_warn: tuple[int, ...] = (13, 31, 38, 39, 42, 54, 56, 57, 58, 60, 61, 63, 67, 73, 78, 92, 94)
    xid_info: tuple[int, ...] = (43, 45, 154)
    xid_hold_s: float = 1800.0  # an XID stays a finding this long after it was seen
    ecc_sbe_per_hour: float = 100.0
    remap_uncorrectable_warn: int = 512
    hw_slowdown_window_min: int = 10
    hw_slowdown_min_minutes: int = 6
    temp_slowdown_margin_c: float = 5.0
    temp_samples: int = 2  # a temperature rule needs this many consecutive samples over the line
    violation_window_s: float = 60.0
    power_cap_info_fraction: float = 0.5  # SW power cap for more than this share of the window → info
    pcie_replay_per_min: float | None = None  # None: DCGM's ceil(rate(gen) × width); 16 for Gen4 x16
    nvlink_crc_per_s_critical: float = 100.0
    gpu_mem_info_fraction: float = 0.97
    host_ram_warn_fraction: float = 0.90
    trend_window_s: float = 1800.0
    trend_min_span_s: float = 600.0
    trend_horizon_s: float = 7200.0
    trend_min_r2: float = 0.5
    shm_free_warn_fraction: float = 0.10
    shm_free_critical_fraction: float = 0.03
    disk_free_warn_gib: float = 100.0
    disk_free_critical_gib: float = 25.0
    straggler_window_s: float = 600.0
    straggler_ratio: float = 0.75
    straggler_busy_util: float = 50.0
    nccl_hang_window_s: float = 600.0
    nccl_hang_util: float = 95.0
    nccl_hang_power_fraction: float = 0.30
    nccl_hang_gpu_fraction: float = 0.90
    silent_intervals: float = 3.0
    silent_min_s: float = 30.0  # shared filesystems show new lines late; never call an agent silent sooner
    clock_skew_s: float = 30.0  # a node clock this far from the monitor's (estimated by the telemetry tail)
    min_coverage: float = 0.8  # a windowed rule needs samples over this share of its window

    def history_s(self) -> float:
        """How much history evaluate() needs per host (what the engine's SampleWindow must keep)."""
        return max(
            self.xid_hold_s,
            self.trend_window_s,
            self.straggler_window_s,
            self.nccl_hang_window_s,
            self.hw_slowdown_window_min * 60.0,
        )

    def dense_s(self) -> float:
        """How far back evaluate() needs every sample: the medians, coverage and per-interval rates. Older
        samples serve the trend (a least-squares line) and the XID hold only, so the window may thin them."""
        return max(
            self.violation_window_s,
            self.straggler_window_s,
            self.nccl_hang_window_s,
            self.hw_slowdown_window_min * 60.0,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GpuRuleSettings:
        """From the YAML `gpu:` section; an unknown key raises ValueError naming it (the CLI turns it into
        a UserError)."""
        data = dict(data or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"gpu.{unknown[0]}: unknown setting; known: {', '.join(sorted(known))}")
        out: dict[str, Any] = {}
        for name, value in data.items():
            default = getattr(cls(), name)
            if isinstance(default, tuple):
                if not isinstance(value, list | tuple) or not all(isinstance(v, int) for v in value):
                    raise ValueError(f"gpu.{name}: must be a list of XID numbers, got {value!r}")
                out[name] = tuple(value)
            elif value is None and name == "pcie_replay_per_min":
                out[name] = None
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"gpu.{name}: must be a number, got {value!r}")
            elif value < 0:
                raise ValueError(f"gpu.{name}: must be ≥ 0, got {value!r}")
            else:
                out[name] = type(default)(value) if default is not None else float(value)
        return cls(**out)


# -- series helpers ------------------------------------------------------------------------------------------


@dataclass
class GpuSeries:
    """One GPU's samples on one host, oldest first."""

    times: list[float]
    values: list[dict[str, Any]]

    def since(self, t0: float, baseline: bool = False) -> tuple[list[float], list[dict[str, Any]]]:
        """Samples at or after t0; with baseline, also the last one before t0 (so a counter's increase
        across the window's start counts)."""
        i = bisect_left(self.times, t0)
        if baseline and i > 0:
            i -= 1
        return self.times[i:], self.values[i:]

    @property
    def latest(self) -> dict[str, Any]:
        return self.values[-1]


def _per_gpu(samples: list[dict[str, Any]]) -> dict[int, GpuSeries]:
    out: dict[int, GpuSeries] = {}
    for s in samples:
        t = float(s["time"])
        for gpu in s.get("gpus") or ():
            idx = gpu.get("index")
            if not isinstance(idx, int):
                continue
            series = out.get(idx)
            if series is None:
                series = out[idx] = GpuSeries([], [])
            series.times.append(t)
            series.values.append(gpu)
    return out


_INF = math.inf


def _num(value: Any) -> float | None:
    # The exact-type checks first: this runs ~10⁶ times a cycle at 32 GPUs (bool is not int here).
    kind = type(value)
    if kind is float:
        return None if value != value or value == _INF or value == -_INF else value
    if kind is int:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _increase(values: Iterable[Any]) -> float:
    """Sum of positive steps between consecutive numbers (a reset to 0 restarts, never subtracts)."""
    total = 0.0
    prev: float | None = None
    for v in values:
        kind = type(v)
        if kind is int:
            x: float | None = v
        elif kind is float:
            x = None if v != v or v == _INF or v == -_INF else v
        else:
            x = _num(v)
        if x is None:
            continue
        if prev is not None and x > prev:
            total += x - prev
        prev = x
    return total


def _covers(times: list[float], window_s: float, now: float, min_coverage: float) -> bool:
    return bool(times) and times[-1] - times[0] >= min_coverage * window_s and now - times[-1] <= window_s


def _deg(x: float | None) -> str:
    return "n/a" if x is None else f"{x:g} °C"


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%SZ")


def _finding(
    rule: str,
    severity: Severity,
    subject: str,
    metric: str,
    value: Any,
    threshold: Any,
    message: str,
    node: str | None,
    gpu: int | None = None,
) -> Finding:
    return Finding.of(rule, severity, subject, metric, value, threshold, message, node=node, gpu=gpu)


def _trend(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope (per second) and r² of (t, y) points."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((t - mt) ** 2 for t, _ in points)
    syy = sum((y - my) ** 2 for _, y in points)
    sxy = sum((t - mt) * (y - my) for t, y in points)
    if sxx == 0:
        return 0.0, 0.0
    slope = sxy / sxx
    r2 = 0.0 if syy == 0 else (sxy * sxy) / (sxx * syy)
    return slope, r2


def _minute_peaks(times: list[float], ys: list[float | None], now: float) -> list[tuple[float, float]]:
    """Per-minute maxima: memory use under RL swings between rollout and update; its peaks creep."""
    buckets: dict[int, tuple[float, float]] = {}
    for t, y in zip(times, ys, strict=True):
        if y is None:
            continue
        b = int((now - t) // 60)
        if b not in buckets or y > buckets[b][1]:
            buckets[b] = (now - 60 * b, y)
    return sorted(buckets.values())


def _projects_exhaustion(
    times: list[float], used: list[float | None], total: float, now: float, st: GpuRuleSettings
) -> tuple[float, float] | None:
    """(slope per hour, seconds until full) when the used amount's trend reaches total within the horizon."""
    peaks = _minute_peaks(times, used, now)
    if len(peaks) < 5 or peaks[-1][0] - peaks[0][0] < st.trend_min_span_s:
        return None
    slope, r2 = _trend(peaks)
    if slope <= 0 or r2 < st.trend_min_r2:
        return None
    headroom = total - peaks[-1][1]
    eta = headroom / slope if headroom > 0 else 0.0
    if eta > st.trend_horizon_s:
        return None
    return slope * 3600.0, eta


# -- the rules ---------------------------------------------------------------------------------------------------

HostRule = Callable[[str, list[dict[str, Any]], dict[int, GpuSeries], float, GpuRuleSettings], list[Finding]]


def rule_xid(
    host: str, samples: list[dict[str, Any]], _g: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    seen: dict[tuple[int | None, int], tuple[float, int]] = {}
    for s in samples:
        for e in s.get("xid_events") or ():
            xid = e.get("xid")
            if not isinstance(xid, int):
                continue
            t = float(e.get("time", s["time"]))
            if now - t > st.xid_hold_s:
                continue
            key = (e.get("gpu"), xid)
            last, count = seen.get(key, (t, 0))
            seen[key] = (max(last, t), count + 1)
    out = []
    for (gpu, xid), (t, count) in sorted(seen.items(), key=lambda kv: (kv[0][0] is None, kv[0])):
        severity: Severity = (
            "critical" if xid in st.xid_critical else "info" if xid in st.xid_info else "warn"
        )
        what = XID_MEANING.get(xid, "unlisted XID")
        action = XID_ACTION.get(xid)
        where = f"GPU {gpu}" if gpu is not None else "an unidentified GPU"
        msg = f"XID {xid} ({what}) on {host} {where} at {_when(t)}" + (f", {count}×" if count > 1 else "")
        if action:
            msg += f"; action: {action}"
        out.append(_finding("G1-xid", severity, f"{host}:{gpu}:{xid}", "xid", xid, None, msg, host, gpu))
    return out


def rule_ecc(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    for idx, series in gpus.items():
        dbe = _num(series.latest.get("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"))
        _, vals = series.since(now - st.history_s(), baseline=True)
        dbe_agg_new = _increase(v.get("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL") for v in vals)
        if (dbe or 0) > 0 or dbe_agg_new > 0:
            value = dbe if dbe else dbe_agg_new
            out.append(
                _finding(
                    "G2-ecc-uncorrectable",
                    "critical",
                    f"{host}:{idx}",
                    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                    value,
                    0,
                    f"{host} GPU {idx}: {value:g} uncorrectable (double-bit) ECC errors "
                    "since the driver loaded; drain the node",
                    host,
                    idx,
                )
            )
        times, vals = series.since(now - 3600.0, baseline=True)
        sbe = _increase(v.get("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL") for v in vals)
        if sbe > st.ecc_sbe_per_hour:
            out.append(
                _finding(
                    "G3-ecc-correctable-rate",
                    "warn",
                    f"{host}:{idx}",
                    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
                    sbe,
                    st.ecc_sbe_per_hour,
                    f"{host} GPU {idx}: {sbe:g} correctable ECC errors in the last "
                    f"{(times[-1] - times[0]) / 60:.0f} min (limit {st.ecc_sbe_per_hour:g}/h)",
                    host,
                    idx,
                )
            )
    return out


def rule_row_remap(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], _now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    for idx, series in gpus.items():
        g = series.latest
        if (_num(g.get("DCGM_FI_DEV_ROW_REMAP_FAILURE")) or 0) > 0:
            out.append(
                _finding(
                    "G4-row-remap",
                    "critical",
                    f"{host}:{idx}:failure",
                    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
                    1,
                    0,
                    f"{host} GPU {idx}: row remapping failed (memory cannot be repaired); "
                    "drain the node and RMA the GPU",
                    host,
                    idx,
                )
            )
        if (_num(g.get("DCGM_FI_DEV_ROW_REMAP_PENDING")) or 0) > 0:
            out.append(
                _finding(
                    "G4-row-remap",
                    "warn",
                    f"{host}:{idx}:pending",
                    "DCGM_FI_DEV_ROW_REMAP_PENDING",
                    1,
                    0,
                    f"{host} GPU {idx}: a row remap is pending; reset the GPU at the next chunk boundary",
                    host,
                    idx,
                )
            )
        unc = _num(g.get("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"))
        if unc is not None and unc >= st.remap_uncorrectable_warn:
            out.append(
                _finding(
                    "G4-row-remap",
                    "warn",
                    f"{host}:{idx}:uncorrectable",
                    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
                    unc,
                    st.remap_uncorrectable_warn,
                    f"{host} GPU {idx}: {unc:g} rows remapped for uncorrectable errors "
                    f"(≥ {st.remap_uncorrectable_warn})",
                    host,
                    idx,
                )
            )
    return out


def rule_recovery_action(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], _now: float, _st: GpuRuleSettings
) -> list[Finding]:
    out = []
    for idx, series in gpus.items():
        action = series.latest.get("NVML_FI_DEV_GET_GPU_RECOVERY_ACTION")
        if not isinstance(action, int) or action == 0:
            continue
        name = RECOVERY_ACTIONS.get(action, str(action))
        severity: Severity = "warn" if name == "DRAIN_P2P" else "critical"
        out.append(
            _finding(
                "G5-recovery-action",
                severity,
                f"{host}:{idx}",
                "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION",
                name,
                "NONE",
                f"{host} GPU {idx}: the driver asks for recovery action {name}",
                host,
                idx,
            )
        )
    return out


def rule_hw_slowdown(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    for idx, series in gpus.items():
        times, vals = series.since(now - st.hw_slowdown_window_min * 60.0)
        minutes = set()
        for t, v in zip(times, vals, strict=True):
            reasons = v.get("DCGM_FI_DEV_CLOCKS_EVENT_REASONS")
            if isinstance(reasons, int) and reasons & HW_SLOWDOWN_MASK:
                minutes.add(int((now - t) // 60))
        if len(minutes) >= st.hw_slowdown_min_minutes:
            out.append(
                _finding(
                    "G6-hw-slowdown",
                    "warn",
                    f"{host}:{idx}",
                    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
                    len(minutes),
                    st.hw_slowdown_min_minutes,
                    f"{host} GPU {idx}: hardware slowdown (HW/thermal/power-brake) in {len(minutes)} of "
                    f"the last {st.hw_slowdown_window_min} minutes",
                    host,
                    idx,
                )
            )
    return out


def rule_thermal(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], _now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    n = max(1, st.temp_samples)
    for idx, series in gpus.items():
        recent = series.values[-n:]
        if len(recent) < n:
            continue
        g = series.latest
        temps = [_num(v.get("DCGM_FI_DEV_GPU_TEMP")) for v in recent]
        slowdown = _num(g.get("DCGM_FI_DEV_SLOWDOWN_TEMP"))
        gpu_max = _num(g.get("DCGM_FI_DEV_GPU_MAX_OP_TEMP"))
        if None not in temps:
            temp = min(t for t in temps if t is not None)
            if slowdown is not None and temp >= slowdown:
                out.append(
                    _finding(
                        "G7-thermal",
                        "critical",
                        f"{host}:{idx}",
                        "DCGM_FI_DEV_GPU_TEMP",
                        temp,
                        slowdown,
                        f"{host} GPU {idx}: {temp:g} °C ≥ its slowdown temperature {slowdown:g} °C",
                        host,
                        idx,
                    )
                )
            else:
                lines = [
                    x
                    for x in (gpu_max, None if slowdown is None else slowdown - st.temp_slowdown_margin_c)
                    if x is not None
                ]
                if lines and temp >= min(lines):
                    out.append(
                        _finding(
                            "G7-thermal",
                            "warn",
                            f"{host}:{idx}",
                            "DCGM_FI_DEV_GPU_TEMP",
                            temp,
                            min(lines),
                            f"{host} GPU {idx}: {temp:g} °C, near its limits (GPU max "
                            f"{_deg(gpu_max)}, slowdown {_deg(slowdown)})",
                            host,
                            idx,
                        )
                    )
        mem_temps = [_num(v.get("DCGM_FI_DEV_MEMORY_TEMP")) for v in recent]
        mem_max = _num(g.get("DCGM_FI_DEV_MEM_MAX_OP_TEMP"))
        if None not in mem_temps and mem_max is not None:
            mt = min(t for t in mem_temps if t is not None)
            if mt >= mem_max:
                out.append(
                    _finding(
                        "G7-thermal",
                        "critical",
                        f"{host}:{idx}:hbm",
                        "DCGM_FI_DEV_MEMORY_TEMP",
                        mt,
                        mem_max,
                        f"{host} GPU {idx}: HBM at {mt:g} °C ≥ its maximum {mem_max:g} °C",
                        host,
                        idx,
                    )
                )
    return out


def rule_violations(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    w = st.violation_window_s
    for idx, series in gpus.items():
        times, vals = series.since(now - w, baseline=True)
        if len(vals) < 2:
            continue
        grown = {k: _increase(v.get(k) for v in vals) for k in THERMAL_COUNTERS}
        thermal_us = max(grown.values())
        if thermal_us > 0:
            which = ", ".join(k.split("_", 3)[-1] for k, v in grown.items() if v > 0)
            out.append(
                _finding(
                    "G8-violation",
                    "warn",
                    f"{host}:{idx}:thermal",
                    "DCGM_FI_DEV_THERMAL_VIOLATION",
                    round(thermal_us / 1e6, 2),
                    0,
                    f"{host} GPU {idx}: clocks held back for thermal reasons {thermal_us / 1e6:.1f} s "
                    f"in the last {w:g} s ({which})",
                    host,
                    idx,
                )
            )
        span = times[-1] - times[0]
        power_us = _increase(v.get("DCGM_FI_DEV_POWER_VIOLATION") for v in vals)
        if span > 0 and power_us / 1e6 / span > st.power_cap_info_fraction:
            share = power_us / 1e6 / span
            out.append(
                _finding(
                    "G8-violation",
                    "info",
                    f"{host}:{idx}:power",
                    "DCGM_FI_DEV_POWER_VIOLATION",
                    round(share, 2),
                    st.power_cap_info_fraction,
                    f"{host} GPU {idx}: at its power cap {share:.0%} of the last {span:.0f} s",
                    host,
                    idx,
                )
            )
    return out


CRC_COUNTERS = (
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
)


def _peak_rate(times: list[float], vals: list[dict[str, Any]], keys: tuple[str, ...]) -> float:
    """The highest per-second increase of the summed counters between consecutive samples."""
    peak = 0.0
    for i in range(1, len(vals)):
        dt = times[i] - times[i - 1]
        if dt <= 0:
            continue
        grown = sum(_increase((vals[i - 1].get(k), vals[i].get(k))) for k in keys)
        peak = max(peak, grown / dt)
    return peak


def _pcie_budget(g: dict[str, Any], st: GpuRuleSettings) -> float:
    if st.pcie_replay_per_min is not None:
        return st.pcie_replay_per_min
    gen = g.get("DCGM_FI_DEV_PCIE_LINK_GEN") or g.get("DCGM_FI_DEV_PCIE_MAX_LINK_GEN")
    width = g.get("DCGM_FI_DEV_PCIE_LINK_WIDTH") or g.get("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH")
    if gen in PCIE_REPLAY_PER_LANE_MIN and isinstance(width, int) and width > 0:
        return float(math.ceil(PCIE_REPLAY_PER_LANE_MIN[gen] * width))
    return 16.0


def rule_pcie_replay(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    for idx, series in gpus.items():
        times, vals = series.since(now - 60.0, baseline=True)
        if len(vals) < 2:
            continue
        replays = _increase(v.get("DCGM_FI_DEV_PCIE_REPLAY_COUNTER") for v in vals)
        budget = _pcie_budget(series.latest, st)
        if replays > budget:
            out.append(
                _finding(
                    "G9-pcie-replay",
                    "warn",
                    f"{host}:{idx}",
                    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
                    replays,
                    budget,
                    f"{host} GPU {idx}: {replays:g} PCIe replays in the last minute "
                    f"(budget {budget:g}/min for this link)",
                    host,
                    idx,
                )
            )
    return out


def rule_nvlink(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    for idx, series in gpus.items():
        times, vals = series.since(now - 60.0, baseline=True)
        if len(vals) >= 2:
            replay = _increase(v.get("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL") for v in vals)
            recovery = _increase(v.get("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL") for v in vals)
            if replay + recovery >= 1:
                out.append(
                    _finding(
                        "G10-nvlink-errors",
                        "critical",
                        f"{host}:{idx}:replay",
                        "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
                        replay + recovery,
                        1,
                        f"{host} GPU {idx}: {replay:g} NVLink replay and {recovery:g} recovery errors "
                        "in the last minute",
                        host,
                        idx,
                    )
                )
            crc = sum(_increase(v.get(k) for v in vals) for k in CRC_COUNTERS)
            span = times[-1] - times[0]
            if crc > 0 and span > 0:
                # DCGM's limit is a per-second rate: judge the worst sample interval, not the minute's mean.
                rate = _peak_rate(times, vals, CRC_COUNTERS)
                severity: Severity = "critical" if rate >= st.nvlink_crc_per_s_critical else "warn"
                out.append(
                    _finding(
                        "G10-nvlink-errors",
                        severity,
                        f"{host}:{idx}:crc",
                        "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
                        round(rate, 3),
                        st.nvlink_crc_per_s_critical,
                        f"{host} GPU {idx}: {crc:g} NVLink CRC errors in {span:.0f} s "
                        f"(peak {rate:.2f}/s; critical at {st.nvlink_crc_per_s_critical:g}/s)",
                        host,
                        idx,
                    )
                )
        g = series.latest
        up, start = _num(g.get("nvlink_links_up")), _num(g.get("nvlink_links_at_start"))
        if up is not None and start is not None and up < start:
            out.append(
                _finding(
                    "G11-link-down",
                    "critical",
                    f"{host}:{idx}:nvlink",
                    "nvlink_links_up",
                    up,
                    start,
                    f"{host} GPU {idx}: {start - up:g} NVLink link(s) went down ({up:g} of {start:g} up)",
                    host,
                    idx,
                )
            )
        width, max_width = (
            _num(g.get("DCGM_FI_DEV_PCIE_LINK_WIDTH")),
            _num(g.get("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH")),
        )
        if width is not None and max_width is not None and 0 < width < max_width:
            out.append(
                _finding(
                    "G11-link-down",
                    "warn",
                    f"{host}:{idx}:pcie",
                    "DCGM_FI_DEV_PCIE_LINK_WIDTH",
                    width,
                    max_width,
                    f"{host} GPU {idx}: PCIe link at x{width:g} of x{max_width:g}",
                    host,
                    idx,
                )
            )
    return out


def rule_memory(
    host: str, samples: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    t0 = now - st.trend_window_s
    for idx, series in gpus.items():
        g = series.latest
        used, total = _num(g.get("DCGM_FI_DEV_FB_USED")), _num(g.get("DCGM_FI_DEV_FB_TOTAL"))
        if used is None or not total:
            continue
        if used / total > st.gpu_mem_info_fraction:
            out.append(
                _finding(
                    "G12-memory",
                    "info",
                    f"{host}:{idx}:gpu",
                    "DCGM_FI_DEV_FB_USED",
                    round(used / total, 3),
                    st.gpu_mem_info_fraction,
                    f"{host} GPU {idx}: {used / total:.0%} of GPU memory in use",
                    host,
                    idx,
                )
            )
        times, vals = series.since(t0)
        proj = _projects_exhaustion(times, [_num(v.get("DCGM_FI_DEV_FB_USED")) for v in vals], total, now, st)
        if proj is not None:
            rate, eta = proj
            out.append(
                _finding(
                    "G12-memory",
                    "warn",
                    f"{host}:{idx}:gpu-trend",
                    "DCGM_FI_DEV_FB_USED",
                    round(rate / 1024, 2),
                    None,
                    f"{host} GPU {idx}: peak GPU memory rising {rate / 1024:.2f} GiB/h; full in "
                    f"~{eta / 60:.0f} min",
                    host,
                    idx,
                )
            )
    stats = samples[-1].get("host_stats") or {}
    used, total = _num(stats.get("ram_used_bytes")), _num(stats.get("ram_total_bytes"))
    if used is not None and total:
        if used / total > st.host_ram_warn_fraction:
            out.append(
                _finding(
                    "G12-memory",
                    "warn",
                    f"{host}:ram",
                    "ram_used_bytes",
                    round(used / total, 3),
                    st.host_ram_warn_fraction,
                    f"{host}: host RAM {used / total:.0%} used ({used / GIB:.0f} of {total / GIB:.0f} GiB)",
                    host,
                )
            )
        else:
            recent = [s for s in samples if s["time"] >= t0]
            proj = _projects_exhaustion(
                [s["time"] for s in recent],
                [_num((s.get("host_stats") or {}).get("ram_used_bytes")) for s in recent],
                total,
                now,
                st,
            )
            if proj is not None:
                rate, eta = proj
                out.append(
                    _finding(
                        "G12-memory",
                        "warn",
                        f"{host}:ram-trend",
                        "ram_used_bytes",
                        round(rate / GIB, 2),
                        None,
                        f"{host}: host RAM rising {rate / GIB:.1f} GiB/h; out of memory in ~{eta / 60:.0f} min",
                        host,
                    )
                )
    return out


def rule_space(
    host: str, samples: list[dict[str, Any]], _g: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    stats = samples[-1].get("host_stats") or {}
    recent = [s for s in samples if s["time"] >= now - st.trend_window_s]
    for prefix, rule, what in (
        ("shm", "H1-shm-space", "/dev/shm"),
        ("run_dir", "H2-run-disk-space", "run folder"),
    ):
        free, total = _num(stats.get(f"{prefix}_free_bytes")), _num(stats.get(f"{prefix}_total_bytes"))
        if free is None or not total:
            continue
        if prefix == "shm":
            crit, warn = (
                free / total < st.shm_free_critical_fraction,
                free / total < st.shm_free_warn_fraction,
            )
            threshold = st.shm_free_critical_fraction if crit else st.shm_free_warn_fraction
            value: float = round(free / total, 3)
        else:
            crit, warn = free / GIB < st.disk_free_critical_gib, free / GIB < st.disk_free_warn_gib
            threshold = st.disk_free_critical_gib if crit else st.disk_free_warn_gib
            value = round(free / GIB, 1)
        if crit or warn:
            out.append(
                _finding(
                    rule,
                    "critical" if crit else "warn",
                    host,
                    f"{prefix}_free_bytes",
                    value,
                    threshold,
                    f"{host}: {what} has {free / GIB:.1f} GiB free of {total / GIB:.0f} GiB",
                    host,
                )
            )
            continue
        used = [_num((s.get("host_stats") or {}).get(f"{prefix}_used_bytes")) for s in recent]
        proj = _projects_exhaustion([s["time"] for s in recent], used, total, now, st)
        if proj is not None:
            rate, eta = proj
            out.append(
                _finding(
                    rule,
                    "warn",
                    f"{host}:trend",
                    f"{prefix}_used_bytes",
                    round(rate / GIB, 2),
                    None,
                    f"{host}: {what} filling at {rate / GIB:.1f} GiB/h; full in ~{eta / 60:.0f} min",
                    host,
                )
            )
    return out


def rule_straggler(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    w = st.straggler_window_s
    med: dict[int, dict[str, float]] = {}
    for idx, series in gpus.items():
        if series.latest.get("nvml_error"):
            continue
        times, vals = series.since(now - w)
        if not _covers(times, w, now, st.min_coverage):
            continue
        row = {}
        for key in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_SM_CLOCK"):
            xs = [x for x in (_num(v.get(key)) for v in vals) if x is not None]
            if xs:
                row[key] = statistics.median(xs)
        med[idx] = row
    if len(med) < 3:
        return []
    out = []
    for key, label in (("DCGM_FI_DEV_GPU_UTIL", "utilisation"), ("DCGM_FI_DEV_SM_CLOCK", "SM clock")):
        values = {i: r[key] for i, r in med.items() if key in r}
        if len(values) < 3:
            continue
        for idx, mine in values.items():
            others = [v for i, v in values.items() if i != idx]
            ref = statistics.median(others)
            others_util = statistics.median(
                [r.get("DCGM_FI_DEV_GPU_UTIL", 0.0) for i, r in med.items() if i != idx]
            )
            if others_util < st.straggler_busy_util or ref <= 0:
                continue
            score = mine / ref
            if score < st.straggler_ratio:
                out.append(
                    _finding(
                        "G13-straggler",
                        "warn",
                        f"{host}:{idx}:{key}",
                        key,
                        round(score, 2),
                        st.straggler_ratio,
                        f"{host} GPU {idx}: median {label} {mine:g} vs {ref:g} on the other GPUs "
                        f"over {w / 60:.0f} min (score {score:.2f} < {st.straggler_ratio:g})",
                        host,
                        idx,
                    )
                )
    return out


def rule_lost(
    host: str, samples: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    latest = samples[-1]
    present = {g.get("index") for g in latest.get("gpus") or ()}
    for g in latest.get("gpus") or ():
        if g.get("nvml_error") == "GPU_IS_LOST":
            idx = g.get("index")
            out.append(
                _finding(
                    "G14-gpu-lost",
                    "critical",
                    f"{host}:{idx}",
                    "nvml_error",
                    "GPU_IS_LOST",
                    None,
                    f"{host} GPU {idx}: NVML says the GPU is lost (off the bus); reboot the node",
                    host,
                    idx,
                )
            )
    for idx in sorted(i for i in set(gpus) - present if isinstance(i, int)):
        out.append(
            _finding(
                "G14-gpu-lost",
                "critical",
                f"{host}:{idx}:vanished",
                "gpu_count",
                len(present),
                len(present) + 1,
                f"{host} GPU {idx}: no longer listed by NVML",
                host,
                idx,
            )
        )
    err = latest.get("nvml_error")
    if isinstance(err, dict) and err.get("name") != "GPU_IS_LOST" and not latest.get("gpus"):
        out.append(
            _finding(
                "G14-gpu-lost",
                "warn",
                f"{host}:nvml",
                "nvml_error",
                err.get("name"),
                None,
                f"{host}: the agent cannot read the GPUs ({err.get('name')}: {err.get('message')}); "
                "GPU health on this node is unknown",
                host,
            )
        )
    return out


def rule_clock_skew(
    host: str, samples: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    skew = _num(samples[-1].get("clock_skew_s"))
    if skew is None or abs(skew) < st.clock_skew_s:
        return []
    side = "behind" if skew < 0 else "ahead of"
    return [
        _finding(
            "S6-clock-skew",
            "warn",
            host,
            "clock_skew_s",
            round(skew),
            st.clock_skew_s,
            f"{host}: its clock is about {abs(skew):.0f} s {side} the monitor's; its telemetry is shifted onto "
            f"the monitor's clock, but its logs' and checkpoints' times are off: check NTP/chrony on {host}",
            host,
        )
    ]


HOST_RULES: tuple[HostRule, ...] = (
    rule_clock_skew,
    rule_ecc,
    rule_row_remap,
    rule_recovery_action,
    rule_hw_slowdown,
    rule_thermal,
    rule_violations,
    rule_pcie_replay,
    rule_nvlink,
    rule_memory,
    rule_space,
    rule_straggler,
    rule_lost,
)


def rule_agent_silent(
    samples_by_host: dict[str, list[dict[str, Any]]], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    for host, samples in sorted(samples_by_host.items()):
        if not samples or samples[-1].get("final"):
            continue
        last = samples[-1]
        interval = _num(last.get("interval")) or 5.0
        limit = max(st.silent_intervals * interval, st.silent_min_s)
        age = now - float(last["time"])
        arrived = _num(last.get("arrived"))
        if arrived is not None:
            # Seen by the monitor since: a node clock that runs behind must not make a live agent silent.
            age = min(age, now - arrived)
        if age > limit:
            out.append(
                _finding(
                    "S5-agent-silent",
                    "warn",
                    host,
                    "agent_age_s",
                    round(age),
                    limit,
                    f"{host}: no telemetry for {age:.0f} s (agent every {interval:g} s, last "
                    f"job {last.get('job_id')}); this node's GPUs are unwatched",
                    host,
                )
            )
    return out


def rule_nccl_hang(
    gpus_by_host: dict[str, dict[int, GpuSeries]], now: float, st: GpuRuleSettings
) -> list[Finding]:
    w = st.nccl_hang_window_s
    total = 0
    hung: list[tuple[str, int]] = []
    for host, gpus in sorted(gpus_by_host.items()):
        for idx, series in sorted(gpus.items()):
            if series.latest.get("nvml_error"):
                continue
            total += 1
            times, vals = series.since(now - w)
            if not _covers(times, w, now, st.min_coverage):
                continue
            ok = True
            for v in vals:
                util, power = _num(v.get("DCGM_FI_DEV_GPU_UTIL")), _num(v.get("DCGM_FI_DEV_POWER_USAGE"))
                limit = _num(v.get("DCGM_FI_DEV_ENFORCED_POWER_LIMIT"))
                if (
                    util is None
                    or power is None
                    or not limit
                    or util < st.nccl_hang_util
                    or power >= st.nccl_hang_power_fraction * limit
                ):
                    ok = False
                    break
            if ok:
                hung.append((host, idx))
    if not total or not hung or len(hung) / total < st.nccl_hang_gpu_fraction:
        return []
    hosts = sorted({h for h, _ in hung})
    return [
        _finding(
            "S2-nccl-hang",
            "critical",
            "cluster",
            "hung_gpu_fraction",
            round(len(hung) / total, 2),
            st.nccl_hang_gpu_fraction,
            f"{len(hung)} of {total} GPUs at ≥ {st.nccl_hang_util:g} % utilisation but < "
            f"{st.nccl_hang_power_fraction:.0%} of their power limit for {w / 60:.0f} min on "
            f"{', '.join(hosts)}: the signature of a hung NCCL collective",
            hosts[0] if len(hosts) == 1 else None,
        )
    ]


def evaluate(
    samples_by_host: dict[str, list[dict[str, Any]]], now: float, settings: GpuRuleSettings | None = None
) -> list[Finding]:
    """All GPU/host findings that hold at `now`. Samples per host must be in time order."""
    st = settings or GpuRuleSettings()
    findings: list[Finding] = []
    gpus_by_host: dict[str, dict[int, GpuSeries]] = {}
    for host, samples in sorted(samples_by_host.items()):
        if not samples:
            continue
        gpus = _per_gpu(samples)
        findings.extend(rule_xid(host, samples, gpus, now, st))
        if samples[-1].get("final"):
            continue  # the chunk ended cleanly: its last state is not this node's state now
        gpus_by_host[host] = gpus
        for rule in HOST_RULES:
            findings.extend(rule(host, samples, gpus, now, st))
    findings.extend(rule_nccl_hang(gpus_by_host, now, st))
    findings.extend(rule_agent_silent(samples_by_host, now, st))
    return findings
