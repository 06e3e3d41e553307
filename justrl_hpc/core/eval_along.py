"""Evaluation along the run (`launch --eval-every K`): one evaluate job at a time for each kept checkpoint at a
multiple of K, so the reader watches the benchmark average rise beside the published endpoint.

Who submits: the chunk, as each save is verified (a thread: a submission takes seconds and the chunk must not
wait on it), and each evaluate job of the run as it ends (the backlog drains one job at a time, also after the
run has finished). Both run `python -m justrl_hpc.launch --job evaluate --run RUN --step N` with the run's
`eval_args`, the command a person would type, so the job is the same one whatever submits it.

What is decided (`next_step`, `protected`: pure, tested as tables) is kept apart from what is gathered
(`gather`: the ledger, the checkpoint folder, the results folders, Slurm). The ledger carries
`eval-submitted` (step, eval_job) and `eval-finished` (ok, and why not), so a later chunk or a person sees what
was asked; those events are notes about the run, never where it stands (ledger.NOTES).

Training is never touched: a refused submission is an `eval-finished` event with ok=false and a log line
(asked again at the next save), and the run goes on. The one effect on the chunk is retention: a save due for
evaluation is kept until its job has ended (an evaluation of a folder deleted under it would fail an hour in).
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUBMITTED = "eval-submitted"
FINISHED = "eval-finished"
LOCK_NAME = ".eval-along.lock"
SUBMIT_TIMEOUT_S = 300.0
# The submission's environment: the submitting job's own Slurm, submitit and Ray variables, and the chunk's own
# (its process mark above all: the chunk's end sweeps every process carrying it, and an evaluate job that
# inherited it was killed mid-way, CI 2026-12-07) would leak into the new job (sbatch exports the caller's
# environment); SLURM_CONF stays (it names the cluster to submit to).
_DROP_PREFIXES = ("SLURM_", "SRUN_", "SBATCH_", "SUBMITIT_", "RAY_", "JUSTRL_CONTROL", "JUSTRL_RUN_",
                  "TENSORBOARD_DIR")
_KEEP = ("SLURM_CONF",)


# At most this many saves kept back from retention for their evaluation (the oldest due first). A backlog
# beyond it (evaluations that cannot keep up, a partition that never runs them) must not fill the disk with
# 1.5B-parameter saves: older due saves then go as retention says and are not evaluated.
MAX_PROTECTED = 3


@dataclass(frozen=True)
class Facts:
    kept: tuple[int, ...]  # verified checkpoints on disk
    done: frozenset[int]  # steps whose results exist (eval/step_N/summary.json)
    submitted: frozenset[int]  # steps an evaluate job was submitted for (refused submissions are not)
    gave_up: frozenset[int]  # steps whose job ended without results
    open_steps: frozenset[int]  # steps whose evaluate job is queued or running and has not said it ended


def due(step: int, every: int) -> bool:
    return every > 0 and step > 0 and step % every == 0


def next_step(facts: Facts, every: int) -> int | None:
    """The step to submit an evaluation of now, or None: never while one is queued or running, never a step
    whose job was submitted before (one that failed is not retried by itself: `launch --job evaluate` does that
    by hand), the oldest first (the curve fills in order, and older saves are the ones retention deletes)."""
    if every <= 0 or facts.open_steps:
        return None
    todo = [s for s in sorted(facts.kept) if due(s, every) and s not in facts.done and s not in facts.submitted]
    return todo[0] if todo else None


def protected(facts: Facts, every: int) -> set[int]:
    """Saves retention must keep: due, not evaluated, not given up on; the oldest MAX_PROTECTED of them."""
    waiting = [s for s in sorted(facts.kept) if due(s, every) and s not in facts.done and s not in facts.gave_up]
    return set(waiting[:MAX_PROTECTED])


def facts_from(events: list[dict[str, Any]], kept: Iterable[int], done: Iterable[int],
               active: Callable[[str], bool] | None) -> tuple[Facts, dict[str, int]]:
    """The facts, and the submitted jobs found ended without saying so (to record). `active(job)` says whether
    Slurm still queues or runs a job; None when Slurm cannot be asked (every unanswered job counts as open)."""
    done = frozenset(done)
    submitted = {str(e.get("eval_job")): int(e["step"]) for e in events
                 if e.get("event") == SUBMITTED and e.get("eval_job") and isinstance(e.get("step"), int)}
    said = {str(e.get("eval_job")): bool(e.get("ok")) for e in events
            if e.get("event") == FINISHED and e.get("eval_job")}
    unsaid = {job: step for job, step in submitted.items() if job not in said and step not in done}
    ended = {job: step for job, step in unsaid.items() if active is not None and not active(job)}
    gave_up = {submitted[job] for job, ok in said.items() if not ok and job in submitted} | set(ended.values())
    open_steps = {step for job, step in unsaid.items() if job not in ended}
    return Facts(tuple(sorted(kept)), done, frozenset(submitted.values()), frozenset(gave_up - done),
                 frozenset(open_steps)), ended


# -- gathering and acting -------------------------------------------------------------------------------------


def done_steps(run_dir: Path) -> set[int]:
    out = set()
    for summary in (run_dir / "eval").glob("step_*/summary.json"):
        tail = summary.parent.name.removeprefix("step_")
        if tail.isdigit():
            out.add(int(tail))
    return out


def _slurm_active() -> Callable[[str], bool] | None:
    """Slurm's view of a job, or None while its controller does not answer (a job it cannot find then is not
    a job that ended)."""
    from justrl_hpc.core import slurm

    if slurm.controller_problem() is not None:
        return None

    def active(job: str) -> bool:
        st = slurm.job_state(job)
        return st is not None and st.active

    return active


def gather(run_dir: Path, world_size: int, active: Callable[[str], bool] | None) -> tuple[Facts, dict[str, int]]:
    from justrl_hpc.core import checkpoints
    from justrl_hpc.core.ledger import Ledger
    from justrl_hpc.core.paths import RunPaths

    kept = checkpoints.verified_steps(RunPaths(run_dir).checkpoints, world_size)
    return facts_from(Ledger(run_dir).read(), kept, done_steps(run_dir), active)


def known_protected(run_dir: Path, world_size: int, every: int) -> set[int]:
    """For retention, from the ledger and the folders alone (no Slurm: retention runs on every save)."""
    if every <= 0:
        return set()
    facts, _ = gather(run_dir, world_size, None)
    return protected(facts, every)


def submission_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in _KEEP or not k.startswith(_DROP_PREFIXES)}


def evaluate_command(run_dir: Path, step: int, eval_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "justrl_hpc.launch", "--job", "evaluate", "--run", str(run_dir),
            "--step", str(step), *eval_args]


def submit_due(run_dir: Path, job_id: str | None, chunk: int | None, run: Any | None = None,
               log: Callable[[str], None] | None = None) -> int | None:
    """Submit the evaluation due now, if any; the step submitted, or None. Never raises: what goes wrong is an
    `eval-finished` event with ok=false and a log line. `run` is the run's Resolved (read from run.yaml when
    None)."""
    from justrl_hpc.core.ledger import Ledger

    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    by = f"job {job_id}" if job_id else "evaluation"  # an evaluate job writes job_id None (not the chain's job)
    try:
        if run is None:
            from justrl_hpc.core import run_folder

            run = run_folder.load(run_dir)
        every, eval_args = run.run.eval_every, list(run.run.eval_args)
        if every <= 0:
            return None
        ledger = Ledger(run_dir)
        with open(run_dir / LOCK_NAME, "a") as fh:  # the chunk and an ending evaluate job may look at once
            fcntl.flock(fh, fcntl.LOCK_EX)
            facts, ended = gather(run_dir, run.recipe.world_size, _slurm_active())
            for job, step in sorted(ended.items()):
                ledger.append(FINISHED, job_id=job_id, chunk=chunk, step=step, eval_job=job, ok=False,
                              why="the job ended without results")
                say(f"{run_dir.name} {by} step {step}: evaluate job {job} ended without results")
            step = next_step(facts, every)
            if step is None:
                return None
            cmd = evaluate_command(run_dir, step, eval_args)
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBMIT_TIMEOUT_S,
                                 env=submission_env(), stdin=subprocess.DEVNULL)
            found = re.search(r"submitted evaluate job (\d+)", out.stdout)
            if out.returncode != 0 or not found:
                # Not given up on: the next save or the next evaluation's end asks again.
                why = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
                ledger.append(FINISHED, job_id=job_id, chunk=chunk, step=step, ok=False, why=f"not submitted: {why}")
                say(f"{run_dir.name} {by} step {step}: evaluation not submitted: {why} "
                    f"(by hand: {shlex.join(['python', *cmd[1:]])})")
                return None
            ledger.append(SUBMITTED, job_id=job_id, chunk=chunk, step=step, eval_job=found.group(1))
            say(f"{run_dir.name} {by} step {step}: submitted evaluate job {found.group(1)}")
            return step
    except Exception as exc:  # noqa: BLE001  (an evaluation must never end a chunk or an evaluation)
        say(f"{run_dir.name} {by}: evaluation along the run skipped: {type(exc).__name__}: {exc}")
        return None
