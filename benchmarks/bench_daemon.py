"""What does `justrl-monitor daemon` cost while it watches a run, and how soon does an alert land?

    python benchmarks/bench_daemon.py [--seconds 30] [--interval 1] [--json]

The daemon runs as a real process (poll interval --interval) over a run folder that this script feeds as a
live run would: 4 hosts × 8 GPUs of replayed A800 telemetry (tests/data/nvml_a800_8gpu.jsonl) at 1 Hz, and
verl-named TensorBoard scalars (150 per step, one step every 5 s) written with tensorboard's EventFileWriter.
CPU % of one core and RSS are measured from outside with psutil after a warm-up. Then an XID is planted in
one host's telemetry and the time until its line is in RUN/alerts.jsonl is measured (target: ≤ interval + 1 s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from justrl_hpc.monitor.agent.sampler import samples_from_recording  # noqa: E402

RECORDING = REPO / "tests" / "data" / "nvml_a800_8gpu.jsonl"
HOSTS = [f"gpu-n{i}" for i in range(1, 5)]
GIB = 1 << 30
STATS = {
    "cpu_percent": 12.0,
    "ram_total_bytes": 2048 * GIB,
    "ram_used_bytes": 310 * GIB,
    "ram_available_bytes": 1738 * GIB,
    "shm_total_bytes": 1024 * GIB,
    "shm_used_bytes": 60 * GIB,
    "shm_free_bytes": 964 * GIB,
    "run_dir_total_bytes": 100 * 1024 * GIB,
    "run_dir_used_bytes": 60 * 1024 * GIB,
    "run_dir_free_bytes": 40 * 1024 * GIB,
}


class Feeder:
    def __init__(self, run: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.run = run
        (run / "telemetry").mkdir(parents=True)
        template = samples_from_recording(
            RECORDING, host="x", start=0.0, interval=1.0, limit=48, host_stats=STATS
        )
        self.template = template
        self.seq = 0
        self.tb = EventFileWriter(str(run / "tensorboard"))
        self.step = 0
        self.rng = random.Random(1)
        self.tags = [f"actor/extra_{i}" for i in range(143)] + [
            "actor/entropy",
            "actor/grad_norm",
            "actor/pg_loss",
            "critic/score/mean",
            "response_length/mean",
            "response_length/max",
            "timing_s/step",
        ]

    def telemetry(self, now: float, xid: bool = False) -> None:
        for host in HOSTS:
            s = dict(self.template[self.seq % len(self.template)], host=host, time=now, seq=self.seq)
            if xid and host == HOSTS[-1]:
                s["xid_events"] = [{"time": now, "gpu": 2, "xid": 79, "event_type": 8}]
            with open(self.run / "telemetry" / f"{host}.jsonl", "a") as fh:
                fh.write(json.dumps(s) + "\n")
        self.seq += 1

    def tb_step(self, now: float) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self.step += 1
        base = {"actor/entropy": 1.3, "actor/grad_norm": 0.5, "response_length/mean": 7000.0}
        for tag in self.tags:
            v = base.get(tag, 0.0) + self.rng.uniform(-0.01, 0.01)
            if tag == "timing_s/step":
                v = 5.0
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)])
            self.tb.add_event(event_pb2.Event(wall_time=now, step=self.step, summary=summary))
        self.tb.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument(
        "--history-s",
        type=int,
        default=60,
        help="telemetry written before the daemon starts (1800: the GPU rules' full window)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "bench-run"
        feeder = Feeder(run)
        cfg = Path(tmp) / "monitor.yaml"
        cfg.write_text(f"daemon:\n  interval_s: {args.interval}\n  slurm_every_s: 3600\n")
        t0 = time.time()
        for k in range(args.history_s):  # history before the daemon starts
            feeder.telemetry(t0 - args.history_s + k)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUSTRL_")} | {"PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "justrl_hpc.monitor.cli", "daemon", str(run), "--config", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        p = psutil.Process(proc.pid)
        end_warm = time.monotonic() + 5.0
        next_tb = 0.0
        beat = run / "monitor.heartbeat"
        # Imports, the cold read and the first cycle are start-up, not steady state.
        while time.monotonic() < end_warm or not beat.exists():
            feeder.telemetry(time.time())
            time.sleep(1.0)
        c0, m0 = p.cpu_times(), time.monotonic()
        rss: list[int] = []
        while time.monotonic() - m0 < args.seconds:
            now = time.time()
            feeder.telemetry(now)
            if time.monotonic() >= next_tb:
                feeder.tb_step(now)
                next_tb = time.monotonic() + 5.0
            rss.append(p.memory_info().rss)
            time.sleep(1.0)
        c1, m1 = p.cpu_times(), time.monotonic()
        # alert latency: an XID planted now → its line in alerts.jsonl
        planted = time.time()
        feeder.telemetry(planted, xid=True)
        latency = None
        deadline = time.monotonic() + 30
        path = run / "alerts.jsonl"
        while time.monotonic() < deadline:
            if path.exists() and '"G1-xid"' in path.read_text():
                latency = time.time() - planted
                break
            time.sleep(0.02)
        proc.terminate()
        proc.wait(20)
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        out: dict[str, Any] = {
            "gpus": 8 * len(HOSTS),
            "telemetry_hz": 1,
            "tb_steps": feeder.step,
            "tb_scalars_per_step": len(feeder.tags),
            "interval_s": args.interval,
            "seconds": round(m1 - m0, 1),
            "history_s_before_start": args.history_s,
            "cpu_percent_of_one_core": round(100 * cpu / (m1 - m0), 2),
            "rss_mib_max": round(max(rss) / (1 << 20), 1),
            "alert_latency_s": None if latency is None else round(latency, 2),
            "latency_target_s": args.interval + 1.0,
        }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
