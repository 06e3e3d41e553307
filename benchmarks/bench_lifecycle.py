"""Chunk lifecycle on the dev cluster with the rehearsal trainer: overheads, requeue gap, steps lost.

    .venv/bin/python benchmarks/bench_lifecycle.py [--steps 80] [--time-limit 2]

Runs a real rehearsal launch (dev cluster, 2 nodes, real Slurm/submitit/Ray) to its target step and reads the
figures off its ledger. The naive way (the published approach: periodic saves every `save_freq` steps, no
save before the limit, the job killed at its wall clock) is computed from the same chunk ends: it loses the
steps trained since its last periodic save. Prints Markdown; benchmarks/run_all.sh appends it to BENCHMARKS.md.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from justrl_hpc.ledger import Ledger, parse_time  # noqa: E402


def chunks_of(events: list[dict]) -> list[dict]:
    out: list[dict] = []
    for e in events:
        if e["event"] == "started":
            out.append({"started": parse_time(e["time"]), "job": e["job_id"]})
        elif out:
            c = out[-1]
            t = parse_time(e["time"])
            if e["event"] in ("ray-ready", "trainer-started", "stop-requested", "requeued", "finished"):
                c.setdefault(e["event"], t)
            if e["event"] == "trainer-exited":
                c["trainer-exited"] = t
                c["exit"] = e
            if e["event"] == "step":
                c.setdefault("first_step_time", t)
                c["last_step"] = e["step"]
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--time-limit", type=int, default=2)
    p.add_argument("--naive-save-freq", type=int, default=10)
    p.add_argument("--from-run", type=Path, help="read a finished run folder instead of launching one")
    args = p.parse_args()
    if args.from_run:
        return report(args.from_run, args, wall=None)
    from justrl_hpc import devcluster
    from justrl_hpc.rehearsal.prepare import prepare

    devcluster.up()
    work = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    prepare(work / "data")
    run_dir = work / "runs" / "bench"
    cmd = [sys.executable, "-m", "justrl_hpc.launch", "--recipe", "rehearsal", "--cluster", "dev", "--nodes", "2",
           "--name", "bench", "--run-dir", str(run_dir), "--time-limit", str(args.time_limit), "--wait",
           "--set", f"recipe.model_path={work / 'data' / 'model'}",
           "--set", f"recipe.train_files=[{work / 'data' / 'train.parquet'}]",
           "--set", f"recipe.val_files=[{work / 'data' / 'val.parquet'}]",
           "--set", f"recipe.total_training_steps={args.steps}"]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.time() - t0
    if out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
        return 1
    return report(run_dir, args, wall)


def report(run_dir: Path, args: argparse.Namespace, wall: float | None) -> int:
    events = Ledger(run_dir).read()
    if wall is None:
        wall = parse_time(events[-1]["time"]) - parse_time(events[0]["time"])
    steps = max((e["step"] for e in events if e["event"] == "step"), default=0)
    chunks = chunks_of(events)
    rows = []
    for i, c in enumerate(chunks, 1):
        ex = c.get("exit", {})
        nxt = chunks[i]["started"] if i < len(chunks) else None
        lost = (ex.get("step") or 0) - (ex.get("last_saved") or 0) if ex.get("reason") == "stopped" else 0
        naive_lost = (c.get("last_step") or 0) % args.naive_save_freq if "requeued" in c else 0
        rows.append({
            "chunk": i,
            "ray_up_s": c.get("ray-ready", 0) - c["started"],
            "to_trainer_s": c.get("trainer-started", 0) - c["started"],
            "stop_to_requeue_s": (c["requeued"] - c["stop-requested"]) if "requeued" in c and "stop-requested" in c
            else None,
            "exit_to_end_s": (c.get("requeued") or c.get("finished") or 0) - c.get("trainer-exited", 0),
            "gap_s": (nxt - c["requeued"]) if nxt and "requeued" in c else None,
            "last_step": c.get("last_step"),
            "end": ex.get("reason"),
            "lost": lost,
            "naive_lost": naive_lost,
        })
    print(f"Rehearsal run {run_dir.name} of {steps} steps, 2 dev-cluster nodes: "
          f"{len(chunks)} chunks, {wall:.0f} s from submit to finished.\n")
    print("| chunk | Ray up s | alloc start → trainer start s | stop → requeued s | trainer exit → requeue issued s "
          "| requeue gap s | last step | ended | steps lost (suite, measured) | steps lost (naive, modelled: save every "
          f"{args.naive_save_freq}) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(x: float | None) -> str:
            return "–" if x is None else f"{x:.1f}"
        print(f"| {r['chunk']} | {f(r['ray_up_s'])} | {f(r['to_trainer_s'])} | {f(r['stop_to_requeue_s'])} | "
              f"{f(r['exit_to_end_s'])} | {f(r['gap_s'])} | {r['last_step']} | {r['end']} | {r['lost']} | "
              f"{r['naive_lost']} |")
    gaps = [r["gap_s"] for r in rows if r["gap_s"] is not None]
    overhead = [r["to_trainer_s"] + r["exit_to_end_s"] for r in rows]
    summary = {
        "chunks": len(chunks),
        "median_requeue_gap_s": statistics.median(gaps) if gaps else None,
        "median_overhead_s": statistics.median(overhead),
        "steps_lost_suite": sum(r["lost"] for r in rows),
        "steps_lost_naive": sum(r["naive_lost"] for r in rows),
    }
    print()
    print(f"- requeue gap (requeued → next chunk started), median: {summary['median_requeue_gap_s']:.1f} s "
          f"(target ≤ 10 s; Slurm's own hold without the release: 120 s, measured on this cluster)")
    print(f"- suite overhead per chunk (chunk start → trainer start + trainer exit → requeue issued; Ray teardown after that not counted), median: "
          f"{summary['median_overhead_s']:.1f} s (target ≤ 15 s)")
    print(f"- steps lost at planned chunk ends: suite {summary['steps_lost_suite']}, naive "
          f"{summary['steps_lost_naive']} (target 0)")
    try:
        from justrl_hpc.report import model_real_run
    except ImportError:
        model_real_run = None
    if model_real_run is not None:
        model = model_real_run(requeue_gap_s=summary["median_requeue_gap_s"] or 0.0)
        print(f"- modelled real run (24 h chunks, 296 s steps, 21 GB checkpoints): {json.dumps(model)}")
    print(f"\n<!-- {json.dumps(summary)} -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
