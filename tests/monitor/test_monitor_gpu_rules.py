"""GPU/host rules against the replayed 8 × A800 recording (tests/data/nvml_a800_8gpu.jsonl) and planted events."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest

from justrl_hpc.core.errors import UserError
from justrl_hpc.core.settings import build
from justrl_hpc.monitor.agent.sampler import samples_from_recording
from justrl_hpc.monitor.rules.gpu import GpuRuleSettings, evaluate
from justrl_hpc.monitor.rules.host import rule_agent_silent
from justrl_hpc.monitor.sources.telemetry import SampleWindow

RECORDING = Path(__file__).resolve().parents[1] / "data" / "nvml_a800_8gpu.jsonl"
HEALTHY = 48  # the recording's first 12 minutes are healthy; then GPU 5 runs hot, then XID 79 on GPU 3
XID_AT = 88
T0 = 1_800_000_000.0
GIB = 1 << 30


def host_stats(rng: random.Random) -> dict[str, Any]:
    ram_used = int((310 + rng.uniform(-3, 3)) * GIB)
    return {
        "cpu_percent": rng.uniform(8, 20),
        "ram_total_bytes": 2048 * GIB,
        "ram_used_bytes": ram_used,
        "ram_available_bytes": 2048 * GIB - ram_used,
        "shm_total_bytes": 1024 * GIB,
        "shm_used_bytes": int((60 + rng.uniform(-1, 1)) * GIB),
        "shm_free_bytes": int((964 + rng.uniform(-1, 1)) * GIB),
        "run_dir_total_bytes": 100 * 1024 * GIB,
        "run_dir_used_bytes": 60 * 1024 * GIB,
        "run_dir_free_bytes": 40 * 1024 * GIB,
    }


def recorded(host: str = "gpu-n1", limit: int | None = None, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    samples = samples_from_recording(RECORDING, host=host, start=T0, limit=limit)
    for s in samples:
        s["host_stats"] = host_stats(rng)
    return samples


def at_end(samples: list[dict[str, Any]]) -> float:
    return samples[-1]["time"] + 5.0


def keys(findings: list[Any]) -> set[str]:
    return {f.key for f in findings}


def by_rule(findings: list[Any], rule: str) -> list[Any]:
    return [f for f in findings if f.rule == rule]


@pytest.fixture(scope="module")
def full() -> list[dict[str, Any]]:
    return recorded()


@pytest.fixture
def healthy() -> list[dict[str, Any]]:
    return recorded(limit=HEALTHY)


# -- the recording itself ------------------------------------------------------------------------------------


def test_healthy_recording_raises_nothing_at_any_point() -> None:
    samples = recorded(limit=HEALTHY)
    for n in range(1, len(samples) + 1):
        assert evaluate({"gpu-n1": samples[:n]}, samples[n - 1]["time"] + 1.0) == [], f"at sample {n}"


def test_xid79_is_critical_and_names_node_and_gpu(full: list[dict[str, Any]]) -> None:
    samples = full[: XID_AT + 1]
    findings = evaluate({"gpu-n1": samples}, at_end(samples))
    xid = by_rule(findings, "G1-xid")
    assert len(xid) == 1
    f = xid[0]
    assert (f.severity, f.node, f.gpu, f.value) == ("critical", "gpu-n1", 3, 79)
    assert "XID 79" in f.message and "gpu-n1 GPU 3" in f.message and "reboot" in f.message


def test_lost_gpu_after_xid_is_critical(full: list[dict[str, Any]]) -> None:
    findings = evaluate({"gpu-n1": full}, at_end(full))
    lost = by_rule(findings, "G14-gpu-lost")
    assert [(f.severity, f.gpu) for f in lost] == [("critical", 3)]
    assert by_rule(findings, "G1-xid")[0].gpu == 3  # still within the hold time


def test_throttle_episode_on_gpu5(full: list[dict[str, Any]]) -> None:
    samples = full[:XID_AT]
    findings = evaluate({"gpu-n1": samples}, at_end(samples))
    got = {(f.rule, f.gpu, f.severity) for f in findings}
    assert ("G6-hw-slowdown", 5, "warn") in got
    assert ("G7-thermal", 5, "warn") in got
    assert ("G8-violation", 5, "warn") in got
    assert ("G13-straggler", 5, "warn") in got
    assert {f.gpu for f in findings} == {5}, "only the hot GPU is named"


def test_xid_expires_after_hold_time(full: list[dict[str, Any]]) -> None:
    samples = full[: XID_AT + 1]
    st = GpuRuleSettings(xid_hold_s=600)
    later = samples[-1]["time"] + 601 + 10
    assert not by_rule(evaluate({"gpu-n1": samples}, later, st), "G1-xid")


# -- planted events on the healthy recording -------------------------------------------------------------------


def set_gpu(samples: list[dict[str, Any]], gpu: int, last_n: int, **fields: Any) -> None:
    for s in samples[-last_n:]:
        for g in s["gpus"]:
            if g["index"] == gpu:
                g.update(fields)


def bump(samples: list[dict[str, Any]], gpu: int, key: str, amount: float, last_n: int = 1) -> None:
    for s in samples[-last_n:]:
        for g in s["gpus"]:
            if g["index"] == gpu:
                g[key] = (g.get(key) or 0) + amount


def only(findings: list[Any], rule: str) -> list[Any]:
    assert {f.rule for f in findings} == {rule}, [f.key for f in findings]
    return findings


@pytest.mark.parametrize(
    ("xid", "severity"),
    [(79, "critical"), (48, "critical"), (13, "warn"), (94, "warn"), (43, "info"), (999, "warn")],
)
def test_xid_classification(healthy: list[dict[str, Any]], xid: int, severity: str) -> None:
    healthy[-2]["xid_events"] = [{"time": healthy[-2]["time"], "gpu": 6, "xid": xid, "event_type": 8}]
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G1-xid")
    assert (f.severity, f.gpu, f.node) == (severity, 6, "gpu-n1")


def test_uncorrectable_ecc(healthy: list[dict[str, Any]]) -> None:
    set_gpu(healthy, 2, 1, DCGM_FI_DEV_ECC_DBE_VOL_TOTAL=1)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G2-ecc-uncorrectable")
    assert (f.severity, f.gpu) == ("critical", 2)


def test_correctable_ecc_rate(healthy: list[dict[str, Any]]) -> None:
    bump(healthy, 1, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", 60, last_n=20)
    bump(healthy, 1, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", 60, last_n=10)  # +120 within the window
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G3-ecc-correctable-rate")
    assert (f.severity, f.gpu, f.value) == ("warn", 1, 120)


def test_correctable_ecc_below_rate_is_quiet(healthy: list[dict[str, Any]]) -> None:
    bump(healthy, 1, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", 40, last_n=10)
    assert evaluate({"gpu-n1": healthy}, at_end(healthy)) == []


@pytest.mark.parametrize(
    ("fields", "severity", "suffix"),
    [
        ({"DCGM_FI_DEV_ROW_REMAP_FAILURE": 1}, "critical", "failure"),
        ({"DCGM_FI_DEV_ROW_REMAP_PENDING": 1}, "warn", "pending"),
        ({"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 512}, "warn", "uncorrectable"),
    ],
)
def test_row_remap(healthy: list[dict[str, Any]], fields: dict[str, int], severity: str, suffix: str) -> None:
    set_gpu(healthy, 4, 1, **fields)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G4-row-remap")
    assert (f.severity, f.gpu, f.key) == (severity, 4, f"G4-row-remap:gpu-n1:4:{suffix}")


def test_uncorrectable_remaps_below_limit_are_quiet(healthy: list[dict[str, Any]]) -> None:
    set_gpu(healthy, 4, 1, DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS=511)
    assert evaluate({"gpu-n1": healthy}, at_end(healthy)) == []


@pytest.mark.parametrize(("action", "severity"), [(1, "critical"), (2, "critical"), (3, "warn")])
def test_recovery_action(healthy: list[dict[str, Any]], action: int, severity: str) -> None:
    set_gpu(healthy, 0, 1, NVML_FI_DEV_GET_GPU_RECOVERY_ACTION=action)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G5-recovery-action")
    assert f.severity == severity and f.gpu == 0


def test_hw_slowdown_needs_six_of_ten_minutes(healthy: list[dict[str, Any]]) -> None:
    five = copy.deepcopy(healthy)
    # 4 samples a minute (15 s): the last 20 samples are the last 5 minutes
    set_gpu(five, 7, 20, DCGM_FI_DEV_CLOCKS_EVENT_REASONS=0x8)
    assert not evaluate({"gpu-n1": five}, five[-1]["time"] + 1)
    set_gpu(healthy, 7, 26, DCGM_FI_DEV_CLOCKS_EVENT_REASONS=0x80)
    (f,) = only(evaluate({"gpu-n1": healthy}, healthy[-1]["time"] + 1), "G6-hw-slowdown")
    assert f.gpu == 7 and f.value >= 6


def test_sw_power_cap_is_not_a_hw_slowdown(healthy: list[dict[str, Any]]) -> None:
    set_gpu(healthy, 7, 40, DCGM_FI_DEV_CLOCKS_EVENT_REASONS=0x4)
    assert not by_rule(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G6-hw-slowdown")


def test_thermal_uses_the_parts_own_thresholds(healthy: list[dict[str, Any]]) -> None:
    set_gpu(healthy, 1, 2, DCGM_FI_DEV_GPU_TEMP=84)  # slowdown 89 − 5
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G7-thermal")
    assert (f.severity, f.threshold) == ("warn", 84)
    set_gpu(healthy, 1, 2, DCGM_FI_DEV_GPU_TEMP=89)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G7-thermal")
    assert (f.severity, f.threshold) == ("critical", 89)
    # An H100-like part with a higher slowdown line: 89 °C is then only "near".
    set_gpu(healthy, 1, 2, DCGM_FI_DEV_SLOWDOWN_TEMP=95, DCGM_FI_DEV_GPU_MAX_OP_TEMP=87)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G7-thermal")
    assert f.severity == "warn"


def test_thermal_single_spike_is_debounced(healthy: list[dict[str, Any]]) -> None:
    set_gpu(healthy, 1, 1, DCGM_FI_DEV_GPU_TEMP=90)
    assert evaluate({"gpu-n1": healthy}, at_end(healthy)) == []


def test_hbm_over_mem_max_is_critical(healthy: list[dict[str, Any]]) -> None:
    set_gpu(healthy, 6, 2, DCGM_FI_DEV_MEMORY_TEMP=95)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G7-thermal")
    assert (f.severity, f.key) == ("critical", "G7-thermal:gpu-n1:6:hbm")


def test_thermal_violation_counter_growth(healthy: list[dict[str, Any]]) -> None:
    bump(healthy, 2, "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN", 2_000_000, last_n=1)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G8-violation")
    assert (f.severity, f.gpu) == ("warn", 2)


def test_power_cap_most_of_the_minute_is_info(healthy: list[dict[str, Any]]) -> None:
    for k, s in enumerate(healthy[-5:]):
        for g in s["gpus"]:
            if g["index"] == 0:
                g["DCGM_FI_DEV_POWER_VIOLATION"] += (k + 1) * 14_000_000  # 14 s of every 15 s
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G8-violation")
    assert (f.severity, f.key) == ("info", "G8-violation:gpu-n1:0:power")


def test_pcie_replays_over_dcgm_budget(healthy: list[dict[str, Any]]) -> None:
    quiet = copy.deepcopy(healthy)
    bump(quiet, 3, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", 16)
    assert evaluate({"gpu-n1": quiet}, at_end(quiet)) == []  # Gen4 x16 budget is 16/min
    bump(healthy, 3, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", 17)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G9-pcie-replay")
    assert (f.threshold, f.gpu) == (16, 3)


def test_nvlink_errors(healthy: list[dict[str, Any]]) -> None:
    replay = copy.deepcopy(healthy)
    bump(replay, 1, "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", 1)
    (f,) = only(evaluate({"gpu-n1": replay}, at_end(replay)), "G10-nvlink-errors")
    assert (f.severity, f.gpu) == ("critical", 1)
    crc = copy.deepcopy(healthy)
    bump(crc, 1, "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", 5)
    (f,) = only(evaluate({"gpu-n1": crc}, at_end(crc)), "G10-nvlink-errors")
    assert f.severity == "warn"
    bump(healthy, 1, "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", 15 * 150)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G10-nvlink-errors")
    assert f.severity == "critical"


def test_link_down(healthy: list[dict[str, Any]]) -> None:
    set_gpu(healthy, 5, 1, nvlink_links_up=11)
    set_gpu(healthy, 6, 1, DCGM_FI_DEV_PCIE_LINK_WIDTH=8)
    found = {
        (f.gpu, f.severity) for f in only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G11-link-down")
    }
    assert found == {(5, "critical"), (6, "warn")}


def test_gpu_memory_nearly_full_is_info(healthy: list[dict[str, Any]]) -> None:
    set_gpu(healthy, 0, 1, DCGM_FI_DEV_FB_USED=80_000)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G12-memory")
    assert (f.severity, f.key) == ("info", "G12-memory:gpu-n1:0:gpu")


def test_gpu_memory_creeping_projects_oom(healthy: list[dict[str, Any]]) -> None:
    # Peak memory on GPU 2 creeps 600 MiB a minute: ~7.5 GiB left fills within the 2 h horizon.
    for k, s in enumerate(healthy):
        for g in s["gpus"]:
            if g["index"] == 2:
                g["DCGM_FI_DEV_FB_USED"] = 66_000 + 10 * k * 15 + g["DCGM_FI_DEV_FB_USED"] % 100
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G12-memory")
    assert f.key == "G12-memory:gpu-n1:2:gpu-trend" and f.severity == "warn"


def test_host_ram(healthy: list[dict[str, Any]]) -> None:
    high = copy.deepcopy(healthy)
    high[-1]["host_stats"]["ram_used_bytes"] = int(0.95 * 2048 * GIB)
    (f,) = only(evaluate({"gpu-n1": high}, at_end(high)), "G12-memory")
    assert (f.key, f.severity) == ("G12-memory:gpu-n1:ram", "warn")
    # A leak of 8 GiB a minute from 1.2 TiB: out of memory in ~95 min → warn before it is "high".
    for k, s in enumerate(healthy):
        s["host_stats"]["ram_used_bytes"] = int((1200 + 8 * k / 4) * GIB)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G12-memory")
    assert f.key == "G12-memory:gpu-n1:ram-trend"


def test_shm_and_run_disk_space(healthy: list[dict[str, Any]]) -> None:
    hs = healthy[-1]["host_stats"]
    hs["shm_free_bytes"] = int(0.05 * hs["shm_total_bytes"])
    hs["run_dir_free_bytes"] = 10 * GIB
    got = {(f.rule, f.severity) for f in evaluate({"gpu-n1": healthy}, at_end(healthy))}
    assert got == {("H1-shm-space", "warn"), ("H2-run-disk-space", "critical")}


def test_run_disk_filling_projects_full(healthy: list[dict[str, Any]]) -> None:
    # A checkpoint every ~3 minutes eating 2 TiB/h of 40 TiB free, as a staircase.
    for k, s in enumerate(healthy):
        used = (60 * 1024 + 36 * 1024 * (k // 12) / 4) * GIB
        s["host_stats"]["run_dir_used_bytes"] = int(used)
        s["host_stats"]["run_dir_free_bytes"] = int(100 * 1024 * GIB - used)
    st = GpuRuleSettings(trend_horizon_s=12 * 3600)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy), st), "H2-run-disk-space")
    assert f.key == "H2-run-disk-space:gpu-n1:trend"


def test_straggler_idle_gpu(healthy: list[dict[str, Any]]) -> None:
    set_gpu(healthy, 4, 44, DCGM_FI_DEV_GPU_UTIL=20)
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G13-straggler")
    assert f.gpu == 4 and f.metric == "DCGM_FI_DEV_GPU_UTIL"


def test_nccl_hang_signature_across_nodes() -> None:
    hosts = {}
    for h in ("n1", "n2", "n3", "n4"):
        samples = recorded(h, limit=HEALTHY)
        for s in samples[-44:]:  # the last 11 minutes: 100 % and ~90 W on a 400 W limit
            for g in s["gpus"]:
                g.update(DCGM_FI_DEV_GPU_UTIL=100, DCGM_FI_DEV_POWER_USAGE=90.0)
        hosts[h] = samples
    now = at_end(hosts["n1"])
    (f,) = only(evaluate(hosts, now), "S2-nccl-hang")
    assert f.severity == "critical" and f.node is None and "32 of 32 GPUs" in f.message
    short = {h: s[:-8] for h, s in hosts.items()}  # 9 minutes of it is not yet a hang
    assert not by_rule(evaluate(short, at_end(short["n1"])), "S2-nccl-hang")


def test_agent_silent_but_not_after_a_clean_stop(healthy: list[dict[str, Any]]) -> None:
    last = healthy[-1]["time"]
    assert evaluate({"gpu-n1": healthy}, last + 44) == []  # 3 × 15 s not yet passed
    (f,) = only(evaluate({"gpu-n1": healthy}, last + 46), "S5-agent-silent")
    assert (f.severity, f.node) == ("warn", "gpu-n1")
    healthy[-1]["final"] = True
    assert evaluate({"gpu-n1": healthy}, last + 3600) == []


def test_no_driver_is_a_blind_agent_not_a_healthy_one() -> None:
    s = {
        "time": T0,
        "host": "n9",
        "seq": 0,
        "interval": 5,
        "gpus": [],
        "host_stats": {},
        "xid_events": [],
        "nvml_error": {"code": 9, "name": "DRIVER_NOT_LOADED", "message": "Driver Not Loaded"},
    }
    (f,) = evaluate({"n9": [s]}, T0 + 1)
    assert (f.rule, f.severity, f.node) == ("G14-gpu-lost", "warn", "n9")


def test_gpu_vanishing_from_the_list(healthy: list[dict[str, Any]]) -> None:
    healthy[-1]["gpus"] = [g for g in healthy[-1]["gpus"] if g["index"] != 7]
    (f,) = only(evaluate({"gpu-n1": healthy}, at_end(healthy)), "G14-gpu-lost")
    assert (f.gpu, f.severity) == (7, "critical")


def test_settings_from_yaml_section() -> None:
    st = build(
        GpuRuleSettings, {"ecc_sbe_per_hour": 50, "xid_critical": [79], "pcie_replay_per_min": None}, "gpu"
    )
    assert st.ecc_sbe_per_hour == 50.0 and st.xid_critical == (79,) and st.pcie_replay_per_min is None
    assert build(GpuRuleSettings, {"pcie_replay_per_min": 8}, "gpu").pcie_replay_per_min == 8.0
    for data, message in (
        ({"nope": 1}, "gpu.nope: unknown setting; known: "),
        ({"silent_intervals": "x"}, "gpu.silent_intervals: must be a number, got 'x'"),
        ({"silent_intervals": -1}, "gpu.silent_intervals: must be ≥ 0, got -1"),
        ({"temp_samples": 2.5}, "gpu.temp_samples: must be an integer, got 2.5"),
        ({"xid_critical": [79, "48"]}, "gpu.xid_critical[1]: must be an integer, got '48'"),
        ({"xid_warn": 13}, "gpu.xid_warn: must be a list of integers, got 13"),
    ):
        with pytest.raises(UserError) as err:
            build(GpuRuleSettings, data, "gpu")
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert GpuRuleSettings().history_s() >= GpuRuleSettings().trend_window_s


def test_sample_window_keeps_history_and_the_newest_sample(full: list[dict[str, Any]]) -> None:
    win = SampleWindow(history_s=300)
    win.add({"gpu-n1": full})
    kept = win.by_host(full[-1]["time"])["gpu-n1"]
    assert kept[0]["time"] >= full[-1]["time"] - 300 and kept[-1] is full[-1]
    assert len(win.by_host(full[-1]["time"] + 10_000)["gpu-n1"]) == 1  # a silent host stays visible
    assert rule_agent_silent(
        win.by_host(full[-1]["time"] + 10_000), full[-1]["time"] + 10_000, GpuRuleSettings()
    )


def test_thinned_window_raises_what_the_full_window_raises() -> None:
    """The daemon's window keeps every sample for the dense part only (10 min) and one per 30 s before it;
    replayed at 1 Hz for 30 min, with a RAM leak for the trend and the recording's XID, throttling and lost
    GPU, every evaluation finds exactly what the full window finds, in a fraction of the samples."""
    rng = random.Random(3)
    samples = samples_from_recording(RECORDING, host="gpu-n1", start=T0, interval=1.0, limit=None)
    while len(samples) < 1800:  # the recording's healthy part again, to fill half an hour
        more = samples_from_recording(
            RECORDING, host="gpu-n1", start=samples[-1]["time"] + 1, interval=1.0, limit=HEALTHY
        )
        samples += more
    samples = sorted(samples, key=lambda s: s["time"])[:1800]
    for k, s in enumerate(samples):
        s["host_stats"] = host_stats(rng)
        s["host_stats"]["ram_used_bytes"] = int((1200 + 8 * k / 60) * GIB)  # 8 GiB a minute
    st = GpuRuleSettings()
    full_win, thin_win = SampleWindow(st.history_s()), SampleWindow(st.history_s(), dense_s=st.dense_s())
    checked = 0
    for k in range(0, 1800, 60):
        batch = {"gpu-n1": samples[k : k + 60]}
        full_win.add(batch)
        thin_win.add(batch)
        now = samples[min(k + 59, 1799)]["time"] + 1
        full, thin = full_win.by_host(now), thin_win.by_host(now)
        assert keys(evaluate(thin, now, st)) == keys(evaluate(full, now, st)), now - T0
        checked += 1
    assert checked == 30 and len(thin["gpu-n1"]) < 0.5 * len(full["gpu-n1"])
    assert "G12-memory:gpu-n1:ram-trend" in keys(evaluate(thin, now, st))
