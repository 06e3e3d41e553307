"""`justrl-hpc rehearse`: the whole lifecycle on this machine, on the built-in defaults.

Starts the dev cluster (a real Slurm, 4 fake nodes), prepares the rehearsal's toy data and tiny base model,
creates the run, starts the monitor daemon on it (so `justrl-monitor RUN` shows live alerts; its log is
RUN/logs/monitor.log, and it ends itself when the run does), and launches the rehearsal recipe on 2 nodes
with short chunks, following it until it finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from justrl_hpc.core.errors import UserError

DAEMON_INTERVAL_S = 10.0  # the rehearsal's steps take seconds and its chunks three minutes


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="justrl-hpc rehearse", description=__doc__.splitlines()[0])
    p.add_argument("--name", help="run name (default rehearsal-<date>-<time>: a fresh run each time)")
    p.add_argument("--nodes", type=int, default=2)
    # 3 minutes: verl's start-up takes ~50 s of each chunk on a quiet 2-core machine (nine processes import
    # torch and verl) and twice that beside other work, and Slurm's pre-limit signal comes 20-50 s before the
    # end: a 2-minute chunk under load ended before its first step, chunk after chunk.
    p.add_argument(
        "--time-limit", type=int, default=3, metavar="MINUTES", help="wall clock per chunk (default 3)"
    )
    p.add_argument("--data", default="data/rehearsal", help="where the toy data and base model go")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.nodes > 4:
        raise UserError(f"the dev cluster has 4 nodes; got {args.nodes}", "--nodes")

    from justrl_hpc.dev.devcluster import cluster as devcluster

    devcluster.up()
    data = Path(args.data)
    if not (data / "model" / "config.json").is_file() or not (data / "train.parquet").is_file():
        from justrl_hpc.dev.toy.prepare import prepare

        info = prepare(data)
        print(f"prepared {data}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    name = args.name or time.strftime("rehearsal-%Y%m%d-%H%M%S")
    run_dir = (Path("runs") / name).resolve()
    from justrl_hpc.launcher import launch

    launch_args = [
        "--run-dir",
        str(run_dir),
        "--recipe",
        "rehearsal",
        "--cluster",
        "dev",
        "--nodes",
        str(args.nodes),
        "--name",
        name,
        "--time-limit",
        str(args.time_limit),
        "--set",
        f"recipe.model_path={(data / 'model').resolve()}",
        "--set",
        f"recipe.train_files=[{(data / 'train.parquet').resolve()}]",
        "--set",
        f"recipe.val_files=[{(data / 'val.parquet').resolve()}]",
    ]
    for s in args.sets:
        launch_args += ["--set", s]
    rc = launch.main([*launch_args, "--create-only"])
    if rc:
        return rc
    daemon = start_daemon(run_dir)
    rc = launch.main(["--resume", str(run_dir), *([] if args.no_wait else ["--wait"])])
    if not args.no_wait:
        stop_daemon(daemon, run_dir)
    return rc


def start_daemon(run_dir: Path, interval_s: float = DAEMON_INTERVAL_S) -> subprocess.Popen[bytes]:
    """The monitor daemon on the run, in its own session (a ctrl-c of the rehearsal leaves the run and its
    watch going); it ends itself once the run has finished or failed."""
    log_path = run_dir / "logs" / "monitor.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "justrl_hpc.monitor.cli", "daemon", str(run_dir), "--interval", str(interval_s),
           "--until-ended"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    print(f"monitor: daemon pid {proc.pid} watching {run_dir.name} every {interval_s:g} s (log {log_path}); "
          f"the dashboard: justrl-monitor {run_dir}", flush=True)
    return proc


def stop_daemon(proc: subprocess.Popen[bytes], run_dir: Path, grace_s: float = 3 * DAEMON_INTERVAL_S) -> None:
    """After the run: the daemon's last cycle has judged the newest step; wait for it, then make sure."""
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # it commits its state and exits on SIGTERM
        proc.wait(timeout=60)
    alerts = run_dir / "alerts.jsonl"
    raised = []
    if alerts.exists():
        for line in alerts.read_text().splitlines():
            try:
                a = json.loads(line)
            except ValueError:
                continue
            if a.get("state") == "firing":
                raised.append(f"  [{a.get('severity')}] {a.get('rule')} {a.get('message')}")
    said = f"{len(raised)} alert(s) raised ({alerts})" + (":" if raised else "")
    print("\n".join([f"monitor: stopped with the run (exit {proc.returncode}); {said}", *raised]), flush=True)
