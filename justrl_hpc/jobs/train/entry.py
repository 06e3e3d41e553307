"""The submitit callable of a training chunk, and `python -m justrl_hpc.jobs.train.entry RUN_DIR` for
sbatch/train.sbatch. Small on purpose: the launcher names it by a string recorded in run.yaml, and each node
unpickles it from the run's own code snapshot (submission.RecordedEntry), so a run keeps the entry point it
was created with across any later move of the code.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import submitit

from justrl_hpc.core import slurm_act
from justrl_hpc.jobs.train.environment import ChunkInfo, log
from justrl_hpc.jobs.train.signals import requeue_signal

_ACTIVE: dict[str, Any] = {}


class TrainChunk(submitit.helpers.Checkpointable):
    """What `launch` submits. Pickled by submitit; re-submitted as itself at every requeue."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        info = ChunkInfo.from_env(self.run_dir)
        if info.rank == 0:
            from justrl_hpc.jobs.train.driver import Driver

            driver = Driver(info)
            _ACTIVE["driver"] = driver
            return driver.run()
        from justrl_hpc.jobs.train.nodes import run_node

        return run_node(info)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """submitit calls this on rank 0 when Slurm's pre-limit signal (or a USR2 preemption) arrives.

        From here on the signal is ignored: this chunk's requeue is decided. A second one (the pre-limit signal
        landing while a crashed chunk requeues itself, which the soak found) would otherwise run submitit's
        handler again inside this one, get None from a driver that has ended, and end the job FAILED.
        """
        try:
            signal.signal(requeue_signal(), signal.SIG_IGN)
        except ValueError:  # not the main thread: no handler of submitit's to re-enter
            pass
        driver = _ACTIVE.get("driver")
        if driver is None:
            return submitit.helpers.DelayedSubmission(TrainChunk(self.run_dir))
        from justrl_hpc.core.ledger import ended

        requeue = driver.stop_for_requeue()
        then = after_limit_signal(requeue, ended(driver.ledger.read()), driver.successor is not None)
        if then in ("completed", "chained"):
            # The run reached its target inside this handler (the signal came during its last step), or the chunk
            # handed the run to its chained successor. A None here is submitit's UncompletedJobError, exit 1, and
            # Slurm's FAILED for a job that did its part (seen 2026-12-07): end the process as a finished chunk
            # ends. submitit writes no result file; nothing of ours reads it.
            log(f"run {driver.resolved.run.name} job {driver.info.job_id}: {then} in the limit's handler; exiting 0")
            sys.exit(0)
        if then == "requeue":
            return submitit.helpers.DelayedSubmission(TrainChunk(self.run_dir))
        return None  # failed for good: submitit ends the job


def after_limit_signal(requeue: bool, run_ended: str | None, chained: bool) -> str:
    """What a chunk does once the limit's (or a preemption's) handler has stopped its trainer: `requeue`
    (submitit requeues the job), `chained` (no requeue on this cluster: the job ends, its successor starts),
    `completed` (the run reached its target meanwhile: the job ends as COMPLETED), `end` (failed for good)."""
    if requeue:
        return "chained" if chained else "requeue"
    return "completed" if run_ended == "finished" else "end"


def main(argv: list[str]) -> int:
    """`srun python -m justrl_hpc.jobs.train.entry RUN_DIR`: one chunk without submitit (sbatch/train.sbatch).

    Does what submitit's runner does around the callable: on the pre-limit signal, rank 0 checkpoints and
    requeues the job with `scontrol requeue`; other ranks only note it.
    """
    if len(argv) != 1:
        print("usage: python -m justrl_hpc.jobs.train.entry RUN_DIR", file=sys.stderr)
        return 2
    chunk = TrainChunk(argv[0])
    rank = int(os.environ.get("SLURM_PROCID", "0"))

    def on_signal(signum: int, frame: Any) -> None:
        if rank != 0:
            log(f"rank {rank}: got {signal.Signals(signum).name}; rank 0 saves and requeues")
            return
        if chunk.checkpoint() is not None:
            job_id = os.environ.get("SLURM_JOB_ID", "")
            if not slurm_act.requeue(job_id):
                log(f"scontrol requeue {job_id} failed; resubmit with launch --resume")
        sys.exit(0)

    signal.signal(requeue_signal(), on_signal)
    outcome = chunk()
    log(f"chunk ended: {outcome}")
    return 0 if outcome in ("finished", "done", "requeued", "chained") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
