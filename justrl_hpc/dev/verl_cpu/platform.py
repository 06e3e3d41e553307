"""verl's platform for a host without accelerators: device "cpu", gloo, Ray's GPU resource as a count."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from types import ModuleType
from typing import Any

import torch
from verl.plugin.platform import PlatformBase


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


class _Stream:
    """What verl's `with get_torch_device().stream(s)` and `current_stream().synchronize()` need."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _Event:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    record = synchronize = wait = _noop

    def query(self) -> bool:
        return True


def _device_module() -> ModuleType:
    """A `torch.cuda`-shaped module for the calls verl makes on its device module (no-ops on a CPU)."""
    mod = ModuleType("justrl_cpu_device")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mod.is_available = lambda: True  # type: ignore[attr-defined]
    mod.device_count = lambda: 1  # type: ignore[attr-defined]
    mod.current_device = lambda: 0  # type: ignore[attr-defined]
    mod.get_device_name = lambda *a: "cpu"  # type: ignore[attr-defined]
    mod.mem_get_info = lambda *a: (total, total)  # type: ignore[attr-defined]
    mod.get_rng_state = lambda *a: torch.get_rng_state()  # type: ignore[attr-defined]
    mod.set_rng_state = lambda state, *a: torch.set_rng_state(state)  # type: ignore[attr-defined]
    mod.manual_seed = mod.manual_seed_all = torch.manual_seed  # type: ignore[attr-defined]
    mod.Stream = _Stream  # type: ignore[attr-defined]
    mod.Event = _Event  # type: ignore[attr-defined]
    mod.stream = lambda s=None: _Stream()  # type: ignore[attr-defined]
    mod.current_stream = lambda *a: _Stream()  # type: ignore[attr-defined]
    for name in ("empty_cache", "synchronize", "set_device", "ipc_collect", "set_per_process_memory_fraction",
                 "reset_peak_memory_stats"):
        setattr(mod, name, _noop)
    for name in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
        setattr(mod, name, _zero)
    return mod


class CPUPlatform(PlatformBase):
    """Registered only when the suite asks (JUSTRL_VERL_CPU=1), and then verl's auto-detection picks it wherever
    its CUDA probe finds no GPU (the probe comes first), or where VERL_PLATFORM=cpu says so."""

    _module = _device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return self._module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Asked for by the environment (it is registered only then); every process of the run agrees, where a
        # CUDA check would differ between a GPU worker and a CPU-only actor on the same node.
        return True

    def current_device(self) -> str:  # type: ignore[override]
        # verl passes this to .to(...) and FSDP's device arguments: "cpu" is what those accept.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        """verl asks for this to build `f"cpu:gloo,{device}:{backend}"`, which on a CPU is
        `cpu:gloo,cpu:gloo`: torch refuses a device type named twice, and verl has no setting for the string.

        The workaround, kept here alone: verl evaluates this before its own `is_initialized()` check
        (`verl.utils.distributed.initialize_global_process_group_ray`), so inside a Ray worker whose
        rendezvous variables verl's `RayWorkerGroup` has set, the default group is created here with plain
        gloo, and verl then finds it initialized and goes on. It depends on that call order; a verl that
        reorders it fails loudly at init_process_group, never silently.
        """
        dist = torch.distributed
        if dist.is_available() and not dist.is_initialized() and "MASTER_ADDR" in os.environ \
                and "WORLD_SIZE" in os.environ and "RANK" in os.environ:
            dist.init_process_group(
                backend="gloo",
                rank=int(os.environ["RANK"]),
                world_size=int(os.environ["WORLD_SIZE"]),
                timeout=timedelta(seconds=int(os.environ.get("JUSTRL_GLOO_TIMEOUT_S", "1800"))),
            )
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):  # type: ignore[override]
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        # verl's ResourcePoolManager counts only GPU/NPU; the chunk starts Ray with a fake GPU count.
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
