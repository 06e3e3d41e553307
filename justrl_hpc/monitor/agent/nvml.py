"""GPU readings behind one small interface: real NVML (pynvml), or nothing (a replayed recording is in
replay.py).

A reading is a list of per-GPU dicts keyed by dcgm-exporter field names (DCGM_FI_DEV_GPU_TEMP, …) so a site
that already scrapes dcgm-exporter can compare numbers, plus the XID events seen since the last reading and
the NVML error, if any. A field the GPU or driver does not support is None (n/a), never a crash, and so is one
an older nvidia-ml-py has no function or constant for (11.525 lacks nvmlDeviceGetTemperatureV,
nvmlDeviceGetCurrentClocksEventReasons, NVML_FI_DEV_GET_GPU_RECOVERY_ACTION and NVML_VALUE_TYPE_UNSIGNED_SHORT);
NVML itself failing (no driver, GPU lost) is reported inside the reading, because a blind agent must not look
healthy.

Units follow DCGM: memory in MiB, power in W, clocks in MHz, temperatures in °C, violation and slowdown
counters in µs (cumulative), energy in mJ. Keys DCGM has no name for use the NVML field name
(NVML_FI_DEV_CLOCKS_EVENT_REASON_*, NVML_FI_DEV_GET_GPU_RECOVERY_ACTION) or a plain lower-case name
(nvlink_links_up, nvlink_links_at_start).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("justrl_hpc.monitor.agent.nvml")

# Counters read in one nvmlDeviceGetFieldValues call: NVML field id → (our key, divisor to DCGM's unit).
# 74/75 are the perf-policy violation counters (ns → µs, DCGM reports µs); 269–271 replace
# nvmlDeviceGetViolationStatus for the slowdown reasons; 38/45/52/59 are NVLink totals over all lanes.
FIELD_VALUES: dict[int, tuple[str, int]] = {
    74: ("DCGM_FI_DEV_POWER_VIOLATION", 1000),
    75: ("DCGM_FI_DEV_THERMAL_VIOLATION", 1000),
    269: ("NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN", 1000),
    270: ("NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN", 1000),
    271: ("NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN", 1000),
    38: ("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", 1),
    45: ("DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", 1),
    52: ("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", 1),
    59: ("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", 1),
    230: ("NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", 1),
    82: ("DCGM_FI_DEV_MEMORY_TEMP", 1),
}

# Every per-GPU key a reading carries (None where n/a). Kept in one place so the recording, the rules and
# the TensorBoard writer agree.
GPU_KEYS: tuple[str, ...] = (
    "index",
    "uuid",
    "name",
    "pci_bus_id",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_TOTAL",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_SLOWDOWN_TEMP",
    "DCGM_FI_DEV_SHUTDOWN_TEMP",
    "DCGM_FI_DEV_GPU_MAX_OP_TEMP",
    "DCGM_FI_DEV_MEM_MAX_OP_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_PENDING",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_PCIE_LINK_GEN",
    "DCGM_FI_DEV_PCIE_LINK_WIDTH",
    "DCGM_FI_DEV_PCIE_MAX_LINK_GEN",
    "DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH",
    "nvlink_links_up",
    "nvlink_links_at_start",
    *(key for key, _ in FIELD_VALUES.values()),
    "DCGM_FI_DEV_XID_ERRORS",
)


@dataclass
class Reading:
    """One sample of every GPU on the node."""

    gpus: list[dict[str, Any]] = field(default_factory=list)
    nvml_error: dict[str, Any] | None = None
    xid_events: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gpus": self.gpus, "xid_events": self.xid_events}
        if self.nvml_error is not None:
            out["nvml_error"] = self.nvml_error
        return out


class Backend(Protocol):
    """What the agent samples. open() never raises for a missing/broken NVML: the readings say so."""

    name: str

    def open(self) -> None: ...

    def sample(self) -> Reading: ...

    def inventory(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class NoneBackend:
    """No GPUs (a CPU node): readings are empty, and say nothing is wrong."""

    name = "none"

    def open(self) -> None:
        return None

    def sample(self) -> Reading:
        return Reading()

    def inventory(self) -> dict[str, Any]:
        return {"driver": None, "cuda": None, "gpus": []}

    def close(self) -> None:
        return None


def error_dict(exc: BaseException, where: str) -> dict[str, Any]:
    """An NVML failure as data. `name` is the NVML_ERROR_* suffix (GPU_IS_LOST, DRIVER_NOT_LOADED, …)."""
    code = getattr(exc, "value", None)
    name = _error_names().get(code, type(exc).__name__) if isinstance(code, int) else type(exc).__name__
    return {"code": code, "name": name, "message": str(exc), "where": where}


def _error_names() -> dict[int, str]:
    import pynvml

    return {
        getattr(pynvml, n): n.removeprefix("NVML_ERROR_") for n in dir(pynvml) if n.startswith("NVML_ERROR_")
    }


class GpuLost(Exception):
    """Raised inside one GPU's read when NVML says the GPU is lost: the rest of that GPU is skipped."""


class NvmlBackend:
    """Real NVML. Handles are opened once; XID events arrive on a dedicated thread (NVML has no history:
    an event that fires before registration is never seen, and several pending XIDs read as the last one)."""

    name = "nvml"
    retry_init_s = 60.0

    def __init__(self) -> None:
        self._pynvml: Any = None
        self._handles: list[Any] = []
        self._static: list[dict[str, Any]] = []
        self._links: list[list[int]] = []
        self._init_error: dict[str, Any] | None = None
        self._last_init_try = 0.0
        self._xid_lock = threading.Lock()
        self._xid_pending: list[dict[str, Any]] = []
        self._last_xid: dict[int, int] = {}
        self._stop = threading.Event()
        self._xid_thread: threading.Thread | None = None
        self._event_set: Any = None
        self.xid_watch: str = "off"

    # -- lifecycle -------------------------------------------------------------------------------------
    def open(self) -> None:
        self._try_init()

    def close(self) -> None:
        self._stop.set()
        if self._xid_thread is not None:
            self._xid_thread.join(timeout=3)
        nv = self._pynvml
        if nv is None or self._init_error is not None:
            return
        try:
            if self._event_set is not None:
                nv.nvmlEventSetFree(self._event_set)
            nv.nvmlShutdown()
        except nv.NVMLError as exc:
            log.warning("nvml shutdown failed: %s", exc)

    @property
    def init_error_name(self) -> str | None:
        """Why NVML could not start (LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED, …), or None."""
        return None if self._init_error is None else self._init_error.get("name")

    @property
    def library_missing(self) -> bool:
        return self.init_error_name == "LIBRARY_NOT_FOUND"

    def _try_init(self) -> None:
        self._last_init_try = time.monotonic()
        try:
            import pynvml
        except ImportError as exc:  # nvidia-ml-py not installed: same as no driver, as data
            self._init_error = {
                "code": None,
                "name": "PYNVML_NOT_INSTALLED",
                "message": str(exc),
                "where": "import",
            }
            return
        self._pynvml = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            self._init_error = error_dict(exc, "nvmlInit")
            return
        self._init_error = None
        self._static = [self._read_static(i, h) for i, h in enumerate(self._handles)]
        self._start_xid_thread()

    # -- what does not change while the agent runs -----------------------------------------------------
    def _read_static(self, index: int, h: Any) -> dict[str, Any]:
        nv = self._pynvml
        out: dict[str, Any] = {"index": index}
        out["uuid"] = _call(nv, lambda: _text(nv.nvmlDeviceGetUUID(h)))
        out["name"] = _call(nv, lambda: _text(nv.nvmlDeviceGetName(h)))
        out["pci_bus_id"] = _call(nv, lambda: _text(nv.nvmlDeviceGetPciInfo(h).busId))
        # Thresholds come from the part itself (A800, H100 and H200 differ); never hard-coded.
        for key, which in (
            ("DCGM_FI_DEV_SLOWDOWN_TEMP", "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN"),
            ("DCGM_FI_DEV_SHUTDOWN_TEMP", "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN"),
            ("DCGM_FI_DEV_GPU_MAX_OP_TEMP", "NVML_TEMPERATURE_THRESHOLD_GPU_MAX"),
            ("DCGM_FI_DEV_MEM_MAX_OP_TEMP", "NVML_TEMPERATURE_THRESHOLD_MEM_MAX"),
        ):
            out[key] = _call(nv, lambda w=which: nv.nvmlDeviceGetTemperatureThreshold(h, getattr(nv, w)))
        out["DCGM_FI_DEV_PCIE_MAX_LINK_GEN"] = _call(nv, lambda: nv.nvmlDeviceGetMaxPcieLinkGeneration(h))
        out["DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH"] = _call(nv, lambda: nv.nvmlDeviceGetMaxPcieLinkWidth(h))
        links: list[int] = []
        up = 0
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            state = _call(nv, lambda lk=link: nv.nvmlDeviceGetNvLinkState(h, lk), quiet=True)
            if state is None:
                continue
            links.append(link)
            up += int(state == nv.NVML_FEATURE_ENABLED)
        self._links.append(links)
        out["nvlink_links_at_start"] = up if links else None
        return out

    # -- XID events --------------------------------------------------------------------------------------
    def _start_xid_thread(self) -> None:
        nv = self._pynvml
        try:
            self._event_set = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            self.xid_watch = f"unavailable: {exc}"
            return
        registered = 0
        for h in self._handles:
            try:
                supported = nv.nvmlDeviceGetSupportedEventTypes(h)
                mask = supported & nv.nvmlEventTypeXidCriticalError
                if mask:
                    nv.nvmlDeviceRegisterEvents(h, mask, self._event_set)
                    registered += 1
            except nv.NVMLError as exc:
                log.warning("xid events not available on one GPU: %s", exc)
        if not registered:
            self.xid_watch = "unavailable: no GPU supports XID events"
            return
        self.xid_watch = f"on ({registered} GPUs)"
        self._xid_thread = threading.Thread(target=self._xid_loop, name="nvml-xid", daemon=True)
        self._xid_thread.start()

    def _xid_loop(self) -> None:
        nv = self._pynvml
        wait = getattr(nv, "nvmlEventSetWait_v2", None) or nv.nvmlEventSetWait  # the older bindings' name
        while not self._stop.is_set():
            try:
                data = wait(self._event_set, 1000)
            except nv.NVMLError_Timeout:
                continue
            except nv.NVMLError as exc:
                # GPU lost or driver gone: the sampler reports it; back off so this thread does not spin.
                log.warning("xid wait failed: %s", exc)
                self._stop.wait(5.0)
                continue
            try:
                gpu: int | None = nv.nvmlDeviceGetIndex(data.device)
            except nv.NVMLError:
                gpu = None
            event = {
                "time": time.time(),
                "gpu": gpu,
                "xid": int(data.eventData),
                "event_type": int(data.eventType),
            }
            with self._xid_lock:
                self._xid_pending.append(event)
                if gpu is not None:
                    self._last_xid[gpu] = event["xid"]

    def _drain_xids(self) -> list[dict[str, Any]]:
        with self._xid_lock:
            events, self._xid_pending = self._xid_pending, []
        return events

    # -- sampling --------------------------------------------------------------------------------------
    def sample(self) -> Reading:
        if self._init_error is not None:
            if time.monotonic() - self._last_init_try >= self.retry_init_s and not self.library_missing:
                self._try_init()
            if self._init_error is not None:
                return Reading(nvml_error=dict(self._init_error))
        nv = self._pynvml
        gpus: list[dict[str, Any]] = []
        first_error: dict[str, Any] | None = None
        for i, h in enumerate(self._handles):
            gpu = dict(self._static[i])
            try:
                self._read_dynamic(nv, h, i, gpu)
            except GpuLost as lost:
                gpu["nvml_error"] = "GPU_IS_LOST"
                first_error = first_error or {**error_dict(lost.args[0], "sample"), "gpu": i}
            with self._xid_lock:
                gpu["DCGM_FI_DEV_XID_ERRORS"] = self._last_xid.get(i, 0)
            gpus.append(gpu)
        return Reading(gpus=gpus, nvml_error=first_error, xid_events=self._drain_xids())

    def inventory(self) -> dict[str, Any]:
        """What the chunk's preflight asks once: driver and CUDA versions and, per GPU, the processes that hold
        it and the recovery action the driver asks for (NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, drivers ≥ 565)."""
        if self._init_error is not None:
            return {"driver": None, "cuda": None, "gpus": [], "nvml_error": dict(self._init_error)}
        nv = self._pynvml
        # _v2 asks the libcuda this process would load (a cuda-compat one on LD_LIBRARY_PATH counts).
        cuda = _call(nv, lambda: nv.nvmlSystemGetCudaDriverVersion_v2()) or _call(
            nv, lambda: nv.nvmlSystemGetCudaDriverVersion()
        )
        out: dict[str, Any] = {
            "driver": _call(nv, lambda: _text(nv.nvmlSystemGetDriverVersion())),
            "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}" if isinstance(cuda, int) else None,
            "gpus": [],
        }
        recovery_field = getattr(nv, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", None)
        for i, h in enumerate(self._handles):
            procs: list[dict[str, Any]] = []
            for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                for proc in _call(nv, lambda f=fn, h=h: getattr(nv, f)(h)) or []:
                    used = getattr(proc, "usedGpuMemory", None)
                    procs.append({"pid": int(proc.pid), "used_mib": used // 2**20 if isinstance(used, int) else None})
            action = None
            if recovery_field is not None:
                values = _call(nv, lambda h=h: nv.nvmlDeviceGetFieldValues(h, [recovery_field]), quiet=True)
                if values and int(values[0].nvmlReturn) == nv.NVML_SUCCESS:
                    action = _field_value(nv, values[0])
            static = self._static[i]
            out["gpus"].append({"index": i, "name": static.get("name"), "uuid": static.get("uuid"),
                                "processes": procs, "recovery_action": action})
        return out

    def _read_dynamic(self, nv: Any, h: Any, index: int, gpu: dict[str, Any]) -> None:
        def get(fn: Callable[[], Any]) -> Any:
            return _call(nv, fn, lost_raises=True)

        for key in GPU_KEYS:
            gpu.setdefault(key, None)
        util = get(lambda: nv.nvmlDeviceGetUtilizationRates(h))
        if util is not None:
            gpu["DCGM_FI_DEV_GPU_UTIL"], gpu["DCGM_FI_DEV_MEM_COPY_UTIL"] = util.gpu, util.memory
        mem = get(lambda: nv.nvmlDeviceGetMemoryInfo(h))
        if mem is not None:
            gpu["DCGM_FI_DEV_FB_USED"] = mem.used // (1 << 20)
            gpu["DCGM_FI_DEV_FB_TOTAL"] = mem.total // (1 << 20)
        gpu["DCGM_FI_DEV_GPU_TEMP"] = get(lambda: _gpu_temperature(nv, h))
        power = get(lambda: nv.nvmlDeviceGetPowerUsage(h))
        gpu["DCGM_FI_DEV_POWER_USAGE"] = None if power is None else round(power / 1000.0, 1)
        limit = get(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
        gpu["DCGM_FI_DEV_ENFORCED_POWER_LIMIT"] = None if limit is None else round(limit / 1000.0, 1)
        gpu["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] = get(lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h))
        gpu["DCGM_FI_DEV_SM_CLOCK"] = get(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        gpu["DCGM_FI_DEV_MEM_CLOCK"] = get(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM))
        gpu["DCGM_FI_DEV_CLOCKS_EVENT_REASONS"] = get(lambda: _clock_reasons(nv, h))
        for key, etype, counter in (
            ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC),
            ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC),
            ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_AGGREGATE_ECC),
            ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_AGGREGATE_ECC),
        ):
            gpu[key] = get(lambda e=etype, c=counter: nv.nvmlDeviceGetTotalEccErrors(h, e, c))
        rows = get(lambda: nv.nvmlDeviceGetRemappedRows(h))
        if rows is not None:
            corr, unc, pending, failure = rows
            gpu["DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"] = corr
            gpu["DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"] = unc
            gpu["DCGM_FI_DEV_ROW_REMAP_PENDING"] = int(bool(pending))
            gpu["DCGM_FI_DEV_ROW_REMAP_FAILURE"] = int(bool(failure))
        gpu["DCGM_FI_DEV_PCIE_REPLAY_COUNTER"] = get(lambda: nv.nvmlDeviceGetPcieReplayCounter(h))
        gpu["DCGM_FI_DEV_PCIE_LINK_GEN"] = get(lambda: nv.nvmlDeviceGetCurrPcieLinkGeneration(h))
        gpu["DCGM_FI_DEV_PCIE_LINK_WIDTH"] = get(lambda: nv.nvmlDeviceGetCurrPcieLinkWidth(h))
        links = self._links[index]
        if links:
            states = [get(lambda lk=lk: nv.nvmlDeviceGetNvLinkState(h, lk)) for lk in links]
            gpu["nvlink_links_up"] = sum(1 for s in states if s == nv.NVML_FEATURE_ENABLED)
        values = get(lambda: nv.nvmlDeviceGetFieldValues(h, list(FIELD_VALUES)))
        if values is not None:
            for fv in values:
                key, divisor = FIELD_VALUES[int(fv.fieldId)]
                if int(fv.nvmlReturn) == nv.NVML_SUCCESS:
                    raw = _field_value(nv, fv)
                    gpu[key] = raw if divisor == 1 or raw is None else int(raw) // divisor
                elif int(fv.nvmlReturn) == nv.NVML_ERROR_GPU_IS_LOST:
                    raise GpuLost(nv.NVMLError(nv.NVML_ERROR_GPU_IS_LOST))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gpu_temperature(nv: Any, h: Any) -> int:
    try:
        return int(nv.nvmlDeviceGetTemperatureV(h, nv.NVML_TEMPERATURE_GPU))
    except (nv.NVMLError_FunctionNotFound, nv.NVMLError_NotSupported, AttributeError):  # older driver/binding
        return int(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))


def _clock_reasons(nv: Any, h: Any) -> int:
    try:
        return int(nv.nvmlDeviceGetCurrentClocksEventReasons(h))
    except (nv.NVMLError_FunctionNotFound, AttributeError):  # older driver/binding: the name before 12.535
        return int(nv.nvmlDeviceGetCurrentClocksThrottleReasons(h))


# NVML's value types → the member of the value union that holds each (the later ones absent in older bindings).
_VALUE_MEMBERS = (
    ("NVML_VALUE_TYPE_DOUBLE", "dVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_INT", "uiVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG", "ulVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", "ullVal"),
    ("NVML_VALUE_TYPE_SIGNED_LONG_LONG", "sllVal"),
    ("NVML_VALUE_TYPE_SIGNED_INT", "siVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_SHORT", "usVal"),
)


def _field_value(nv: Any, fv: Any) -> float | int | None:
    kinds = {getattr(nv, name): member for name, member in _VALUE_MEMBERS if hasattr(nv, name)}
    member = kinds.get(int(fv.valueType))
    return None if member is None else getattr(fv.value, member, None)


def _call(nv: Any, fn: Callable[[], Any], *, lost_raises: bool = False, quiet: bool = False) -> Any:
    """One NVML call → its value, or None for n/a. A lost GPU aborts that GPU's read (lost_raises)."""
    try:
        return fn()
    except (nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound):
        return None
    except AttributeError:  # a function or constant this nvidia-ml-py predates: n/a, like one the driver lacks
        return None
    except nv.NVMLError_GpuIsLost as exc:
        if lost_raises:
            raise GpuLost(exc) from None
        return None
    except nv.NVMLError as exc:
        # Other failures (no permission, invalid argument for an absent link, …) are n/a for this field;
        # they are logged at debug level only, since they repeat every sample.
        if not quiet:
            log.debug("nvml call failed: %s", exc)
        return None


class AutoBackend:
    """NVML if the node has the NVIDIA library at all; a node without it (the CPU dev cluster) is a node
    without GPUs. A node *with* the library whose driver fails stays on NVML and reports the error."""

    def __init__(self) -> None:
        self._inner: Backend = NvmlBackend()
        self.name = "nvml"

    def open(self) -> None:
        self._inner.open()
        if isinstance(self._inner, NvmlBackend) and self._inner.init_error_name in (
            "LIBRARY_NOT_FOUND",
            "PYNVML_NOT_INSTALLED",
        ):
            log.info("no NVIDIA library on this node: sampling the host only")
            self._inner = NoneBackend()
            self.name = "none"

    def sample(self) -> Reading:
        return self._inner.sample()

    def inventory(self) -> dict[str, Any]:
        return self._inner.inventory()

    def close(self) -> None:
        self._inner.close()
