"""Chunk lifecycle on the dev cluster with verl's own trainer (the rehearsal recipe): overheads, requeue gap, steps lost.

    .venv/bin/python benchmarks/bench_lifecycle.py [--steps 80] [--time-limit 2]

Runs a real rehearsal launch (dev cluster, 2 nodes, real Slurm/submitit/Ray) to its target step and reads the
figures off its ledger. The naive way (the published approach: periodic saves every `save_freq` steps, no
save before the limit, the job killed at its wall clock) is computed from the same chunk ends: it loses the
steps trained since its last periodic save. The per-chunk figures come from justrl_hpc.launcher.report (the same
derivation as `justrl-hpc report` and the dashboard); the real 4,380-step run is then modelled with the overheads
measured here (justrl_hpc.launcher.real_run_model.model_real_run), the suite's way and the naive way.
Prints Markdown; benchmarks/run_all.sh appends it to BENCHMARKS.md.
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


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--time-limit", type=int, default=2)
    p.add_argument("--naive-save-freq", type=int, default=10)
    p.add_argument("--from-run", type=Path, help="read a finished run folder instead of launching one")
    args = p.parse_args()
    if args.from_run:
        return report(args.from_run, args, wall=None)
    from justrl_hpc.dev.devcluster import cluster as devcluster
    from justrl_hpc.dev.toy.prepare import prepare

    devcluster.up()
    work = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    prepare(work / "data")
    run_dir = work / "runs" / "bench"
    cmd = [
        sys.executable,
        "-m",
        "justrl_hpc.launch",
        "--recipe",
        "rehearsal",
        "--cluster",
        "dev",
        "--nodes",
        "2",
        "--name",
        "bench",
        "--run-dir",
        str(run_dir),
        "--time-limit",
        str(args.time_limit),
        "--wait",
        "--set",
        f"recipe.model_path={work / 'data' / 'model'}",
        "--set",
        f"recipe.train_files=[{work / 'data' / 'train.parquet'}]",
        "--set",
        f"recipe.val_files=[{work / 'data' / 'val.parquet'}]",
        "--set",
        f"recipe.total_training_steps={args.steps}",
    ]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.time() - t0
    if out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
        return 1
    return report(run_dir, args, wall)


def report(run_dir: Path, args: argparse.Namespace, wall: float | None) -> int:
    # The per-chunk figures come from justrl_hpc.launcher.report, the same derivation `justrl-hpc report` and the
    # dashboard use; this script only lays them out and adds the naive column and the real-run model.
    from justrl_hpc.core.goodput import report_run
    from justrl_hpc.launcher.real_run_model import measured_overheads, model_real_run

    rep = report_run(run_dir)
    if wall is None:
        wall = rep.wall_s or 0.0
    chunks = rep.chunks
    verl_up = _verl_startup(run_dir)
    saves = _console_timings(run_dir, "timing_s/save_checkpoint")
    rows = []
    for c in chunks:
        naive_lost = (c.last_step or 0) % args.naive_save_freq if c.requeue_gap_s is not None else 0
        rows.append(
            {
                "chunk": c.chunk,
                "ray_up_s": c.ray_up_s,
                "to_trainer_s": _diff(c.trainer_started, c.start),
                "verl_up_s": verl_up.get(c.chunk),
                "stop_to_requeue_s": c.stop_to_end_s if c.requeue_gap_s is not None else None,
                "exit_to_end_s": c.exit_to_end_s,
                "gap_s": c.requeue_gap_s,
                "last_step": c.last_step,
                "end": c.reason,
                "lost": c.steps_lost,
                "naive_lost": naive_lost,
            }
        )
    print(
        f"Rehearsal run {run_dir.name} of {rep.last_step} steps, 2 dev-cluster nodes: "
        f"{len(chunks)} chunks, {wall:.0f} s from submit to finished.\n"
    )
    print(
        "| chunk | Ray up s | alloc start → trainer start s | verl: trainer start → first step s "
        "| stop → requeued s | trainer exit → requeue issued s "
        "| requeue gap s | last step | ended | steps lost (suite, measured) | steps lost (naive, modelled: save every "
        f"{args.naive_save_freq}) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.1f}"

    for r in rows:
        print(
            f"| {r['chunk']} | {f(r['ray_up_s'])} | {f(r['to_trainer_s'])} | {f(r['verl_up_s'])} | "
            f"{f(r['stop_to_requeue_s'])} | "
            f"{f(r['exit_to_end_s'])} | {f(r['gap_s'])} | {r['last_step']} | {r['end']} | {r['lost']} | "
            f"{r['naive_lost']} |"
        )
    gaps = [r["gap_s"] for r in rows if r["gap_s"] is not None]
    overhead = [(r["to_trainer_s"] or 0.0) + (r["exit_to_end_s"] or 0.0) for r in rows]
    summary = {
        "chunks": len(chunks),
        "goodput": None if rep.goodput is None else round(rep.goodput, 4),
        "median_requeue_gap_s": statistics.median(gaps) if gaps else None,
        "median_overhead_s": statistics.median(overhead) if overhead else None,
        "steps_lost_suite": sum(r["lost"] for r in rows),
        "steps_lost_naive": sum(r["naive_lost"] for r in rows),
    }
    print()
    if gaps:
        print(
            f"- requeue gap (requeued → next chunk started), median: {summary['median_requeue_gap_s']:.1f} s "
            f"(target ≤ 10 s; Slurm's own hold without the release: 120 s, measured on this cluster)"
        )
    if overhead:
        print(
            "- suite overhead per chunk (chunk start → trainer start + trainer exit → requeue issued; Ray teardown "
            f"after that not counted), median: {summary['median_overhead_s']:.1f} s (target ≤ 15 s)"
        )
    ups = [r["verl_up_s"] for r in rows if r["verl_up_s"] is not None]
    if ups:
        summary["median_verl_startup_s"] = statistics.median(ups)
        print(
            "- verl's own start-up per chunk (trainer start → its first step logged: Ray workers, model and "
            f"checkpoint load, validation on chunk 1, the first step), median: {statistics.median(ups):.1f} s"
        )
    if saves:
        summary["median_verl_save_s"] = statistics.median(saves)
        print(f"- verl's checkpoint save (timing_s/save_checkpoint), median over {len(saves)} saves: "
              f"{statistics.median(saves):.3f} s")
    print(
        f"- steps lost at planned chunk ends: suite {summary['steps_lost_suite']}, naive "
        f"{summary['steps_lost_naive']} (target 0)"
    )
    if rep.goodput is not None:
        print(
            f"- rehearsal goodput (kept step time / allocated time, verl on 2 cores): {100 * rep.goodput:.1f}%"
        )
    measured = measured_overheads(rep)
    model = model_real_run(**measured)
    m, suite, naive = model["inputs"], model["suite"], model["naive"]
    print(
        f"- modelled real run ({m['target_steps']} steps of {m['step_s']:g} s, {m['chunk_s'] / 3600:g} h chunks, "
        f"{m['checkpoint_gb']:g} GB checkpoints at {m['fs_gb_per_s']:.2f} GB/s → {m['save_s']:g} s per save and "
        f"per load, model + vLLM init {m['init_s']:g} s; measured here: suite start-up {m['suite_startup_s']:g} s, "
        f"stop tail {m['stop_tail_s']:g} s, requeue gap {m['requeue_gap_s']:g} s):"
    )
    print(
        f"  - suite (save at the step after the {m['signal_lead_s']:g} s signal, release after requeue): goodput "
        f"{100 * suite['goodput']:.2f}% of {suite['allocated_h']:g} allocated h (target ≥ 98%), "
        f"{100 * suite['wall_goodput']:.2f}% of {suite['wall_h']:g} wall h; {suite['chunks']} chunks, "
        f"{suite['steps_lost']} steps lost"
    )
    print(
        f"  - naive (saves every {m['save_freq']} steps only, fixed --signal@{m['naive_signal_lead_s']:g} s "
        f"requeueing unsaved, Slurm's {m['naive_hold_s']:g} s hold): goodput {100 * naive['goodput']:.2f}% of "
        f"{naive['allocated_h']:g} allocated h, {100 * naive['wall_goodput']:.2f}% of {naive['wall_h']:g} wall h; "
        f"{naive['chunks']} chunks, {naive['steps_lost']} steps lost"
    )
    summary["model"] = {"suite": suite, "naive": naive, "measured": measured}
    print(f"\n<!-- {json.dumps(summary)} -->")
    return 0


def _verl_startup(run_dir: Path) -> dict[int, float]:
    """Per chunk: seconds from `trainer-started` to the first `step` event (both from the ledger)."""
    from datetime import datetime

    def t(e: dict) -> float:
        return datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()

    started: dict[int, float] = {}
    out: dict[int, float] = {}
    for line in (run_dir / "ledger.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e.get("event") == "trainer-started":
            started[e["chunk"]] = t(e)
        elif e.get("event") == "step" and e["chunk"] in started and e["chunk"] not in out:
            out[e["chunk"]] = t(e) - started[e["chunk"]]
    return out


def _console_timings(run_dir: Path, key: str) -> list[float]:
    """A timing verl logs on its console step lines, one value per step that has it (non-zero)."""
    import re

    log = run_dir / "logs" / "trainer.log"
    if not log.is_file():
        return []
    pattern = re.compile(re.escape(key) + r":(?:np\.float64\()?([0-9.e+-]+)")
    values = [float(m.group(1)) for m in pattern.finditer(log.read_text(errors="replace"))]
    return [v for v in values if v > 0]


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


if __name__ == "__main__":
    sys.exit(main())
