"""`justrl-hpc save-now RUN` and `justrl-hpc status RUN`: talk to a run through its folder, never its processes."""

from __future__ import annotations

import argparse
import json
import time

from justrl_hpc.core import slurm
from justrl_hpc.core.errors import UserError
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.run_folder import atomic_write
from justrl_hpc.core.runs import find_run
from justrl_hpc.launcher.submit import format_event, live_job


def save_now(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="justrl-hpc save-now",
        description="Ask the running chunk to save at the next step boundary, then requeue.",
    )
    p.add_argument("run", help="run name under runs/ or a run folder")
    args = p.parse_args(argv)
    run_dir = find_run(args.run)
    live = live_job(run_dir)
    if live is None or live.state != "RUNNING":
        raise UserError("no chunk of this run is running; nothing to save", "RUN")
    atomic_write(RunPaths(run_dir).save_now, json.dumps({"time": time.time()}))
    print(
        f"save requested for job {live.job_id}: the trainer saves at the next step, then the chunk requeues"
    )
    return 0


def status(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="justrl-hpc status", description="Where a run stands: ledger and Slurm.")
    p.add_argument("run", help="run name under runs/ or a run folder")
    p.add_argument("-n", type=int, default=8, help="last N ledger events to show (default 8)")
    args = p.parse_args(argv)
    run_dir = find_run(args.run)
    events = [e for e in Ledger(run_dir).read() if e.get("event") != "step"]
    steps = [e["step"] for e in Ledger(run_dir).read() if e.get("event") == "step"]
    down = slurm.controller_problem()
    live = None if down else live_job(run_dir)
    where = (f"Slurm unreachable ({down}): job state unknown" if down
             else f"job {live.job_id} {live.state} ({live.reason})" if live else "no job queued or running")
    print(f"run {run_dir.name}: last step {steps[-1] if steps else '-'}; {where}")
    for e in events[-args.n :]:
        print("  " + format_event(e))
    return 0


def verb_main(verb: str, argv: list[str]) -> int:
    return save_now(argv) if verb == "save-now" else status(argv)
