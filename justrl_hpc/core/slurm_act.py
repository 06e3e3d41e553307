"""The only module that acts on a Slurm job: release, requeue, cancel, submit a batch script.

The launcher (on its own run's jobs) and the chunk (on itself) import it; the monitor never may
(tests/test_layout.py holds that), so "alerts without ever intervening" is a fact of the import graph.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from justrl_hpc.core.errors import UserError
from justrl_hpc.core.slurm import _run

# A requeue revokes the job's old credential on its nodes with one-second resolution: a launch in the same
# second is refused ("Job credential revoked") and the job FAILS. Slurm's own ~120 s hold is this margin made
# long; two seconds after the job shows PENDING are enough.
REVOKE_MARGIN_S = 2.0


def release_now(job_id: str) -> bool:
    """Make a requeued job eligible at once instead of after Slurm's ~120 s BeginTime hold."""
    return _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"]) is not None


def requeue(job_id: str) -> bool:
    return _run(["scontrol", "requeue", str(job_id)]) is not None


def set_excluded(job_id: str, nodes: str) -> bool:
    """The job's ExcNodeList (comma-separated; empty clears it). Slurm takes it only while the job is pending."""
    return _run(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={nodes}"]) is not None


def cancel(job_id: str) -> bool:
    """Cancel one of the run's own jobs (the launcher side only: the monitor never calls this)."""
    return _run(["scancel", str(job_id)]) is not None


def sbatch(args: list[str], env: Mapping[str, str] | None = None, where: str = "sbatch") -> str:
    """Submit with `sbatch --parsable ARGS`; the job id, or a UserError with Slurm's own words."""
    try:
        out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=60,
                             env=None if env is None else dict(env))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"sbatch did not run: {exc}", where) from None
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines()
        raise UserError(f"Slurm refused the job: {said[-1] if said else f'exit {out.returncode}'}", where)
    return out.stdout.strip().split(";")[0]
