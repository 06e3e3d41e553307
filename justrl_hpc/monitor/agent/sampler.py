"""The node agent: one per node inside each chunk; samples GPUs and the host every interval into
RUN/telemetry/<host>.jsonl, one whole JSON line per sample, size-bounded with one rotated file.

    python -m justrl_hpc.monitor.agent --run-dir RUN [--interval 5] [--backend auto|nvml|none|replay:FILE]
    python -m justrl_hpc.monitor.agent --record FILE [--interval 5] [--count N]   # on a GPU machine

It only reads: it never touches the job, and a failure to sample is written down, not raised.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from justrl_hpc.core.errors import UserError, cli_entry
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.monitor.agent import nvml, replay

log = logging.getLogger("justrl_hpc.monitor.agent.sampler")

DEFAULT_MAX_BYTES = 64 << 20  # ~6 h of 8-GPU samples (~14 kB each) at 5 s; the .1 file keeps as much again


def default_host() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


@dataclass
class HostSampler:
    """psutil readings of the node. cpu_percent is measured between two calls, so the first is 0."""

    run_dir: Path
    shm: Path = Path("/dev/shm")
    _proc: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        psutil.cpu_percent(None)
        self._proc.cpu_percent(None)

    def sample(self) -> dict[str, Any]:
        import psutil

        vm = psutil.virtual_memory()
        out: dict[str, Any] = {
            "cpu_percent": psutil.cpu_percent(None),
            "ram_total_bytes": vm.total,
            "ram_used_bytes": vm.total - vm.available,  # what the OOM killer sees, unlike vm.used
            "ram_available_bytes": vm.available,
            "swap_used_bytes": psutil.swap_memory().used,
        }
        out["load1"], out["load5"], out["load15"] = (round(x, 2) for x in os.getloadavg())
        for prefix, path in (("shm", self.shm), ("run_dir", self.run_dir)):
            try:
                du = psutil.disk_usage(str(path))
            except OSError:
                out[f"{prefix}_total_bytes"] = out[f"{prefix}_used_bytes"] = out[f"{prefix}_free_bytes"] = (
                    None
                )
                continue
            out[f"{prefix}_total_bytes"], out[f"{prefix}_used_bytes"], out[f"{prefix}_free_bytes"] = (
                du.total,
                du.used,
                du.free,
            )
        out["agent_rss_bytes"] = self._proc.memory_info().rss
        out["agent_cpu_percent"] = self._proc.cpu_percent(None)
        return out


def build_sample(
    reading: nvml.Reading,
    host_stats: dict[str, Any],
    *,
    host: str,
    seq: int,
    now: float,
    interval: float,
    backend: str,
    job_id: str | None = None,
    final: bool = False,
) -> dict[str, Any]:
    """One telemetry line. Pure, so tests and benchmarks build the same lines the agent writes."""
    sample: dict[str, Any] = {
        "time": round(now, 3),
        "host": host,
        "job_id": job_id,
        "seq": seq,
        "interval": interval,
        "backend": backend,
        "gpus": reading.gpus,
        "host_stats": host_stats,
        "xid_events": reading.xid_events,
    }
    if reading.nvml_error is not None:
        sample["nvml_error"] = reading.nvml_error
    if final:
        sample["final"] = True  # a clean stop: silence after this is not an agent failure
    return sample


def samples_from_recording(
    path: Path,
    *,
    host: str,
    start: float,
    host_stats: dict[str, Any] | None = None,
    interval: float | None = None,
    job_id: str | None = "1000",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The telemetry lines an agent replaying `path` would have written from `start` on (recording time
    offsets kept, or a fixed `interval`); for tests and benchmarks."""
    header, readings = replay.load_recording(path)
    step = interval if interval is not None else float(header.get("interval", 5.0))
    out = []
    for seq, (offset, reading) in enumerate(readings[:limit]):
        now = start + (offset if interval is None else seq * interval)
        events = [
            {k: v for k, v in e.items() if k != "t"} | {"time": start + e.get("t", offset)}
            for e in reading.xid_events
        ]
        r = nvml.Reading(gpus=reading.gpus, nvml_error=reading.nvml_error, xid_events=events)
        out.append(
            build_sample(
                r,
                dict(host_stats or {}),
                host=host,
                seq=seq,
                now=now,
                interval=step,
                backend="replay",
                job_id=job_id,
            )
        )
    return out


class TelemetryFile:
    """Appends whole lines to <dir>/<host>.jsonl; past max_bytes it renames the file to .1 (replacing the
    older one) and starts a new one, so the disk use per node is bounded by about 2 × max_bytes."""

    def __init__(self, directory: Path, host: str, *, max_bytes: int = DEFAULT_MAX_BYTES, fsync: bool = True):
        self.path = directory / f"{host}.jsonl"
        self.max_bytes = max_bytes
        self.fsync = fsync
        directory.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()
        self._heal_torn_tail()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _heal_torn_tail(self) -> None:
        # A previous agent killed mid-write can leave a line without its newline; end it, so the torn
        # fragment stays one corrupt line and our first line is not glued onto it.
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                os.write(self._fd, b"\n")

    def write(self, sample: dict[str, Any]) -> None:
        data = (json.dumps(sample, separators=(",", ":"), default=str) + "\n").encode()
        size = os.fstat(self._fd).st_size
        if size > 0 and size + len(data) > self.max_bytes:
            self.rotate()
        # One write() of the whole line on an O_APPEND descriptor: a reader sees all of it or none of it
        # (except the end of the file while the write is in flight, which the tail leaves for next time).
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)

    def rotate(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._fd = self._open()

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class Agent:
    run_dir: Path
    backend: nvml.Backend
    host: str
    interval: float = 5.0
    max_bytes: int = DEFAULT_MAX_BYTES
    job_id: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, max_samples: int | None = None) -> int:
        """Sample until stopped (SIGTERM/SIGINT) or max_samples; the last line says it stopped cleanly."""
        out = TelemetryFile(RunPaths(self.run_dir).telemetry, self.host, max_bytes=self.max_bytes)
        host = HostSampler(self.run_dir)
        self.backend.open()
        seq = 0
        log.info(
            "agent started host=%s job=%s backend=%s interval=%ss file=%s",
            self.host,
            self.job_id,
            self.backend.name,
            self.interval,
            out.path,
        )
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                out.write(self._sample(host, seq))
                seq += 1
                if max_samples is not None and seq >= max_samples:
                    break
                # Fixed-rate schedule: a slow sample shortens the next wait instead of drifting.
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay < 0:
                    next_at = time.monotonic()
                    delay = 0
                self.stop.wait(delay)
            out.write(self._sample(host, seq, final=True))
        finally:
            self.backend.close()
            out.close()
        log.info("agent stopped host=%s job=%s samples=%d", self.host, self.job_id, seq)
        return 0

    def _sample(self, host: HostSampler, seq: int, final: bool = False) -> dict[str, Any]:
        try:
            reading = self.backend.sample()
        except Exception as exc:  # a backend bug must not kill the node's only eyes; it becomes data
            reading = nvml.Reading(
                nvml_error={
                    "code": None,
                    "name": "BACKEND_FAILED",
                    "message": f"{type(exc).__name__}: {exc}",
                    "where": "sample",
                }
            )
        return build_sample(
            reading,
            host.sample(),
            host=self.host,
            seq=seq,
            now=time.time(),
            interval=self.interval,
            backend=self.backend.name,
            job_id=self.job_id,
            final=final,
        )


def record(path: Path, *, interval: float, count: int | None, stop: threading.Event) -> int:
    """Record real NVML readings into what ReplayBackend replays (run this on a GPU machine)."""
    backend = nvml.NvmlBackend()
    backend.open()
    sample = backend.sample()
    if sample.nvml_error is not None and not sample.gpus:
        backend.close()
        raise UserError(
            f"NVML is not usable here ({sample.nvml_error['message']}); run --record on a GPU node",
            "--record",
        )
    rec = replay.Recorder(path, interval=interval, source="nvml", host=default_host(), inventory=backend.inventory())
    n = 0
    try:
        while not stop.is_set() and (count is None or n < count):
            rec.record(sample, time.time())
            n += 1
            if stop.wait(interval):
                break
            sample = backend.sample()
    finally:
        rec.close()
        backend.close()
    log.info("recorded %d readings of %d GPUs to %s", n, len(sample.gpus), path)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m justrl_hpc.monitor.agent", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--run-dir", type=Path, help="the run folder; samples go to RUN/telemetry/<host>.jsonl")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument(
        "--backend",
        default="auto",
        help="auto (NVML where the NVIDIA library exists), nvml, none, or replay:FILE",
    )
    p.add_argument(
        "--host", default=None, help="node name for the file (default: SLURMD_NODENAME or hostname)"
    )
    p.add_argument(
        "--max-mb",
        type=float,
        default=DEFAULT_MAX_BYTES / (1 << 20),
        help="rotate the telemetry file past this size (default 64)",
    )
    p.add_argument(
        "--count", type=int, default=None, help="stop after this many samples (default: until SIGTERM)"
    )
    p.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="FILE",
        help="record NVML readings to FILE for ReplayBackend instead of running as an agent",
    )
    return p.parse_args(argv)


def make_backend(spec: str) -> nvml.Backend:
    """`nvml`, `none`, `replay:FILE`, or `auto` (NVML where its library exists, else none)."""
    if spec == "nvml":
        return nvml.NvmlBackend()
    if spec == "none":
        return nvml.NoneBackend()
    if spec.startswith("replay:") and len(spec) > len("replay:"):
        # `{node}`: one recording per node (a test's bad node among good ones on the one-machine dev cluster).
        node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
        return replay.ReplayBackend(Path(spec.removeprefix("replay:").replace("{node}", node)))
    if spec == "auto":
        return nvml.AutoBackend()
    raise ValueError(spec)


def check_args(args: argparse.Namespace) -> nvml.Backend | None:
    if not args.interval > 0:
        raise UserError(f"must be > 0 seconds, got {args.interval}", "--interval")
    if args.count is not None and args.count < 1:
        raise UserError(f"must be ≥ 1, got {args.count}", "--count")
    if args.max_mb <= 0:
        raise UserError(f"must be > 0, got {args.max_mb}", "--max-mb")
    if args.record is not None:
        if not args.record.parent.is_dir():
            raise UserError(
                f"folder {args.record.parent} does not exist; create it or pick another FILE", "--record"
            )
        return None
    if args.run_dir is None:
        raise UserError("is required (the run folder the chunk runs in)", "--run-dir")
    if not args.run_dir.is_dir():
        raise UserError(f"{args.run_dir} is not a folder; pass the run folder", "--run-dir")
    try:
        backend = make_backend(args.backend)
    except ValueError:
        raise UserError(
            f"unknown backend {args.backend!r}; use auto, nvml, none or replay:FILE", "--backend"
        ) from None
    if isinstance(backend, replay.ReplayBackend):
        if not backend.path.is_file():
            raise UserError(f"recording {backend.path} not found", "--backend")
        try:
            backend.open()
        except (ValueError, json.JSONDecodeError) as exc:
            raise UserError(f"{exc}", "--backend") from None
    return backend


@cli_entry
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    args = parse_args(argv)
    backend = check_args(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.record is not None:
        return record(args.record, interval=args.interval, count=args.count, stop=stop)
    assert backend is not None
    agent = Agent(
        run_dir=args.run_dir,
        backend=backend,
        host=args.host or default_host(),
        interval=args.interval,
        max_bytes=int(args.max_mb * (1 << 20)),
        job_id=os.environ.get("SLURM_JOB_ID"),
        stop=stop,
    )
    return agent.run(max_samples=args.count)


if __name__ == "__main__":  # the longer path of `python -m justrl_hpc.monitor.agent` (__main__.py)
    sys.exit(main())
