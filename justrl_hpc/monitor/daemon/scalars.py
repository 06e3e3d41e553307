"""The monitor's own scalars (GPU temperature, utilisation, memory, power per node/GPU; host RAM and CPU;
firing alerts by severity) into RUN/tensorboard/monitor/.

Its own subfolder on purpose: TensorBoard reads one event file per folder at a time and stops reading the
older of two files written at once in one folder, so sharing verl's folder would hide one of the two.
Tags are grouped by metric (`gpu_temperature_c/<host>/gpu<i>`) so one chart compares every GPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from justrl_hpc.core.paths import RunPaths

GIB_PER_MIB = 1 / 1024

# (tag prefix, sample key, how the samples since the last write are combined, scale)
GPU_SCALARS: tuple[tuple[str, str, Callable[[list[float]], float], float], ...] = (
    ("gpu_temperature_c", "DCGM_FI_DEV_GPU_TEMP", max, 1.0),
    ("gpu_utilization_pct", "DCGM_FI_DEV_GPU_UTIL", statistics.fmean, 1.0),
    ("gpu_memory_used_gib", "DCGM_FI_DEV_FB_USED", max, GIB_PER_MIB),
    ("gpu_power_w", "DCGM_FI_DEV_POWER_USAGE", statistics.fmean, 1.0),
)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


class MonitorScalarWriter:
    def __init__(self, run_dir: Path, subdir: str = "monitor") -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.logdir = RunPaths(run_dir).tensorboard / subdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.logdir), flush_secs=30)

    def scalars(
        self, samples_by_host: Mapping[str, list[dict[str, Any]]], alert_counts: Mapping[str, int]
    ) -> dict[str, float]:
        """The tag → value map one write() records (max of temperature and memory, mean of utilisation
        and power over the samples given; host figures from the newest sample)."""
        out: dict[str, float] = {}
        for host, samples in sorted(samples_by_host.items()):
            per_gpu: dict[int, dict[str, list[float]]] = {}
            for s in samples:
                for g in s.get("gpus") or ():
                    idx = g.get("index")
                    if not isinstance(idx, int):
                        continue
                    slot = per_gpu.setdefault(idx, {})
                    for _, key, _, _ in GPU_SCALARS:
                        v = _num(g.get(key))
                        if v is not None:
                            slot.setdefault(key, []).append(v)
            for idx, slot in sorted(per_gpu.items()):
                for prefix, key, combine, scale in GPU_SCALARS:
                    if slot.get(key):
                        out[f"{prefix}/{host}/gpu{idx}"] = round(combine(slot[key]) * scale, 3)
            if samples:
                hs = samples[-1].get("host_stats") or {}
                used, total = _num(hs.get("ram_used_bytes")), _num(hs.get("ram_total_bytes"))
                if used is not None and total:
                    out[f"host_ram_used_pct/{host}"] = round(100.0 * used / total, 2)
                cpu = _num(hs.get("cpu_percent"))
                if cpu is not None:
                    out[f"host_cpu_pct/{host}"] = cpu
        for severity, count in sorted(alert_counts.items()):
            out[f"alerts_firing/{severity}"] = float(count)
        return out

    def write(
        self,
        samples_by_host: Mapping[str, list[dict[str, Any]]],
        alert_counts: Mapping[str, int],
        step_or_time: int | float,
    ) -> int:
        """Record one point per tag. An int is a step (wall time now); a float is a Unix time, used as the
        wall time and, in whole seconds, as the step. Returns the number of scalars written."""
        from tensorboard.compat.proto import event_pb2, summary_pb2

        if isinstance(step_or_time, float):
            wall, step = step_or_time, int(step_or_time)
        else:
            wall, step = time.time(), int(step_or_time)
        values = self.scalars(samples_by_host, alert_counts)
        if not values:
            return 0
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()]
        )
        self._writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))
        self._writer.flush()
        return len(values)

    def close(self) -> None:
        self._writer.close()
