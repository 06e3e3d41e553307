"""The next chunk as a dependent job, on clusters that forbid requeue (`cluster.requeue_allowed: false`).

Armed at the chunk's start rather than at its end so that a chunk killed outright (node failure, kill -9,
preemption that cancels) still has a successor; a run that finishes or fails for good cancels it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from justrl_hpc.core import exclusions, slurm_act
from justrl_hpc.core.config import Resolved
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.jobs.train.environment import ChunkInfo, log


def arm(resolved: Resolved, info: ChunkInfo, ledger: Ledger, chunk: int, event: Callable[..., Any],
        exclude: str | None = None) -> str | None:
    """Submit the next chunk now, to start once this job ends however it ends (afterany); its job id, or None
    when sbatch refused it (a `chain-broken` event says why). `exclude`: the nodes it must not get (default:
    the person's and those still left out, exclusions.job_list)."""
    from justrl_hpc.core.run_folder import entry_points
    from justrl_hpc.jobs.train.submission import RecordedEntry, make_executor

    executor = make_executor(resolved, info.run_dir, info.nodes, dependency=f"afterany:{info.job_id}")
    # Nodes left out at submission (`launch --exclude`) or on hard evidence stay out of every chained job, as
    # they stay out of every requeue of one job; Slurm does not tell a job its own exclude list, the ledger does.
    if exclude is None:
        exclude = exclusions.job_list(ledger.read(), time.time()) or None
    if exclude:
        executor.update_parameters(exclude=exclude)
    try:
        job = executor.submit(RecordedEntry(entry_points(info.run_dir).submitit, info.run_dir))
    except Exception as exc:  # sbatch's refusal arrives as a generic error from submitit
        lines = str(exc).strip().splitlines()
        event("chain-broken", reason=f"sbatch refused the next chunk: {lines[-1] if lines else exc}")
        return None
    job_id = str(job.job_id)
    # The successor's id as the event's job id: `launch --resume` and `status` see the live pending job.
    ledger.append("chained", job_id=job_id, chunk=chunk, after=info.job_id, exclude=exclude)
    log(f"run {resolved.run.name} job {info.job_id} chunk {chunk}: chained job {job_id}")
    return job_id


def cancel(job_id: str, run: str, this_job: str, ledger: Ledger, chunk: int) -> None:
    """The run finished or failed for good: the chained job must not start."""
    ok = slurm_act.cancel(job_id)
    ledger.append("chain-cancelled", job_id=job_id, chunk=chunk, ok=ok)
    log(f"run {run} job {this_job}: cancelled chained job {job_id} (ok={ok})")
