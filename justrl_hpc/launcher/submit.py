"""Submitting a run, resubmitting a broken chain, and following it (`launch`, `--resume`, `--wait`)."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from justrl_hpc.core import config as cfg
from justrl_hpc.core import config_files, slurm, slurm_act
from justrl_hpc.core import run_folder as rundir
from justrl_hpc.core.errors import UserError
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.runs import find_run

TERMINAL = {"finished", "failed"}


def _submit(resolved: cfg.Resolved, run_dir: Path, nodes: int, exclude: str | None = None) -> str:
    from justrl_hpc.jobs.train.submission import RecordedEntry, make_executor

    executor = make_executor(resolved, run_dir, nodes)
    if exclude:
        # A property of the Slurm job: every requeue of it keeps leaving these nodes out.
        executor.update_parameters(exclude=exclude)
    try:
        job = executor.submit(RecordedEntry(rundir.entry_points(run_dir).submitit, run_dir))
    except Exception as exc:  # sbatch's refusal arrives as a generic error from submitit
        first = str(exc).strip().splitlines()
        raise UserError(f"sbatch refused the job: {first[-1] if first else exc}", "cluster") from None
    return str(job.job_id)


def watch_hint(run_dir: Path, job_id: str, resolved: cfg.Resolved | None = None) -> str:
    lines = [
        f"submitted job {job_id}",
        f"run folder  {run_dir}",
        "watch it:",
        f"  justrl-monitor {run_dir}",
        f"  justrl-monitor daemon {run_dir}      # alerts (log, alerts.jsonl, webhook, e-mail)",
        f"  justrl-hpc monitor-job {run_dir}     # the same daemon as a chain of 1-CPU Slurm jobs",
        f"  tensorboard --logdir {run_dir / 'tensorboard'}",
        f"  tail -f {run_dir / 'logs' / 'trainer.log'}",
    ]
    if resolved is not None and "wandb" in resolved.recipe.trackers:
        from justrl_hpc.core.recipe import tracker_env

        env = tracker_env(resolved, run_dir)
        if env["WANDB_MODE"] == "offline":
            lines.append(f"  wandb sync --id {env['WANDB_RUN_ID']} {run_dir / 'wandb'}/offline-run-*   "
                         "# W&B, offline on the nodes: one run across the chunks")
    lines.append(f"if the chain breaks: python -m justrl_hpc.launch --resume {run_dir}")
    return "\n".join(lines)


def _require_ready(plan: dict[str, Any]) -> None:
    failing = [c for c in plan["checks"] if not c["ok"]]
    if failing:
        raise UserError(failing[0]["message"], failing[0]["name"])


def create_only(resolved: cfg.Resolved, run_dir: Path, plan: dict[str, Any]) -> int:
    _require_ready(plan)
    with rundir.launch_lock(run_dir):
        rundir.create(resolved, run_dir, plan)
        Ledger(run_dir).append(
            "created",
            job_id=None,
            chunk=None,
            recipe=resolved.recipe.name,
            fingerprint=resolved.recipe.fingerprint(),
        )
    print(run_dir)
    return 0


def launch_new(
    resolved: cfg.Resolved, run_dir: Path, nodes: int, wait: bool, plan: dict[str, Any], exclude: str | None = None
) -> int:
    _require_ready(plan)
    with rundir.launch_lock(run_dir):
        if RunPaths(run_dir).run_yaml.exists():
            live = live_job(run_dir)
            if live is not None:
                raise UserError(
                    f"{resolved.run.name} is live as job {live.job_id} ({live.state}); follow it with "
                    f"`justrl-hpc status {run_dir}`, not a second launch",
                    "run",
                )
        existed = run_dir.exists()
        rundir.create(resolved, run_dir, plan)
        try:
            job_id = _submit(resolved, run_dir, nodes, exclude)
        except UserError:
            if not existed:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        Ledger(run_dir).append(
            "submitted",
            job_id=job_id,
            chunk=None,
            nodes=nodes,
            exclude=exclude,
            recipe=resolved.recipe.name,
            fingerprint=resolved.recipe.fingerprint(),
        )
    print(watch_hint(run_dir, job_id, resolved))
    return wait_for(run_dir) if wait else 0


def live_job(run_dir: Path) -> slurm.JobState | None:
    """The run's newest job if Slurm still has it queued or running."""
    job_ids = [e["job_id"] for e in Ledger(run_dir).read() if e.get("job_id")]
    if not job_ids:
        return None
    st = slurm.job_state(job_ids[-1])
    return st if st is not None and st.active else None


def resume(args: argparse.Namespace) -> int:
    run_dir = find_run(args.resume, "--resume")
    stored = rundir.load(run_dir)
    if args.recipe or any(s.startswith("recipe.") for s in args.sets):
        fresh = config_files.resolve(
            args.recipe or stored.recipe.name, args.cluster or stored.cluster.name, args.sets, stored.run.name
        )
        config_files.absolutize(fresh, Path.cwd())
        if fresh.recipe.fingerprint() != stored.recipe.fingerprint() and not args.force:
            raise UserError(
                f"the recipe differs from the one this run trained with (fingerprint {fresh.recipe.fingerprint()} "
                f"vs {stored.recipe.fingerprint()}); a fixed recipe is the point of the run: use --force to accept",
                "--recipe",
            )
        stored.recipe = fresh.recipe
    nodes = args.nodes if args.nodes is not None else stored.recipe.nnodes
    from justrl_hpc.launcher.plan import check_world

    check_world(stored, nodes)
    if args.dry_run:
        print(f"dry run: would resubmit {run_dir} on {nodes} nodes")
        return 0
    with rundir.launch_lock(run_dir):
        live = live_job(run_dir)
        if live is not None:
            raise UserError(
                f"job {live.job_id} of this run is still {live.state}; wait for it or scancel it first",
                "--resume",
            )
        from justrl_hpc.core.exclusions import active, for_resubmission

        ledger = Ledger(run_dir)
        events, now = ledger.read(), time.time()
        kept = active(events, now)
        for node, until in sorted(kept.items()):
            print(f"keeping {node} out: the chunks left it out until "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(until))}")
        job_id = _submit(stored, run_dir, nodes, for_resubmission(events, now, getattr(args, "exclude", None)))
        ledger.append(
            "submitted",
            job_id=job_id,
            chunk=None,
            nodes=nodes,
            resumed=True,
            exclude=getattr(args, "exclude", None),
            recipe=stored.recipe.name,
            fingerprint=stored.recipe.fingerprint(),
        )
    print(watch_hint(run_dir, job_id, stored))
    return wait_for(run_dir) if args.wait else 0


def format_event(e: dict[str, Any]) -> str:
    # The node's versions and kernel-log mark are for the monitor (E1-env-drift, the XID check), not the eye.
    skip = {"event", "time", "job_id", "chunk", "step", "host", "pid", "env", "kmsg_boot", "kmsg_seq"}
    # An evaluate job along the run writes no job_id (core/eval_along.py): it is named by its own.
    by_eval_job = not e.get("job_id") and e.get("eval_job")
    who = f"evaluate job {e['eval_job']}" if by_eval_job else f"job {e.get('job_id')}"
    if by_eval_job:
        skip.add("eval_job")
    extra = " ".join(f"{k}={v}" for k, v in e.items() if k not in skip and v is not None)
    chunk = f" chunk {e['chunk']}" if e.get("chunk") is not None else ""
    step = f" step {e['step']}" if e.get("step") is not None else ""
    return f"{e.get('time', '')} {who}{chunk}: {e.get('event')}{step} {extra}".rstrip()


def readmit(ledger: Ledger, job_id: str) -> None:
    """Before a held job is released: nodes whose exclusion expired come back into its ExcNodeList."""
    from justrl_hpc.core.exclusions import readmission

    back = readmission(ledger.read(), time.time())
    if back and slurm_act.set_excluded(job_id, back[1]):
        ledger.append("readmitted", job_id=job_id, chunk=None, nodes=",".join(back[0]), exclude=back[1])


def wait_for(run_dir: Path, poll_s: float = 1.0, show_steps: bool = False, gone_grace_s: float = 30.0) -> int:
    """Print ledger events until the run finishes (0) or stops for good (1).

    Also releases a requeued job from Slurm's BeginTime hold: the launcher acts on its own job, the monitor never.
    """
    ledger = Ledger(run_dir)
    offset = 0
    gone_since: float | None = None
    held_since: float | None = None
    last_job: str | None = None
    while True:
        events, offset = ledger.tail(offset)
        for e in events:
            if e.get("job_id"):
                # A chunk handed over to a chained job (no requeue, or a node left out): follow that one.
                last_job = str(e.get("chained_to") or e["job_id"])
            if e.get("event") == "step" and not show_steps:
                continue
            print(format_event(e), flush=True)
            if e.get("event") in TERMINAL:
                return 0 if e["event"] == "finished" else 1
        if last_job:
            st = slurm.job_state(last_job)
            if st is not None and st.state == "PENDING" and st.reason == "BeginTime":
                # Past the old credential's revocation (slurm_act.REVOKE_MARGIN_S), as the chunk's own releaser
                # waits; under cgroups that releaser was ended with the job, and this is the only one. Both
                # releasing is harmless. (A 5 s wait here was ~3 s of every requeue's gap.)
                held_since = held_since or time.monotonic()
                if time.monotonic() - held_since > slurm_act.REVOKE_MARGIN_S:
                    readmit(ledger, last_job)
                    slurm_act.release_now(last_job)
            else:
                held_since = None
            if st is None or not st.active:
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > gone_grace_s:
                    state = st.state if st else "gone"
                    print(
                        f"job {last_job} is {state} and the run did not finish; resubmit with "
                        f"`python -m justrl_hpc.launch --resume {run_dir}`",
                        file=sys.stderr,
                    )
                    return 1
            else:
                gone_since = None
        time.sleep(poll_s)
