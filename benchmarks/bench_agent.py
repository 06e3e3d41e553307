"""How light is the node agent, and what do the telemetry tail and the GPU rules cost the monitor?

    python benchmarks/bench_agent.py [--seconds 60] [--json]

1. The agent as a real process at 1 Hz with the replayed 8 × A800 recording (and, for comparison, with no
   GPU backend): CPU % of one core and RSS, measured from outside with psutil.
2. The monitor side for 4 nodes × 8 GPUs at 1 Hz over 10 minutes of data (2,400 lines): a cold poll of all
   of it, one gpu_rules.evaluate() over the whole window, and the steady state (one new line per node, then
   poll + evaluate), per cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import cycle
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from justrl_hpc.monitor.agent import nvml, replay  # noqa: E402
from justrl_hpc.monitor.agent.sampler import TelemetryFile, build_sample  # noqa: E402
from justrl_hpc.monitor.rules import gpu as gpu_rules  # noqa: E402
from justrl_hpc.monitor.sources.telemetry import SampleWindow, TelemetryTail  # noqa: E402

RECORDING = REPO / "tests" / "data" / "nvml_a800_8gpu.jsonl"
GIB = 1 << 30


def measure_agent(backend: str, seconds: float, run_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "justrl_hpc.monitor.agent",
            "--run-dir",
            str(run_dir),
            "--host",
            f"bench-{backend[:6]}",
            "--interval",
            "1",
            "--backend",
            backend,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    p = psutil.Process(proc.pid)
    time.sleep(3.0)  # imports and the first samples are start-up, not steady state
    t0, c0 = time.monotonic(), p.cpu_times()
    rss = []
    while time.monotonic() - t0 < seconds:
        rss.append(p.memory_info().rss)
        time.sleep(1.0)
    t1, c1 = time.monotonic(), p.cpu_times()
    proc.terminate()
    proc.wait(timeout=20)
    cpu_s = (c1.user - c0.user) + (c1.system - c0.system)
    lines = sum(1 for _ in open(next((run_dir / "telemetry").glob(f"bench-{backend[:6]}.jsonl"))))
    size = next((run_dir / "telemetry").glob(f"bench-{backend[:6]}.jsonl")).stat().st_size
    return {
        "backend": backend.split(":")[0],
        "seconds": round(t1 - t0, 1),
        "cpu_percent_of_one_core": round(100 * cpu_s / (t1 - t0), 2),
        "cpu_ms_per_sample": round(1000 * cpu_s / (t1 - t0), 2),
        "rss_mib_max": round(max(rss) / (1 << 20), 1),
        "bytes_per_line": round(size / max(lines, 1)),
        "mib_per_day_at_5s": round(size / max(lines, 1) * 86400 / 5 / (1 << 20), 1),
    }


def host_stats(k: int) -> dict[str, Any]:
    return {
        "cpu_percent": 12.0,
        "ram_total_bytes": 2048 * GIB,
        "ram_used_bytes": (300 + k % 7) * GIB,
        "shm_total_bytes": 1024 * GIB,
        "shm_used_bytes": 60 * GIB,
        "shm_free_bytes": 964 * GIB,
        "run_dir_total_bytes": 100 * 1024 * GIB,
        "run_dir_used_bytes": 60 * 1024 * GIB,
        "run_dir_free_bytes": 40 * 1024 * GIB,
        "load1": 20.0,
    }


def measure_monitor(directory: Path, nodes: int = 4, minutes: int = 10, cycles: int = 30) -> dict[str, Any]:
    _, readings = replay.load_recording(RECORDING)
    start = time.time() - minutes * 60
    hosts = [f"gpu-n{i + 1}" for i in range(nodes)]
    files = {h: TelemetryFile(directory, h, fsync=False) for h in hosts}
    streams = {h: cycle(r for _, r in readings) for h in hosts}

    def write(h: str, k: int) -> None:
        r = next(streams[h])
        files[h].write(
            build_sample(
                nvml.Reading(gpus=r.gpus),
                host_stats(k),
                host=h,
                seq=k,
                now=start + k,
                interval=1.0,
                backend="replay",
                job_id="1",
            )
        )

    n = minutes * 60
    for k in range(n):
        for h in hosts:
            write(h, k)
    total_bytes = sum(f.path.stat().st_size for f in files.values())
    rss0 = psutil.Process().memory_info().rss

    tail = TelemetryTail(directory)
    t = time.perf_counter()
    batch = tail.poll()
    cold_poll = time.perf_counter() - t
    window = SampleWindow(gpu_rules.GpuRuleSettings().history_s())
    window.add(batch.samples)
    now = start + n
    t = time.perf_counter()
    findings = gpu_rules.evaluate(window.by_host(now), now)
    cold_eval = time.perf_counter() - t
    rss1 = psutil.Process().memory_info().rss

    poll_ms, eval_ms = [], []
    for c in range(cycles):
        for h in hosts:
            write(h, n + c)
        now = start + n + c + 0.5
        t = time.perf_counter()
        b = tail.poll()
        window.add(b.samples)
        poll_ms.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        gpu_rules.evaluate(window.by_host(now), now)
        eval_ms.append(1000 * (time.perf_counter() - t))
    return {
        "nodes": nodes,
        "gpus_per_node": 8,
        "minutes": minutes,
        "lines": batch.count,
        "file_mib": round(total_bytes / (1 << 20), 1),
        "cold_poll_s": round(cold_poll, 3),
        "cold_evaluate_s": round(cold_eval, 3),
        "window_rss_mib": round((rss1 - rss0) / (1 << 20), 1),
        "findings_on_cold_evaluate": sorted({f.rule for f in findings}),
        "steady_poll_ms_median": round(statistics.median(poll_ms), 2),
        "steady_evaluate_ms_median": round(statistics.median(eval_ms), 1),
        "steady_evaluate_ms_max": round(max(eval_ms), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to watch each agent (default 60)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        result = {
            "machine": f"{psutil.cpu_count()} cores, Python {sys.version.split()[0]}",
            "agent": [
                measure_agent(f"replay:{RECORDING}", args.seconds, run),
                measure_agent("none", args.seconds, run),
            ],
            "monitor": measure_monitor(run / "monitor-telemetry"),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {result['machine']}")
    for a in result["agent"]:
        print(
            f"agent ({a['backend']:6s}, 1 Hz, {a['seconds']:.0f} s): {a['cpu_percent_of_one_core']:.2f} % of a core "
            f"({a['cpu_ms_per_sample']:.1f} ms CPU/sample), RSS ≤ {a['rss_mib_max']:.1f} MiB, "
            f"{a['bytes_per_line']} B/line ({a['mib_per_day_at_5s']} MiB/day at 5 s)"
        )
    m = result["monitor"]
    print(
        f"monitor, {m['nodes']} nodes × {m['gpus_per_node']} GPUs, {m['minutes']} min at 1 Hz "
        f"({m['lines']} lines, {m['file_mib']} MiB): cold poll {m['cold_poll_s']} s, cold evaluate "
        f"{m['cold_evaluate_s']} s, window ≈ {m['window_rss_mib']} MiB; steady per cycle: poll "
        f"{m['steady_poll_ms_median']} ms, evaluate {m['steady_evaluate_ms_median']} ms "
        f"(max {m['steady_evaluate_ms_max']} ms); rules firing on the replay: {m['findings_on_cold_evaluate']}"
    )


if __name__ == "__main__":
    main()
