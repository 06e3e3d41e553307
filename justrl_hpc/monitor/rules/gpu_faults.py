"""The GPU rules over what the hardware and driver report as failing (monitor-facts.md section (b)): XIDs
(G1), ECC errors (G2, G3), row remapping (G4), the driver's recovery action (G5), PCIe replays (G9), NVLink
errors (G10), links down (G11) and lost GPUs (G14). Each is one of gpu.evaluate()'s per-node rules."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from justrl_hpc.monitor.findings import Finding, Severity
from justrl_hpc.monitor.rules.gpu_settings import GpuRuleSettings
from justrl_hpc.monitor.rules.series import GpuSeries, finding, increase, num

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


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%SZ")


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
        out.append(finding("G1-xid", severity, f"{host}:{gpu}:{xid}", "xid", xid, None, msg, host, gpu))
    return out


def rule_ecc(
    host: str, _s: list[dict[str, Any]], gpus: dict[int, GpuSeries], now: float, st: GpuRuleSettings
) -> list[Finding]:
    out = []
    for idx, series in gpus.items():
        dbe = num(series.latest.get("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"))
        _, vals = series.since(now - st.history_s(), baseline=True)
        dbe_agg_new = increase(v.get("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL") for v in vals)
        if (dbe or 0) > 0 or dbe_agg_new > 0:
            value = dbe if dbe else dbe_agg_new
            out.append(
                finding(
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
        sbe = increase(v.get("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL") for v in vals)
        if sbe > st.ecc_sbe_per_hour:
            out.append(
                finding(
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
        if (num(g.get("DCGM_FI_DEV_ROW_REMAP_FAILURE")) or 0) > 0:
            out.append(
                finding(
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
        if (num(g.get("DCGM_FI_DEV_ROW_REMAP_PENDING")) or 0) > 0:
            out.append(
                finding(
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
        unc = num(g.get("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"))
        if unc is not None and unc >= st.remap_uncorrectable_warn:
            out.append(
                finding(
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
            finding(
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
        grown = sum(increase((vals[i - 1].get(k), vals[i].get(k))) for k in keys)
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
        replays = increase(v.get("DCGM_FI_DEV_PCIE_REPLAY_COUNTER") for v in vals)
        budget = _pcie_budget(series.latest, st)
        if replays > budget:
            out.append(
                finding(
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
            replay = increase(v.get("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL") for v in vals)
            recovery = increase(v.get("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL") for v in vals)
            if replay + recovery >= 1:
                out.append(
                    finding(
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
            crc = sum(increase(v.get(k) for v in vals) for k in CRC_COUNTERS)
            span = times[-1] - times[0]
            if crc > 0 and span > 0:
                # DCGM's limit is a per-second rate: judge the worst sample interval, not the minute's mean.
                rate = _peak_rate(times, vals, CRC_COUNTERS)
                severity: Severity = "critical" if rate >= st.nvlink_crc_per_s_critical else "warn"
                out.append(
                    finding(
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
        up, start = num(g.get("nvlink_links_up")), num(g.get("nvlink_links_at_start"))
        if up is not None and start is not None and up < start:
            out.append(
                finding(
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
            num(g.get("DCGM_FI_DEV_PCIE_LINK_WIDTH")),
            num(g.get("DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH")),
        )
        if width is not None and max_width is not None and 0 < width < max_width:
            out.append(
                finding(
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
                finding(
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
            finding(
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
            finding(
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
