"""The node agent's NVML reader under an older nvidia-ml-py: what the binding has no function or constant for is
n/a, never an AttributeError that ends the agent's sampling or the preflight.

nvidia-ml-py 11.525.150 (the binding of the R525/R535 era) lacks four names the reader uses; checked against
that wheel: nvmlDeviceGetTemperatureV, nvmlDeviceGetCurrentClocksEventReasons,
NVML_FI_DEV_GET_GPU_RECOVERY_ACTION and NVML_VALUE_TYPE_UNSIGNED_SHORT. The binding below is the installed one
without them; since this machine has no libnvidia-ml, its NVML calls answer from the recorded R535 A800 node
(tests/data/nvml_a800_8gpu_driver535.jsonl) and say NOT_SUPPORTED for anything else.
"""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path
from typing import Any

import pynvml
import pytest

from justrl_hpc.core.config_files import resolve
from justrl_hpc.jobs.train import preflight
from justrl_hpc.jobs.train.kernel_log import KernelXids
from justrl_hpc.monitor.agent import sampler
from justrl_hpc.monitor.agent.nvml import FIELD_VALUES, NvmlBackend
from justrl_hpc.monitor.agent.replay import ReplayBackend, load_recording

REPO = Path(__file__).resolve().parents[2]
DRIVER535 = REPO / "tests" / "data" / "nvml_a800_8gpu_driver535.jsonl"
OLD_LACKS = (
    "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetCurrentClocksEventReasons",
    "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION",
    "NVML_VALUE_TYPE_UNSIGNED_SHORT",
)
THRESHOLDS = {
    pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: "DCGM_FI_DEV_SLOWDOWN_TEMP",
    pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: "DCGM_FI_DEV_SHUTDOWN_TEMP",
    pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX: "DCGM_FI_DEV_GPU_MAX_OP_TEMP",
    pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX: "DCGM_FI_DEV_MEM_MAX_OP_TEMP",
}


def old_binding() -> tuple[types.ModuleType, list[dict[str, Any]], dict[str, Any]]:
    header, readings = load_recording(DRIVER535)
    gpus, inventory = readings[0][1].gpus, header["inventory"]
    nv = types.ModuleType("pynvml")
    nv.__dict__.update({k: v for k, v in vars(pynvml).items() if k not in OLD_LACKS})

    def unsupported(*_: Any) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    for name, value in list(vars(nv).items()):
        if name.startswith("nvml") and callable(value):
            setattr(nv, name, unsupported)

    def fields(h: int, ids: list[int]) -> list[Any]:
        out = []
        for fid in ids:
            key, divisor = FIELD_VALUES[fid]
            value = gpus[h].get(key) if fid != 230 else None  # R535 has no recovery-action field
            out.append(types.SimpleNamespace(
                fieldId=fid, valueType=pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                nvmlReturn=pynvml.NVML_SUCCESS if value is not None else pynvml.NVML_ERROR_NOT_SUPPORTED,
                value=types.SimpleNamespace(ullVal=(value or 0) * divisor)))
        return out

    major, minor = map(int, inventory["cuda"].split("."))
    nv.__dict__.update(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: gpus[h]["name"],
        nvmlDeviceGetUUID=lambda h: gpus[h]["uuid"],
        nvmlDeviceGetPciInfo=lambda h: types.SimpleNamespace(busId=gpus[h]["pci_bus_id"].encode()),
        nvmlDeviceGetTemperatureThreshold=lambda h, which: gpus[h][THRESHOLDS[which]],
        nvmlDeviceGetTemperature=lambda h, sensor: gpus[h]["DCGM_FI_DEV_GPU_TEMP"],
        nvmlDeviceGetCurrentClocksThrottleReasons=lambda h: gpus[h]["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"],
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(
            used=gpus[h]["DCGM_FI_DEV_FB_USED"] << 20, total=gpus[h]["DCGM_FI_DEV_FB_TOTAL"] << 20),
        nvmlDeviceGetFieldValues=fields,
        nvmlDeviceGetComputeRunningProcesses=lambda h: [],
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [],
        nvmlSystemGetDriverVersion=lambda: inventory["driver"],
        nvmlSystemGetCudaDriverVersion_v2=lambda: major * 1000 + minor * 10,
    )
    return nv, gpus, inventory


def test_an_older_binding_reads_what_it_can_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    nv, recorded, inventory = old_binding()
    assert not any(hasattr(nv, name) for name in OLD_LACKS)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    backend = NvmlBackend()
    backend.open()
    try:
        assert backend.init_error_name is None
        reading = backend.sample()
        assert reading.nvml_error is None and len(reading.gpus) == 8
        for got, want in zip(reading.gpus, recorded, strict=True):
            for key in ("DCGM_FI_DEV_GPU_TEMP",  # nvmlDeviceGetTemperature, the call before ...V
                        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",  # ...ThrottleReasons, the name before ...EventReasons
                        "DCGM_FI_DEV_THERMAL_VIOLATION", "DCGM_FI_DEV_POWER_VIOLATION", "DCGM_FI_DEV_FB_USED",
                        "DCGM_FI_DEV_SLOWDOWN_TEMP", "DCGM_FI_DEV_MEM_MAX_OP_TEMP"):
                assert got[key] == want[key], key
            assert got["NVML_FI_DEV_GET_GPU_RECOVERY_ACTION"] is None  # not supported: n/a
            assert got["DCGM_FI_DEV_POWER_USAGE"] is None  # not answered by this binding: n/a
        got_inventory = backend.inventory()
        assert {k: got_inventory[k] for k in ("driver", "cuda")} == {"driver": "535.183.01", "cuda": "12.2"}
        assert [g["recovery_action"] for g in got_inventory["gpus"]] == [None] * 8
        assert got_inventory["gpus"] == [{k: g[k] for k in ("index", "name", "uuid", "processes", "recovery_action")}
                                         for g in inventory["gpus"]]
    finally:
        backend.close()
    # and the preflight reads the node through it: eight healthy A800s under driver 535.183.01, CUDA 12.2
    resolved = resolve("justrl-deepseek-1.5b", "a800-4x8")
    checks = {k.name: k for k in preflight.check_gpus(resolved, NvmlBackend(), KernelXids())}
    assert all(k.ok for k in checks.values()) and checks["driver"].detail == "driver 535.183.01, CUDA 12.2"


def test_a_recording_carries_the_inventory_the_preflight_replays(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`--record` through the same binding: its header holds the driver's versions, so a replayed capture
    answers the preflight's driver and CUDA checks as the node did."""
    nv, _, inventory = old_binding()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    out = tmp_path / "node.jsonl"
    assert sampler.record(out, interval=0.01, count=2, stop=threading.Event()) == 0
    header, readings = load_recording(out)
    assert len(readings) == 2 and header["inventory"]["driver"] == "535.183.01"
    replayed = ReplayBackend(out)
    replayed.open()
    assert replayed.inventory() == header["inventory"]
    assert header["inventory"]["cuda"] == inventory["cuda"] == "12.2"
