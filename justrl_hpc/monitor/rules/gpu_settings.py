"""The settings of the `gpu:` section: the thresholds of the GPU rules (gpu.py, gpu_faults.py) and of the host
rules (host.py), which read the same node samples. Bounds are field metadata, checked by core.settings.build."""

from __future__ import annotations

from dataclasses import dataclass

from justrl_hpc.core.settings import setting
from justrl_hpc.monitor.schema import XID_CRITICAL, XID_INFO, XID_WARN


@dataclass
class GpuRuleSettings:
    """Defaults from monitor-facts.md (b); the `gpu:` section of monitor/rules.yaml overrides them."""

    xid_critical: tuple[int, ...] = XID_CRITICAL
    xid_warn: tuple[int, ...] = XID_WARN
    xid_info: tuple[int, ...] = XID_INFO
    xid_hold_s: float = setting(1800.0, lo=0)  # an XID stays a finding this long after it was seen
    ecc_sbe_per_hour: float = setting(100.0, lo=0)
    remap_uncorrectable_warn: int = setting(512, lo=0)
    hw_slowdown_window_min: int = setting(10, lo=0)
    hw_slowdown_min_minutes: int = setting(6, lo=0)
    temp_slowdown_margin_c: float = setting(5.0, lo=0)
    # a temperature rule needs this many consecutive samples over the line
    temp_samples: int = setting(2, lo=0)
    violation_window_s: float = setting(60.0, lo=0)
    # SW power cap for more than this share of the window → info
    power_cap_info_fraction: float = setting(0.5, lo=0)
    # None: DCGM's ceil(rate(gen) × width); 16 for Gen4 x16
    pcie_replay_per_min: float | None = setting(None, lo=0)
    nvlink_crc_per_s_critical: float = setting(100.0, lo=0)
    gpu_mem_info_fraction: float = setting(0.97, lo=0)
    host_ram_warn_fraction: float = setting(0.90, lo=0)
    trend_window_s: float = setting(1800.0, lo=0)
    trend_min_span_s: float = setting(600.0, lo=0)
    trend_horizon_s: float = setting(7200.0, lo=0)
    trend_min_r2: float = setting(0.5, lo=0)
    # host RAM's trend runs through each slice's lowest sample: a slice longer than RAM's cycles (the dev
    # cluster's ~2-minute chunk from bring-up to teardown, a ~296 s training step) holds one of their lows
    ram_trough_s: float = setting(300.0, lo=1)
    shm_free_warn_fraction: float = setting(0.10, lo=0)
    shm_free_critical_fraction: float = setting(0.03, lo=0)
    disk_free_warn_gib: float = setting(100.0, lo=0)
    disk_free_critical_gib: float = setting(25.0, lo=0)
    straggler_window_s: float = setting(600.0, lo=0)
    straggler_ratio: float = setting(0.75, lo=0)
    straggler_busy_util: float = setting(50.0, lo=0)
    nccl_hang_window_s: float = setting(600.0, lo=0)
    nccl_hang_util: float = setting(95.0, lo=0)
    nccl_hang_power_fraction: float = setting(0.30, lo=0)
    nccl_hang_gpu_fraction: float = setting(0.90, lo=0)
    silent_intervals: float = setting(3.0, lo=0)
    # shared filesystems show new lines late; never call an agent silent sooner
    silent_min_s: float = setting(30.0, lo=0)
    # a node clock this far from the monitor's (estimated by the telemetry tail)
    clock_skew_s: float = setting(30.0, lo=0)
    min_coverage: float = setting(0.8, lo=0)  # a windowed rule needs samples over this share of its window

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
        samples serve the trends (lines through per-minute peaks, or through host RAM's per-slice lows, where
        thinning to one per 30 s can miss a shorter low: an older low read too high flattens that trend) and
        the XID hold only, so the window may thin them."""
        return max(
            self.violation_window_s,
            self.straggler_window_s,
            self.nccl_hang_window_s,
            self.hw_slowdown_window_min * 60.0,
        )
