"""The host rules over the node agents' samples (monitor-facts.md section (b)): host RAM (G12), /dev/shm (H1)
and the run folder's disk (H2) running out, a node clock off the monitor's (S6) and a silent agent (S5).
Their thresholds are in GpuRuleSettings (the `gpu:` section), and gpu.evaluate() runs them with the GPU rules.
"""

from __future__ import annotations

from typing import Any

from justrl_hpc.monitor.findings import Finding
from justrl_hpc.monitor.rules.gpu_settings import GpuRuleSettings
from justrl_hpc.monitor.rules.series import (
    GIB,
    GpuSeries,
    finding,
    num,
    projects_exhaustion,
    projects_floor_exhaustion,
)


def rule_host_ram(
    host: str, samples: list[dict[str, Any]], _g: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    t0 = now - st.trend_window_s
    stats = samples[-1].get("host_stats") or {}
    used, total = num(stats.get("ram_used_bytes")), num(stats.get("ram_total_bytes"))
    if used is not None and total:
        if used / total > st.host_ram_warn_fraction:
            out.append(
                finding(
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
            # Through the floor, not the peaks: every chunk's bring-up (Ray, verl's actors importing torch)
            # borrows GiBs that its teardown returns, and a line through the peaks of a window that starts
            # before a bring-up reads that as a leak (issue 22's rehearsal: "rising 12.3 GiB/h").
            proj = projects_floor_exhaustion(
                [s["time"] for s in recent],
                [num((s.get("host_stats") or {}).get("ram_used_bytes")) for s in recent],
                total,
                now,
                st,
            )
            if proj is not None:
                rate, eta = proj
                out.append(
                    finding(
                        "G12-memory",
                        "warn",
                        f"{host}:ram-trend",
                        "ram_used_bytes",
                        round(rate / GIB, 2),
                        None,
                        f"{host}: host RAM rising {rate / GIB:.1f} GiB/h (its lows, not just its peaks); "
                        f"out of memory in ~{eta / 60:.0f} min",
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
        free, total = num(stats.get(f"{prefix}_free_bytes")), num(stats.get(f"{prefix}_total_bytes"))
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
                finding(
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
        used = [num((s.get("host_stats") or {}).get(f"{prefix}_used_bytes")) for s in recent]
        proj = projects_exhaustion([s["time"] for s in recent], used, total, now, st)
        if proj is not None:
            rate, eta = proj
            out.append(
                finding(
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


def rule_clock_skew(
    host: str, samples: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    skew = num(samples[-1].get("clock_skew_s"))
    if skew is None or abs(skew) < st.clock_skew_s:
        return []
    side = "behind" if skew < 0 else "ahead of"
    return [
        finding(
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


def rule_agent_silent(
    samples_by_host: dict[str, list[dict[str, Any]]], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    for host, samples in sorted(samples_by_host.items()):
        if not samples or samples[-1].get("final"):
            continue
        last = samples[-1]
        interval = num(last.get("interval")) or 5.0
        limit = max(st.silent_intervals * interval, st.silent_min_s)
        age = now - float(last["time"])
        arrived = num(last.get("arrived"))
        if arrived is not None:
            # Seen by the monitor since: a node clock that runs behind must not make a live agent silent.
            age = min(age, now - arrived)
        if age > limit:
            out.append(
                finding(
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
