"""`justrl-hpc monitor-job RUN`: the monitor daemon as a chain of small Slurm jobs, for sites that end long
processes on login nodes.

Each link is one job of 1 CPU named `justrl-monitor-<run>-<hash>` with `--dependency=singleton` (Slurm runs one
job of a name and user at a time, so the next link waits for this one; NeMo's launcher chains the same way).
A link (sbatch/monitor.sbatch) first asks this module whether the run has ended: if so the chain ends there;
else it queues its successor, then execs the daemon, which runs until the link's time limit ends it (SIGTERM:
it commits its state and exits) or the run ends (`--until-ended`). The next link resumes from RUN/monitor.db
(cursors and alerts committed together, so no alert repeats across a restart and none is missed).

The daemon's own code still calls no job-acting Slurm command: the successor is submitted here, on the
launcher's side, through core.slurm_act.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from justrl_hpc.core.errors import UserError
from justrl_hpc.core.paths import RunPaths

SETTINGS_FILE = "monitor-job.json"  # in RUN/control/: what every link of the chain is submitted with
SCRIPT = Path("sbatch") / "monitor.sbatch"
ENDED_EXIT = 3  # `--link`: the run has ended, the chain ends


def chain_name(run_dir: Path) -> str:
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:6]
    return f"justrl-monitor-{Path(run_dir).name}-{digest}"


def checkout() -> Path:
    return Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="justrl-hpc monitor-job", description=__doc__.splitlines()[0])
    p.add_argument("run", metavar="RUN", help="run folder (or its name under runs/)")
    p.add_argument("--partition", help="the links' partition (default: cluster.monitor_partition, else the run's)")
    p.add_argument("--time-limit", type=int, metavar="MINUTES",
                   help="each link's wall clock (default: cluster.monitor_time_limit_min, else time_limit_min)")
    p.add_argument("--account", help="default: the run's cluster.account")
    p.add_argument("--qos", help="default: the run's cluster.qos")
    p.add_argument("--config", type=Path, help="monitor rules file (default monitor/rules.yaml)")
    p.add_argument("--interval", type=float, help="seconds between the daemon's cycles (default 30)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch command; submit nothing")
    return p


def settings_for(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    from justrl_hpc.core.run_folder import load

    cluster = load(run_dir).cluster
    limit = args.time_limit if args.time_limit is not None else (
        cluster.monitor_time_limit_min or cluster.time_limit_min)
    if limit < 1:
        raise UserError(f"must be at least 1 minute, got {limit}", "--time-limit")
    if args.interval is not None and not args.interval > 0:
        raise UserError(f"must be a positive number of seconds, got {args.interval}", "--interval")
    config = None
    if args.config is not None:
        if not args.config.is_file():
            raise UserError(f"{args.config}: no such file", "--config")
        from justrl_hpc.monitor.settings import load as load_rules  # its one error line for a bad file

        load_rules(args.config)
        config = str(args.config.resolve())
    return {
        "name": chain_name(run_dir),
        "partition": args.partition or cluster.monitor_partition or cluster.partition,
        "time_limit_min": limit,
        "account": args.account if args.account is not None else cluster.account,
        "qos": args.qos if args.qos is not None else cluster.qos,
        "config": config,
        "interval_s": args.interval,
        "python": sys.executable,
        "checkout": str(checkout()),
    }


def sbatch_args(run_dir: Path, st: dict[str, Any]) -> list[str]:
    paths = RunPaths(run_dir)
    out = [f"--job-name={st['name']}", "--dependency=singleton", "--ntasks=1", "--cpus-per-task=1",
           f"--time={st['time_limit_min']}", f"--output={paths.logs / 'monitor-job.log'}", "--open-mode=append",
           f"--chdir={st['checkout']}"]
    out += [f"--{k}={st[k]}" for k in ("partition", "account", "qos") if st.get(k)]
    daemon = [*(["--config", st["config"]] if st.get("config") else []),
              *(["--interval", str(st["interval_s"])] if st.get("interval_s") else [])]
    return [*out, str(Path(st["checkout"]) / SCRIPT), str(run_dir), *daemon]


def _env(st: dict[str, Any]) -> dict[str, str]:
    # The sinks' secrets (webhook URL, SMTP password) travel in the environment, as sbatch's default
    # --export=ALL passes it: never on a command line, never in the settings file. A link submitting its
    # successor drops its own job's SLURM_* variables (the new job gets its own), keeping SLURM_CONF.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    return dict(env, JUSTRL_PYTHON=st["python"], JUSTRL_CHECKOUT=st["checkout"])


def submit_link(run_dir: Path, st: dict[str, Any]) -> str:
    from justrl_hpc.core import slurm_act

    return slurm_act.sbatch(sbatch_args(run_dir, st), env=_env(st), where="monitor-job")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--link"]:
        return link(argv[1:])
    args = build_parser().parse_args(argv)
    from justrl_hpc.core.runs import find_run

    run_dir = find_run(args.run, "RUN")
    st = settings_for(args, run_dir)
    if args.dry_run:
        print("dry run: nothing submitted")
        print("sbatch --parsable " + " ".join(sbatch_args(run_dir, st)))
        return 0
    from justrl_hpc.core import slurm

    queued = slurm.job_ids_named(st["name"])
    if queued:
        raise UserError(f"a monitor chain for this run is already queued or running (job {', '.join(queued)}); "
                        f"scancel --name={st['name']} to replace it", "RUN")
    from justrl_hpc.core.run_folder import atomic_write

    paths = RunPaths(run_dir)
    paths.logs.mkdir(parents=True, exist_ok=True)
    atomic_write(paths.control / SETTINGS_FILE, json.dumps(st, indent=2, sort_keys=True) + "\n")
    job = submit_link(run_dir, st)
    where = f"partition {st['partition']}" if st["partition"] else "the default partition"
    print(f"submitted monitor job {job} ({st['name']}, {where}, 1 CPU, {st['time_limit_min']} min per link): a "
          f"chain of singleton jobs until the run ends; log {paths.logs / 'monitor-job.log'}")
    return 0


def link(argv: list[str]) -> int:
    """Inside a link, before the daemon: end the chain if the run has ended, else queue the next link."""
    from justrl_hpc.core.ledger import Ledger, ended

    if len(argv) != 1:
        raise UserError("usage: python -m justrl_hpc.launcher.monitor_job --link RUN", "--link")
    run_dir = Path(argv[0]).resolve()
    job = os.environ.get("SLURM_JOB_ID", "?")
    events, _ = Ledger(run_dir).tail(0)
    why = ended(events)
    if why:
        print(f"monitor job {job}: run {run_dir.name} has {why}: the chain ends here", flush=True)
        return ENDED_EXIT
    try:
        st = json.loads((RunPaths(run_dir).control / SETTINGS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the chain's settings ({exc}); submit it again with justrl-hpc monitor-job",
                        "RUN") from None
    nxt = submit_link(run_dir, st)
    print(f"monitor job {job}: run {run_dir.name} goes on; next link {nxt} queued (singleton)", flush=True)
    return 0


if __name__ == "__main__":
    from justrl_hpc.core.errors import cli_entry

    sys.exit(cli_entry(main)(sys.argv[1:]))
