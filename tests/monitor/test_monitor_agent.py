"""The node agent as a real process (replayed 8-GPU recording, and no GPU), its files, rotation and SIGTERM;
the telemetry tail over those files; the NVML backend against this machine's real (absent) NVML and, since
no GPU exists here, against a scripted NVML library behind pynvml's own functions and error classes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from justrl_hpc.monitor.agent import nvml, replay
from justrl_hpc.monitor.agent.sampler import TelemetryFile, build_sample
from justrl_hpc.monitor.sources.telemetry import TelemetryTail

REPO = Path(__file__).resolve().parents[2]
RECORDING = REPO / "tests" / "data" / "nvml_a800_8gpu.jsonl"


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "justrl_hpc.monitor.agent", *args]


def run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), SLURM_JOB_ID="4242")
    return subprocess.run(agent_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(s) for s in path.read_text().splitlines()]


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


# -- the agent process -------------------------------------------------------------------------------------------


def test_agent_replays_eight_gpus_with_xid_and_lost_gpu(tmp_path: Path) -> None:
    out = run_agent(
        "--run-dir",
        str(tmp_path),
        "--host",
        "gpu-n1",
        "--interval",
        "0.01",
        "--count",
        "92",
        "--backend",
        f"replay:{RECORDING}",
    )
    assert out.returncode == 0, out.stderr
    samples = lines(tmp_path / "telemetry" / "gpu-n1.jsonl")
    assert len(samples) == 93 and samples[-1]["final"] is True
    assert [s["seq"] for s in samples] == list(range(93))
    first = samples[0]
    assert first["host"] == "gpu-n1" and first["job_id"] == "4242" and first["backend"] == "replay"
    assert len(first["gpus"]) == 8 and set(nvml.GPU_KEYS) <= set(first["gpus"][0])
    assert first["gpus"][0]["DCGM_FI_DEV_SLOWDOWN_TEMP"] == 89
    assert {
        "ram_used_bytes",
        "ram_total_bytes",
        "shm_free_bytes",
        "run_dir_free_bytes",
        "load1",
        "cpu_percent",
        "agent_rss_bytes",
    } <= set(first["host_stats"])
    xids = [e for s in samples for e in s["xid_events"]]
    assert [(e["gpu"], e["xid"]) for e in xids] == [(3, 79)]
    assert samples[90]["nvml_error"]["name"] == "GPU_IS_LOST"
    assert samples[90]["gpus"][3]["nvml_error"] == "GPU_IS_LOST"


def test_agent_without_gpu_reports_the_host(tmp_path: Path) -> None:
    out = run_agent(
        "--run-dir",
        str(tmp_path),
        "--host",
        "cpu-n1",
        "--interval",
        "0.01",
        "--count",
        "3",
        "--backend",
        "none",
    )
    assert out.returncode == 0, out.stderr
    samples = lines(tmp_path / "telemetry" / "cpu-n1.jsonl")
    assert len(samples) == 4
    for s in samples:
        assert s["gpus"] == [] and "nvml_error" not in s and s["backend"] == "none"
        assert s["host_stats"]["ram_total_bytes"] > 0 and s["host_stats"]["run_dir_total_bytes"] > 0


def test_agent_auto_backend_on_a_machine_without_nvidia_library(tmp_path: Path) -> None:
    if _has_nvml():
        pytest.skip("this machine has an NVIDIA driver: auto picks NVML here")  # only on GPU hosts
    out = run_agent("--run-dir", str(tmp_path), "--host", "cpu-n2", "--interval", "0.01", "--count", "1")
    assert out.returncode == 0, out.stderr
    (s, _final) = lines(tmp_path / "telemetry" / "cpu-n2.jsonl")
    assert s["backend"] == "none" and s["gpus"] == [] and "no NVIDIA library" in out.stderr


def _has_nvml() -> bool:
    b = nvml.NvmlBackend()
    b.open()
    ok = not b.library_missing
    b.close()
    return ok


def test_agent_rotates_and_keeps_whole_lines(tmp_path: Path) -> None:
    out = run_agent(
        "--run-dir",
        str(tmp_path),
        "--host",
        "gpu-n1",
        "--interval",
        "0.005",
        "--count",
        "40",
        "--backend",
        f"replay:{RECORDING}",
        "--max-mb",
        "0.05",
    )
    assert out.returncode == 0, out.stderr
    tel = tmp_path / "telemetry"
    assert sorted(p.name for p in tel.iterdir()) == ["gpu-n1.jsonl", "gpu-n1.jsonl.1"]
    old, new = lines(tel / "gpu-n1.jsonl.1"), lines(tel / "gpu-n1.jsonl")
    seqs = [s["seq"] for s in old + new]
    assert seqs == list(range(seqs[0], 41)) and new[-1]["final"] is True
    for p in tel.iterdir():
        assert p.stat().st_size <= 0.05 * (1 << 20)


def test_agent_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        agent_cmd(
            "--run-dir",
            str(tmp_path),
            "--host",
            "n1",
            "--interval",
            "0.1",
            "--backend",
            f"replay:{RECORDING}",
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = tmp_path / "telemetry" / "n1.jsonl"
    try:
        wait_for(lambda: path.exists() and path.read_text().count("\n") >= 3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    samples = lines(path)
    assert samples[-1].get("final") is True and not any(s.get("final") for s in samples[:-1])
    assert "agent stopped host=n1" in err


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--interval", "0"], "--interval"),
        (["--backend", "gpu"], "--backend"),
        (["--backend", "replay:/nonexistent.jsonl"], "--backend"),
        (["--max-mb", "-1"], "--max-mb"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], field: str) -> None:
    out = run_agent("--run-dir", str(tmp_path), *args)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: {field}") and out.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_missing_run_dir_and_record_without_gpu(tmp_path: Path) -> None:
    out = run_agent("--run-dir", str(tmp_path / "nope"))
    assert out.returncode == 2 and out.stderr.startswith("error: --run-dir")
    if not _has_nvml():
        out = run_agent("--record", str(tmp_path / "rec.jsonl"), "--count", "1")
        assert out.returncode == 2 and "error: --record: NVML is not usable here" in out.stderr
        assert not (tmp_path / "rec.jsonl").exists()


# -- the telemetry tail ------------------------------------------------------------------------------------


def sample(seq: int, t: float = 1_800_000_000.0, **extra: Any) -> dict[str, Any]:
    return (
        build_sample(
            nvml.Reading(),
            {"cpu_percent": 1.0},
            host="n1",
            seq=seq,
            now=t + seq,
            interval=1.0,
            backend="none",
        )
        | extra
    )


def seqs(batch: Any, host: str = "n1") -> list[int]:
    return [s["seq"] for s in batch.samples.get(host, [])]


def test_tail_follows_rotation_without_loss_or_duplicates(tmp_path: Path) -> None:
    out = TelemetryFile(tmp_path, "n1", max_bytes=2000, fsync=False)
    tail = TelemetryTail(tmp_path)
    got: list[int] = []
    for seq in range(60):
        out.write(sample(seq))
        if seq % 7 == 0:  # polls between rotations (each file holds ~7 lines)
            got += seqs(tail.poll())
    got += seqs(tail.poll())
    assert got == list(range(60))
    assert (tmp_path / "n1.jsonl.1").exists()
    assert tail.last_seen()["n1"] == 1_800_000_059.0


def test_tail_reports_samples_lost_to_double_rotation(tmp_path: Path) -> None:
    out = TelemetryFile(tmp_path, "n1", max_bytes=1000, fsync=False)
    tail = TelemetryTail(tmp_path)
    out.write(sample(0))
    assert seqs(tail.poll()) == [0]
    for seq in range(1, 30):
        out.write(sample(seq))
    batch = tail.poll()
    assert batch.gaps and "rotated more than once" in batch.gaps[0]
    got = seqs(batch)
    assert got and got[-1] == 29 and got == sorted(got)


def test_tail_waits_for_a_torn_line_and_skips_a_corrupt_one(tmp_path: Path) -> None:
    path = tmp_path / "n1.jsonl"
    line0 = json.dumps(sample(0)) + "\n"
    line1 = json.dumps(sample(1))
    path.write_text(line0 + line1[:25])  # a write in flight
    tail = TelemetryTail(tmp_path)
    batch = tail.poll()
    assert seqs(batch) == [0] and batch.corrupt == []
    with open(path, "a") as fh:
        fh.write(
            line1[25:]
            + "\n"
            + '{"time": 1800000002, "host": "n1", "gpus": [\n'
            + json.dumps(sample(3))
            + "\n"
        )
    batch = tail.poll()
    assert seqs(batch) == [1, 3]
    (bad,) = batch.corrupt
    assert bad.host == "n1" and bad.offset == len(line0) + len(line1) + 1 and "not JSON" in bad.reason


def test_new_agent_ends_a_torn_tail_left_by_a_killed_one(tmp_path: Path) -> None:
    path = tmp_path / "n1.jsonl"
    path.write_text(json.dumps(sample(0)) + "\n" + json.dumps(sample(1))[:40])  # killed mid-write
    out = TelemetryFile(tmp_path, "n1", fsync=False)
    out.write(sample(0, t=1_800_000_100.0))
    batch = TelemetryTail(tmp_path).poll()
    assert len(batch.samples["n1"]) == 2 and len(batch.corrupt) == 1


def test_tail_state_round_trip_resumes_where_it_stopped(tmp_path: Path) -> None:
    out = TelemetryFile(tmp_path, "n1", fsync=False)
    for seq in range(5):
        out.write(sample(seq))
    tail = TelemetryTail(tmp_path)
    assert seqs(tail.poll()) == [0, 1, 2, 3, 4]
    saved = json.loads(json.dumps(tail.state()))  # as the engine stores it
    for seq in range(5, 8):
        out.write(sample(seq))
    out.write(sample(8, final=True))
    resumed = TelemetryTail.from_state(tmp_path, saved)
    assert resumed.last_seen() == {"n1": 1_800_000_004.0}
    assert seqs(resumed.poll()) == [5, 6, 7, 8]
    assert resumed.stopped_cleanly() == {"n1"}


def test_tail_reports_unterminated_end_of_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "n1.jsonl"
    path.write_text(json.dumps(sample(0)) + "\n" + json.dumps(sample(1))[:30])
    tail = TelemetryTail(tmp_path)
    assert seqs(tail.poll()) == [0]
    os.replace(path, tmp_path / "n1.jsonl.1")
    path.write_text(json.dumps(sample(2)) + "\n")
    batch = tail.poll()
    assert seqs(batch) == [2]
    assert len(batch.corrupt) == 1 and batch.corrupt[0].file == "n1.jsonl.1"


def test_tail_of_many_hosts_and_a_budget(tmp_path: Path) -> None:
    for host in ("n1", "n2"):
        out = TelemetryFile(tmp_path, host, fsync=False)
        for seq in range(10):
            out.write(sample(seq) | {"host": host})
    tail = TelemetryTail(tmp_path)
    first = tail.poll(max_bytes_per_host=1000)
    assert set(first.samples) == {"n1", "n2"} and 0 < len(first.samples["n1"]) < 10
    rest = tail.poll()
    assert [s["seq"] for s in first.samples["n2"] + rest.samples["n2"]] == list(range(10))


# -- recordings ------------------------------------------------------------------------------------------------------


def test_recorder_round_trip_is_lossless(tmp_path: Path) -> None:
    header, readings = replay.load_recording(RECORDING)
    assert header["format"] == replay.RECORDING_FORMAT and len(readings) == 96
    rec = replay.Recorder(tmp_path / "copy.jsonl", interval=15.0, source="test", host="h")
    for t, r in readings:
        events = [{k: v for k, v in e.items() if k != "t"} | {"time": 1000.0 + e["t"]} for e in r.xid_events]
        rec.record(nvml.Reading(gpus=r.gpus, nvml_error=r.nvml_error, xid_events=events), 1000.0 + t)
    rec.close()
    _, again = replay.load_recording(tmp_path / "copy.jsonl")
    assert [(t, r.gpus, r.nvml_error, r.xid_events) for t, r in again] == [
        (t, r.gpus, r.nvml_error, r.xid_events) for t, r in readings
    ]
    assert (tmp_path / "copy.jsonl").stat().st_size < 250_000  # sparse lines keep fixtures small


# -- the NVML backend --------------------------------------------------------------------------------------------------


def test_nvml_backend_without_driver_reports_instead_of_crashing() -> None:
    if _has_nvml():
        pytest.skip("this machine has an NVIDIA driver")  # only on GPU hosts
    b = nvml.NvmlBackend()
    b.open()
    r = b.sample()
    assert r.gpus == [] and r.nvml_error is not None and r.nvml_error["name"] == "LIBRARY_NOT_FOUND"
    b.close()
    auto = nvml.AutoBackend()
    auto.open()
    assert auto.name == "none" and auto.sample() == nvml.Reading()


class ScriptedNvml:
    """NVML for two A800s, scripted behind pynvml's real module: its constants, error classes and field-value
    structures stay real; only the C library calls are answered here (this machine has no GPU)."""

    def __init__(self, nv: Any) -> None:
        self.nv = nv
        self.lost: set[int] = set()
        self.events: queue.Queue[Any] = queue.Queue()
        self.init_error: int | None = None

    def install(self, mp: pytest.MonkeyPatch) -> None:
        nv = self.nv

        def dev(fn: Any) -> Any:
            def call(h: int, *a: Any) -> Any:
                if h in self.lost:
                    raise nv.NVMLError(nv.NVML_ERROR_GPU_IS_LOST)
                return fn(h, *a)

            return call

        def init() -> None:
            if self.init_error is not None:
                raise nv.NVMLError(self.init_error)

        def not_supported(*_: Any) -> Any:
            raise nv.NVMLError(nv.NVML_ERROR_NOT_SUPPORTED)

        def no_function(*_: Any) -> Any:
            raise nv.NVMLError(nv.NVML_ERROR_FUNCTION_NOT_FOUND)

        def ecc(h: int, etype: int, counter: int) -> int:
            if h == 1:
                raise nv.NVMLError(nv.NVML_ERROR_NOT_SUPPORTED)
            return {(0, 0): 3, (1, 0): 0, (0, 1): 41, (1, 1): 0}[(etype, counter)]

        def nvlink_state(h: int, link: int) -> int:
            if link >= 12:
                raise nv.NVMLError(nv.NVML_ERROR_INVALID_ARGUMENT)
            return 1

        def field_values(h: int, ids: list[int]) -> Any:
            arr = (nv.c_nvmlFieldValue_t * len(ids))()
            for i, fid in enumerate(ids):
                arr[i].fieldId = fid
                if fid == 230:  # recovery action needs driver ≥ 570: this one is older
                    arr[i].nvmlReturn = nv.NVML_ERROR_NOT_SUPPORTED
                    continue
                arr[i].nvmlReturn = nv.NVML_SUCCESS
                arr[i].valueType = nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                arr[i].value.ullVal = {74: 5_000_000_000, 82: 67}.get(fid, 0)
            return arr

        def wait(_set: Any, ms: int) -> Any:
            try:
                return self.events.get(timeout=ms / 1000)
            except queue.Empty:
                raise nv.NVMLError(nv.NVML_ERROR_TIMEOUT) from None

        calls = {
            "nvmlInit": init,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: 2,
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetIndex": lambda h: h,
            "nvmlDeviceGetUUID": dev(lambda h: f"GPU-0000000{h}-aaaa-bbbb-cccc-dddddddddddd"),
            "nvmlDeviceGetName": dev(lambda h: b"NVIDIA A800-SXM4-80GB"),
            "nvmlDeviceGetPciInfo": dev(lambda h: SimpleNamespace(busId=f"0000:0{h}:00.0".encode())),
            "nvmlDeviceGetTemperatureThreshold": dev(lambda h, w: {0: 92, 1: 89, 2: 95, 3: 85}[w]),
            "nvmlDeviceGetMaxPcieLinkGeneration": dev(lambda h: 4),
            "nvmlDeviceGetMaxPcieLinkWidth": dev(lambda h: 16),
            "nvmlDeviceGetNvLinkState": dev(nvlink_state),
            "nvmlDeviceGetUtilizationRates": dev(lambda h: SimpleNamespace(gpu=97, memory=40)),
            "nvmlDeviceGetMemoryInfo": dev(lambda h: SimpleNamespace(used=70_000 << 20, total=81_920 << 20)),
            "nvmlDeviceGetTemperatureV": dev(no_function),
            "nvmlDeviceGetTemperature": dev(lambda h, s: 61),
            "nvmlDeviceGetPowerUsage": dev(lambda h: 301_500),
            "nvmlDeviceGetEnforcedPowerLimit": dev(lambda h: 400_000),
            "nvmlDeviceGetTotalEnergyConsumption": dev(lambda h: 123_456),
            "nvmlDeviceGetClockInfo": dev(lambda h, c: 1410 if c == nv.NVML_CLOCK_SM else 1593),
            "nvmlDeviceGetCurrentClocksEventReasons": dev(no_function),
            "nvmlDeviceGetCurrentClocksThrottleReasons": dev(lambda h: 0x4),
            "nvmlDeviceGetTotalEccErrors": dev(ecc),
            "nvmlDeviceGetRemappedRows": dev(lambda h: (2, 0, 0, 0)),
            "nvmlDeviceGetPcieReplayCounter": dev(lambda h: 1),
            "nvmlDeviceGetCurrPcieLinkGeneration": dev(lambda h: 4),
            "nvmlDeviceGetCurrPcieLinkWidth": dev(lambda h: 16),
            "nvmlDeviceGetFieldValues": dev(field_values),
            "nvmlEventSetCreate": lambda: "event-set",
            "nvmlEventSetFree": lambda s: None,
            "nvmlDeviceGetSupportedEventTypes": dev(lambda h: nv.nvmlEventTypeXidCriticalError | 0x1),
            "nvmlDeviceRegisterEvents": dev(lambda h, mask, s: None),
            "nvmlEventSetWait_v2": wait,
            "nvmlDeviceGetMarginTemperature": not_supported,
        }
        for name, fn in calls.items():
            mp.setattr(nv, name, fn)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedNvml:
    import pynvml

    s = ScriptedNvml(pynvml)
    s.install(monkeypatch)
    return s


def test_nvml_backend_reads_every_field_and_marks_na(scripted: ScriptedNvml) -> None:
    b = nvml.NvmlBackend()
    b.open()
    try:
        r = b.sample()
    finally:
        b.close()
    assert r.nvml_error is None and len(r.gpus) == 2
    g0, g1 = r.gpus
    assert set(nvml.GPU_KEYS) <= set(g0)
    assert (
        g0["DCGM_FI_DEV_SLOWDOWN_TEMP"],
        g0["DCGM_FI_DEV_GPU_MAX_OP_TEMP"],
        g0["DCGM_FI_DEV_MEM_MAX_OP_TEMP"],
    ) == (89, 85, 95)
    assert g0["DCGM_FI_DEV_GPU_TEMP"] == 61  # via the deprecated call when TemperatureV is missing
    assert g0["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"] == 0x4  # via the throttle-reasons fallback
    assert (g0["DCGM_FI_DEV_POWER_USAGE"], g0["DCGM_FI_DEV_ENFORCED_POWER_LIMIT"]) == (301.5, 400.0)
    assert (g0["DCGM_FI_DEV_FB_USED"], g0["DCGM_FI_DEV_FB_TOTAL"]) == (70_000, 81_920)
    assert g0["DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"] == 3 and g0["DCGM_FI_DEV_ECC_SBE_AGG_TOTAL"] == 41
    assert g1["DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"] is None  # NotSupported → n/a, not a crash
    assert g0["DCGM_FI_DEV_POWER_VIOLATION"] == 5_000_000  # ns → µs as DCGM reports it
    assert g0["DCGM_FI_DEV_MEMORY_TEMP"] == 67
    assert g0["NVML_FI_DEV_GET_GPU_RECOVERY_ACTION"] is None
    assert g0["nvlink_links_up"] == 12 and g0["nvlink_links_at_start"] == 12
    assert g0["DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"] == 2 and g0["DCGM_FI_DEV_ROW_REMAP_FAILURE"] == 0
    assert g0["name"] == "NVIDIA A800-SXM4-80GB" and g0["pci_bus_id"] == "0000:00:00.0"


def test_nvml_backend_xid_thread_and_lost_gpu(scripted: ScriptedNvml) -> None:
    b = nvml.NvmlBackend()
    b.open()
    try:
        assert b.xid_watch == "on (2 GPUs)"
        scripted.events.put(SimpleNamespace(device=1, eventType=8, eventData=79))
        wait_for(lambda: b._xid_pending)  # the waiting thread, not the sampler, receives it
        scripted.lost.add(1)
        r = b.sample()
        assert [(e["gpu"], e["xid"]) for e in r.xid_events] == [(1, 79)]
        assert r.gpus[1]["nvml_error"] == "GPU_IS_LOST" and r.gpus[1]["DCGM_FI_DEV_GPU_UTIL"] is None
        assert r.gpus[1]["DCGM_FI_DEV_XID_ERRORS"] == 79 and r.gpus[0]["DCGM_FI_DEV_GPU_UTIL"] == 97
        assert r.nvml_error is not None and r.nvml_error["name"] == "GPU_IS_LOST" and r.nvml_error["gpu"] == 1
        assert b.sample().xid_events == []  # each event is reported once
    finally:
        b.close()


def test_nvml_backend_driver_not_loaded_is_a_sample(scripted: ScriptedNvml) -> None:
    import pynvml

    scripted.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    auto = nvml.AutoBackend()
    auto.open()  # the library exists but the driver fails: stay on NVML and say so
    r = auto.sample()
    assert auto.name == "nvml" and r.gpus == [] and r.nvml_error is not None
    assert r.nvml_error["name"] == "DRIVER_NOT_LOADED"
    auto.close()
