"""What the GPU and host rules compute over a node's samples: per-GPU series, counter increases, coverage of
a window and a usage trend's projected exhaustion (through its peaks, or through its floor for host RAM)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from justrl_hpc.monitor.findings import Finding, Severity
from justrl_hpc.monitor.rules.gpu_settings import GpuRuleSettings

GIB = 1 << 30


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


def per_gpu(samples: list[dict[str, Any]]) -> dict[int, GpuSeries]:
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


def num(value: Any) -> float | None:
    # The exact-type checks first: this runs ~10⁶ times a cycle at 32 GPUs (bool is not int here).
    kind = type(value)
    if kind is float:
        return None if value != value or value == _INF or value == -_INF else value
    if kind is int:
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def increase(values: Iterable[Any]) -> float:
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
            x = num(v)
        if x is None:
            continue
        if prev is not None and x > prev:
            total += x - prev
        prev = x
    return total


def covers(times: list[float], window_s: float, now: float, min_coverage: float) -> bool:
    return bool(times) and times[-1] - times[0] >= min_coverage * window_s and now - times[-1] <= window_s


def finding(
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


def _trend(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """Least-squares slope (per second), r² and the line's anchor (mean t, mean y) of (t, y) points."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((t - mt) ** 2 for t, _ in points)
    syy = sum((y - my) ** 2 for _, y in points)
    sxy = sum((t - mt) * (y - my) for t, y in points)
    if sxx == 0:
        return 0.0, 0.0, mt, my
    slope = sxy / sxx
    r2 = 0.0 if syy == 0 else (sxy * sxy) / (sxx * syy)
    return slope, r2, mt, my


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


def projects_exhaustion(
    times: list[float], used: list[float | None], total: float, now: float, st: GpuRuleSettings
) -> tuple[float, float] | None:
    """(slope per hour, seconds until full) when the used amount's trend reaches total within the horizon."""
    peaks = _minute_peaks(times, used, now)
    if len(peaks) < 5 or peaks[-1][0] - peaks[0][0] < st.trend_min_span_s:
        return None
    slope, r2, _, _ = _trend(peaks)
    if slope <= 0 or r2 < st.trend_min_r2:
        return None
    headroom = total - peaks[-1][1]
    eta = headroom / slope if headroom > 0 else 0.0
    if eta > st.trend_horizon_s:
        return None
    return slope * 3600.0, eta


# A leak raises the floor at about its rate in every slice; a bring-up raises it once and then holds it. Each
# step between consecutive troughs must carry at least this share of what the fitted line rises over it.
FLOOR_STEP_SHARE = 0.25
MIN_TROUGHS = 3  # the fewest lows a floor's line runs through: three 300 s slices span the 10-minute minimum


def troughs(
    times: list[float], ys: list[float | None], now: float, width_s: float
) -> list[tuple[float, float]]:
    """Each `width_s` slice's lowest sample (its own time, its value), slices counted back from now, oldest
    first. A slice longer than the usage's cycle (a chunk's bring-up to teardown, a step's rollout to update)
    holds one of the cycle's lows, so the troughs follow what stays allocated, not what a bring-up borrows."""
    buckets: dict[int, tuple[float, float]] = {}
    for t, y in zip(times, ys, strict=True):
        if y is None:
            continue
        b = int((now - t) // width_s)
        if b not in buckets or y < buckets[b][1]:
            buckets[b] = (t, y)
    return sorted(buckets.values())


def projects_floor_exhaustion(
    times: list[float], used: list[float | None], total: float, now: float, st: GpuRuleSettings
) -> tuple[float, float] | None:
    """(slope per hour, seconds until full) when the used amount's floor (each `ram_trough_s` slice's lowest
    sample) rises in every slice and, with the swings that ride on it, reaches total within the horizon.

    Memory that a bring-up takes and its teardown gives back (the dev cluster's 2-minute chunks; a chunk's
    start after a pause) moves the peaks, not the floor, and a bring-up's step is one step of the floor, not
    one in every slice: neither is projected. A leak lifts every trough. The time to full is the time until
    the floor plus its largest swing above the floor in the window (the next bring-up's peak) reaches total.
    """
    known = [t for t, y in zip(times, used, strict=True) if y is not None]
    if not known or known[-1] - known[0] < st.trend_min_span_s:
        return None
    lows = troughs(times, used, now, st.ram_trough_s)
    if len(lows) < MIN_TROUGHS:
        return None
    slope, r2, mt, my = _trend(lows)
    if slope <= 0 or r2 < st.trend_min_r2:
        return None
    if any(y2 - y1 < FLOOR_STEP_SHARE * slope * (t2 - t1) for (t1, y1), (t2, y2) in pairwise(lows)):
        return None
    swing = max((y - (my + slope * (t - mt)) for t, y in zip(times, used, strict=True) if y is not None))
    peak_now = my + slope * (now - mt) + max(swing, 0.0)
    eta = (total - peak_now) / slope if total > peak_now else 0.0
    if eta > st.trend_horizon_s:
        return None
    return slope * 3600.0, eta
