"""Recorded real NVML readings, replayed behind the same interface as live NVML (nvml.Backend).

`python -m justrl_hpc.monitor.agent --record FILE` on a GPU node writes a recording (Recorder): a header
line, then one line per reading holding only the fields that changed. `--backend replay:FILE` makes the
agent sample from one (ReplayBackend), and tests and benchmarks load them (load_recording): that is how a
machine without a GPU exercises the agent and the GPU rules on what real GPUs reported
(tests/data/nvml_a800_8gpu.jsonl).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from justrl_hpc.monitor.agent.nvml import Reading

RECORDING_FORMAT = "justrl-nvml-recording"
RECORDING_VERSION = 1


class Recorder:
    """Writes what ReplayBackend replays: a header line, then one line per reading holding only the
    fields that changed since the previous line (counters and thresholds rarely do), so a recording of
    eight GPUs stays small enough for a test fixture."""

    def __init__(
        self, path: Path, *, interval: float, source: str, host: str, inventory: dict[str, Any] | None = None
    ) -> None:
        """`inventory`: the backend's (driver and CUDA versions, who holds each GPU), which ReplayBackend
        answers inventory() with, so the preflight's driver checks replay too."""
        self.path = path
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._prev: dict[int, dict[str, Any]] = {}
        self._t0: float | None = None
        header = {
            "format": RECORDING_FORMAT,
            "version": RECORDING_VERSION,
            "interval": interval,
            "source": source,
            "host": host,
            "recorded_at": time.time(),
        }
        if inventory is not None:
            header["inventory"] = inventory
        self._write(header)

    def record(self, reading: Reading, now: float) -> None:
        if self._t0 is None:
            self._t0 = now
        gpus = []
        for gpu in reading.gpus:
            idx = int(gpu["index"])
            prev = self._prev.get(idx, {})
            changed = {k: v for k, v in gpu.items() if k not in prev or prev[k] != v}
            changed["index"] = idx
            gpus.append(changed)
            self._prev[idx] = dict(gpu)
        line: dict[str, Any] = {"t": round(now - self._t0, 3), "gpus": gpus}
        if reading.nvml_error is not None:
            line["nvml_error"] = reading.nvml_error
        if reading.xid_events:
            line["xid_events"] = [
                {**e, "t": round(e.get("time", now) - self._t0, 3)} for e in reading.xid_events
            ]
            for e in line["xid_events"]:
                e.pop("time", None)
        self._write(line)

    def _write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def load_recording(path: Path) -> tuple[dict[str, Any], list[tuple[float, Reading]]]:
    """The header and the full readings (sparse lines merged) with their offsets in seconds."""
    lines = [json.loads(s) for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]
    if not lines or lines[0].get("format") != RECORDING_FORMAT:
        raise ValueError(f"{path} is not a {RECORDING_FORMAT} file (first line is not its header)")
    header, body = lines[0], lines[1:]
    state: dict[int, dict[str, Any]] = {}
    readings: list[tuple[float, Reading]] = []
    for line in body:
        gpus = []
        for part in line.get("gpus", []):
            merged = state.setdefault(int(part["index"]), {})
            merged.update(part)
            gpus.append(copy.deepcopy(merged))
        readings.append(
            (
                float(line["t"]),
                Reading(
                    gpus=gpus, nvml_error=line.get("nvml_error"), xid_events=list(line.get("xid_events", []))
                ),
            )
        )
    return header, readings


class ReplayBackend:
    """Replays a recording, one reading per sample() call, looping by default. XID events are re-stamped
    with the current time, so the agent and the rules see them as they would live."""

    name = "replay"

    def __init__(self, path: Path, *, loop: bool = True) -> None:
        self.path = Path(path)
        self.loop = loop
        self.header: dict[str, Any] = {}
        self._readings: list[tuple[float, Reading]] = []
        self._pos = 0

    def open(self) -> None:
        self.header, self._readings = load_recording(self.path)
        if not self._readings:
            raise ValueError(f"{self.path} holds no readings")

    def sample(self) -> Reading:
        if self._pos >= len(self._readings):
            if not self.loop:
                _, last = self._readings[-1]
                return Reading(gpus=copy.deepcopy(last.gpus), nvml_error=last.nvml_error)
            self._pos = 0
        _, reading = self._readings[self._pos]
        self._pos += 1
        now = time.time()
        events = [{k: v for k, v in e.items() if k != "t"} | {"time": now} for e in reading.xid_events]
        return Reading(
            gpus=copy.deepcopy(reading.gpus), nvml_error=copy.deepcopy(reading.nvml_error), xid_events=events
        )

    def inventory(self) -> dict[str, Any]:
        """The recording's `inventory` header entry (driver, CUDA, who held each GPU when it was recorded), or
        what its first reading shows: the GPUs, no versions, nobody holding them."""
        if "inventory" in self.header:
            return copy.deepcopy(self.header["inventory"])
        _, first = self._readings[0]
        gpus = [{"index": g.get("index"), "name": g.get("name"), "uuid": g.get("uuid"), "processes": [],
                 "recovery_action": None} for g in first.gpus]
        return {"driver": self.header.get("driver"), "cuda": self.header.get("cuda"), "gpus": gpus}

    def close(self) -> None:
        return None
