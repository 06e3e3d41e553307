"""How fast does the monitor read verl's TensorBoard events, against TensorBoard's own reader and tbparse?

    python benchmarks/bench_tbreader.py [--steps 4380] [--tags 150] [--skip-others] [--json]

1. Writes one event file the size of the whole JustRL run (4,380 steps × 150 scalars with verl's metric
   names; `--steps 438` for a quick run), one Event per scalar with a simple_value, as verl's
   SummaryWriter.add_scalar writes them (same protobuf, same TFRecord framing).
2. Full load, each reader in a fresh subprocess (time from the reader's first call to its last point,
   peak RSS of the process = ru_maxrss, imports included): TBTail (every tag; the dashboard's tag list;
   protobuf decoding only; data CRCs skipped), tensorboard's EventAccumulator, tbparse.
3. Poll cost after one more step (150 events appended) with the file at 10 %, 50 % and 100 % of its size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# verl 0.9.1's metric names (ray_trainer / metric_utils / the V1 trainer), padded to --tags with the
# per-data-source validation and per-worker timing names verl adds.
VERL_TAGS = [
    "actor/entropy",
    "actor/pg_loss",
    "actor/pg_clipfrac",
    "actor/pg_clipfrac_lower",
    "actor/ppo_kl",
    "actor/grad_norm",
    "actor/lr",
    "critic/score/mean",
    "critic/score/max",
    "critic/score/min",
    "critic/rewards/mean",
    "critic/rewards/max",
    "critic/rewards/min",
    "critic/advantages/mean",
    "critic/advantages/max",
    "critic/advantages/min",
    "critic/returns/mean",
    "critic/returns/max",
    "critic/returns/min",
    "response_length/mean",
    "response_length/max",
    "response_length/min",
    "response_length/clip_ratio",
    "prompt_length/mean",
    "prompt_length/max",
    "prompt_length/min",
    "prompt_length/clip_ratio",
    "timing_s/step",
    "timing_s/gen",
    "timing_s/reward",
    "timing_s/old_log_prob",
    "timing_s/adv",
    "timing_s/update_actor",
    "timing_s/save_checkpoint",
    "timing_s/testing",
    "timing_per_token_ms/gen",
    "timing_per_token_ms/update_actor",
    "timing_per_token_ms/adv",
    "perf/total_num_tokens",
    "perf/time_per_step",
    "perf/throughput",
    "perf/max_memory_allocated_gb",
    "perf/max_memory_reserved_gb",
    "perf/cpu_memory_used_gb",
    "training/global_step",
    "training/epoch",
]
DASHBOARD_TAGS = 12  # len(view.TB_TAGS)


def tag_names(count: int) -> list[str]:
    names = list(VERL_TAGS)
    sources = ["aime24", "aime25", "amc23", "math500", "minerva", "olympiad", "gpqa", "livecode", "hmmt"]
    stats = ["acc/mean@32", "acc/std@32", "acc/best@32/mean", "acc/maj@32/mean", "reward/mean@32"]
    extra = [f"val-core/{s}/{m}" for s in sources for m in stats]
    extra += [f"val-aux/{s}/response_length/{m}" for s in sources for m in ("mean", "max", "min")]
    extra += [f"timing_s/worker_{i}/{p}" for i in range(32) for p in ("gen", "update")]
    names += extra
    return names[:count]


# -- writing ---------------------------------------------------------------------------------------------------


def _frame(data: bytes, crc: Any) -> bytes:
    from justrl_hpc.monitor.sources.tfrecord import masked

    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked(crc(header))) + data + struct.pack("<I", masked(crc(data)))


def write_events(path: Path, tags: list[str], steps: range, t0: float, append: bool = False) -> None:
    """What SummaryWriter.add_scalar writes (one Event per scalar), framed here with google-crc32c because
    tensorboard's RecordWriter CRCs in pure Python (~20 s for the whole run)."""
    import google_crc32c
    from tensorboard.compat.proto import event_pb2, summary_pb2

    rnd = random.Random(steps.start)
    crc = google_crc32c.value
    with open(path, "ab" if append else "wb") as fh:
        if not append:
            version = event_pb2.Event(wall_time=t0, file_version="brain.Event:2")
            fh.write(_frame(version.SerializeToString(), crc))
        for step in steps:  # one write per step: the writer's memory stays small
            wall = t0 + 296.0 * step
            out = []
            for i, tag in enumerate(tags):
                value = summary_pb2.Summary.Value(tag=tag, simple_value=rnd.random())
                summary = summary_pb2.Summary(value=[value])
                ev = event_pb2.Event(wall_time=wall + i * 1e-4, step=step, summary=summary)
                out.append(_frame(ev.SerializeToString(), crc))
            fh.write(b"".join(out))


# -- one reader in this process (the --measure child) --------------------------------------------------------


def measure(reader: str, logdir: Path) -> dict[str, Any]:
    t, cpu = time.perf_counter(), time.process_time()
    if reader.startswith("tbtail"):
        from justrl_hpc.monitor.dashboard.sources import TB_TAGS
        from justrl_hpc.monitor.sources.tensorboard import TBTail

        kwargs: dict[str, Any] = {}
        if reader == "tbtail-tags":
            kwargs["tags"] = list(TB_TAGS)
        if reader == "tbtail-protobuf":
            kwargs["fast_path"] = False
        if reader == "tbtail-nocrc":
            kwargs["check_data_crc"] = False
        tail = TBTail(logdir, **kwargs)
        result = tail.poll()
        points = sum(len(tail.series(tag)) for tag in tail.tags())
        corrupt = len(result.corrupt)
    elif reader == "event_accumulator":
        from tensorboard.backend.event_processing import event_accumulator as ea

        acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0})
        acc.Reload()
        points = sum(len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"])
        corrupt = 0
    elif reader == "tbparse":
        from tbparse import SummaryReader

        points = len(SummaryReader(str(logdir)).scalars)
        corrupt = 0
    else:
        raise SystemExit(f"error: --measure: unknown reader {reader!r}")
    seconds = time.perf_counter() - t
    return {
        "reader": reader,
        "seconds": round(seconds, 3),
        "cpu_s": round(time.process_time() - cpu, 3),
        "maxrss_mib": round(peak_rss_kib() / 1024, 1),
        "points": points,
        "corrupt": corrupt,
    }


def peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries the parent's high-water mark from
    fork across exec into ru_maxrss, which would charge the writer's memory to the reader."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_child(reader: str, logdir: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", reader, str(logdir)],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- poll cost ----------------------------------------------------------------------------------------------


def poll_cost(tmp: Path, tags: list[str], steps: int, fraction: float, repeats: int = 5) -> dict[str, Any]:
    from justrl_hpc.monitor.sources.tensorboard import TBTail

    logdir = tmp / f"poll-{int(fraction * 100)}"
    logdir.mkdir()
    path = logdir / "events.out.tfevents.1700000000.bench.1.0"
    n = max(1, int(steps * fraction))
    write_events(path, tags, range(1, n + 1), 1.7e9)
    tail = TBTail(logdir)
    tail.poll()
    times, idle = [], []
    for k in range(repeats):
        write_events(path, tags, range(n + 1 + k, n + 2 + k), 1.7e9, append=True)
        t = time.perf_counter()
        result = tail.poll()
        times.append(1000 * (time.perf_counter() - t))
        assert result.count == len(tags), result.count
        t = time.perf_counter()
        tail.poll()
        idle.append(1000 * (time.perf_counter() - t))
    return {
        "fraction": fraction,
        "file_mib": round(path.stat().st_size / (1 << 20), 1),
        "poll_ms_median": round(statistics.median(times), 2),
        "poll_ms_max": round(max(times), 2),
        "idle_poll_ms": round(statistics.median(idle), 3),
    }


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4380, help="training steps in the file (default 4380)")
    ap.add_argument("--tags", type=int, default=150, help="scalars per step (default 150)")
    ap.add_argument(
        "--skip-others", action="store_true", help="measure TBTail only (no EventAccumulator/tbparse)"
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--measure", nargs=2, metavar=("READER", "LOGDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return
    if args.steps < 10 or not 1 <= args.tags <= 400:
        print("error: --steps must be >= 10 and --tags 1..400", file=sys.stderr)
        raise SystemExit(2)
    tags = tag_names(args.tags)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        logdir = tmp / "full"
        logdir.mkdir()
        path = logdir / "events.out.tfevents.1700000000.bench.1.0"
        t = time.perf_counter()
        write_events(path, tags, range(1, args.steps + 1), 1.7e9)
        write_s = time.perf_counter() - t
        readers = ["tbtail", "tbtail-tags", "tbtail-protobuf", "tbtail-nocrc"]
        if not args.skip_others:
            readers += ["event_accumulator", "tbparse"]
        loads = [run_child(r, logdir) for r in readers]
        polls = [poll_cost(tmp, tags, args.steps, f) for f in (0.1, 0.5, 1.0)]
        result = {
            "machine": machine(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "steps": args.steps,
            "tags": len(tags),
            "events": args.steps * len(tags),
            "file_mib": round(path.stat().st_size / (1 << 20), 1),
            "write_s": round(write_s, 1),
            "loads": loads,
            "polls": polls,
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print_table(result)


def print_table(r: dict[str, Any]) -> None:
    print(f"machine: {r['machine']}; load average {r['load']}; {r['date']}")
    print(
        f"file: {r['steps']:,} steps × {r['tags']} scalars = {r['events']:,} events, {r['file_mib']} MiB "
        f"(written in {r['write_s']} s)"
    )
    print()
    print(
        "| reader (full load, fresh process, imports included) | wall s | CPU s | events/s (CPU) | peak RSS MiB | points |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for row in r["loads"]:
        rate = r["events"] / row["cpu_s"] if row["cpu_s"] else float("inf")
        print(
            f"| {row['reader']} | {row['seconds']:.2f} | {row['cpu_s']:.2f} | {rate / 1000:,.0f} k "
            f"| {row['maxrss_mib']:.0f} | {row['points']:,} |"
        )
    print()
    print("| file size | poll after one new step (150 events), median / max ms | idle poll ms |")
    print("|---|---:|---:|")
    for p in r["polls"]:
        print(
            f"| {p['fraction']:.0%} ({p['file_mib']} MiB) | {p['poll_ms_median']} / {p['poll_ms_max']} "
            f"| {p['idle_poll_ms']} |"
        )
    print()
    by = {row["reader"]: row for row in r["loads"]}
    ours, theirs = by["tbtail"], by.get("event_accumulator")
    print("| target | figure | met |")
    print("|---|---|---|")
    if theirs is not None:
        speedup = theirs["seconds"] / ours["seconds"]
        cpu_speedup = theirs["cpu_s"] / ours["cpu_s"]
        mem = ours["maxrss_mib"] / theirs["maxrss_mib"]
        print(
            f"| full load ≥ 5× faster than EventAccumulator (wall) | {speedup:.1f}× | {_met(speedup >= 5)} |"
        )
        print(
            f"| same, CPU time (fair on a shared machine) | {cpu_speedup:.1f}× | {_met(cpu_speedup >= 5)} |"
        )
        print(f"| peak memory ≤ ½ of EventAccumulator's | {mem:.2f}× | {_met(mem <= 0.5)} |")
    full = next(p for p in r["polls"] if p["fraction"] == 1.0)
    print(
        f"| one poll after one new step < 50 ms (full size) | {full['poll_ms_max']} ms max | {_met(full['poll_ms_max'] < 50)} |"
    )
    if theirs is not None and ours["points"] != theirs["points"]:
        print(f"\nWARNING: TBTail read {ours['points']:,} points, EventAccumulator {theirs['points']:,}")


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    main()
