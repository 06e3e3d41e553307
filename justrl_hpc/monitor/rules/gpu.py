"""GPU and host health rules over the node agents' samples (monitor-facts.md section (b): G1–G14, S2, S5).

    evaluate(samples_by_host, now, settings) -> list[Finding]

Pure: the findings that hold *now*, given the recent samples of each host (oldest first, as
telemetry.SampleWindow keeps them; it must cover settings.history_s()). The engine turns them into alerts
(fire once per key, re-fire after its cool-down, resolve when a key stops appearing). Counters are judged
by their increase inside a window (sum of positive steps, so a driver reload that zeroes a volatile counter
is not a negative rate); thresholds of the part (slowdown, GPU_MAX, MEM_MAX temperatures, power limit,
PCIe width) come from the samples, never from here.

Here: the rules on how a working GPU performs (throttling G6–G8, memory G12, stragglers G13, a hung
collective S2) and evaluate(), which runs them with gpu_faults' (what the hardware reports as failing) and
host's (RAM, disk, clock, a silent agent). Their thresholds, one `gpu:` section, are gpu_settings'.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from justrl_hpc.monitor.findings import Finding
from justrl_hpc.monitor.rules.gpu_faults import (
    rule_ecc,
    rule_lost,
    rule_nvlink,
    rule_pcie_replay,
    rule_recovery_action,
    rule_row_remap,
    rule_xid,
)
from justrl_hpc.monitor.rules.gpu_settings import GpuRuleSettings
from justrl_hpc.monitor.rules.host import rule_agent_silent, rule_clock_skew, rule_host_ram, rule_space
from justrl_hpc.monitor.rules.series import (
    GpuSeries,
    covers,
    finding,
    increase,
    num,
    per_gpu,
    projects_exhaustion,
)
from justrl_hpc.monitor.schema import HW_SLOWDOWN_MASK

THERMAL_COUNTERS = (
    "DCGM_FI_DEV_THERMAL_VIOLATION",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN",
)


def _deg(x: float | None) -> str:
    return "n/a" if x is None else f"{x:g} °C"


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
                finding(
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
        temps = [num(v.get("DCGM_FI_DEV_GPU_TEMP")) for v in recent]
        slowdown = num(g.get("DCGM_FI_DEV_SLOWDOWN_TEMP"))
        gpu_max = num(g.get("DCGM_FI_DEV_GPU_MAX_OP_TEMP"))
        if None not in temps:
            temp = min(t for t in temps if t is not None)
            if slowdown is not None and temp >= slowdown:
                out.append(
                    finding(
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
                        finding(
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
        mem_temps = [num(v.get("DCGM_FI_DEV_MEMORY_TEMP")) for v in recent]
        mem_max = num(g.get("DCGM_FI_DEV_MEM_MAX_OP_TEMP"))
        if None not in mem_temps and mem_max is not None:
            mt = min(t for t in mem_temps if t is not None)
            if mt >= mem_max:
                out.append(
                    finding(
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
        grown = {k: increase(v.get(k) for v in vals) for k in THERMAL_COUNTERS}
        thermal_us = max(grown.values())
        if thermal_us > 0:
            which = ", ".join(k.split("_", 3)[-1] for k, v in grown.items() if v > 0)
            out.append(
                finding(
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
        power_us = increase(v.get("DCGM_FI_DEV_POWER_VIOLATION") for v in vals)
        if span > 0 and power_us / 1e6 / span > st.power_cap_info_fraction:
            share = power_us / 1e6 / span
            out.append(
                finding(
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


def rule_gpu_memory(
    host: str, samples: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    t0 = now - st.trend_window_s
    for idx, series in gpus.items():
        g = series.latest
        used, total = num(g.get("DCGM_FI_DEV_FB_USED")), num(g.get("DCGM_FI_DEV_FB_TOTAL"))
        if used is None or not total:
            continue
        if used / total > st.gpu_mem_info_fraction:
            out.append(
                finding(
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
        proj = projects_exhaustion(times, [num(v.get("DCGM_FI_DEV_FB_USED")) for v in vals], total, now, st)
        if proj is not None:
            rate, eta = proj
            out.append(
                finding(
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
        if not covers(times, w, now, st.min_coverage):
            continue
        row = {}
        for key in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_SM_CLOCK"):
            xs = [x for x in (num(v.get(key)) for v in vals) if x is not None]
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
                    finding(
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


# A rule judged on one node's samples at a time (the cluster-wide ones, S2 and S5, are called apart).
NodeRule = Callable[[str, list[dict[str, Any]], dict[int, GpuSeries], float, GpuRuleSettings], list[Finding]]

NODE_RULES: tuple[NodeRule, ...] = (
    rule_clock_skew,
    rule_ecc,
    rule_row_remap,
    rule_recovery_action,
    rule_hw_slowdown,
    rule_thermal,
    rule_violations,
    rule_pcie_replay,
    rule_nvlink,
    rule_gpu_memory,
    rule_host_ram,
    rule_space,
    rule_straggler,
    rule_lost,
)


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
            if not covers(times, w, now, st.min_coverage):
                continue
            ok = True
            for v in vals:
                util, power = num(v.get("DCGM_FI_DEV_GPU_UTIL")), num(v.get("DCGM_FI_DEV_POWER_USAGE"))
                limit = num(v.get("DCGM_FI_DEV_ENFORCED_POWER_LIMIT"))
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
        finding(
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
        gpus = per_gpu(samples)
        findings.extend(rule_xid(host, samples, gpus, now, st))
        if samples[-1].get("final"):
            continue  # the chunk ended cleanly: its last state is not this node's state now
        gpus_by_host[host] = gpus
        for rule in NODE_RULES:
            findings.extend(rule(host, samples, gpus, now, st))
    findings.extend(rule_nccl_hang(gpus_by_host, now, st))
    findings.extend(rule_agent_silent(samples_by_host, now, st))
    return findings
