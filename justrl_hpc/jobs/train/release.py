"""`python -m justrl_hpc.jobs.train.release JOBID`: once a requeued job is PENDING, make it eligible now.

Slurm holds a requeued job ~120 s (Reason=BeginTime); on a free cluster that is the whole requeue gap.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from justrl_hpc.core import slurm, slurm_act
from justrl_hpc.core.slurm_resources import RUN_MARK_ENV


def release_when_pending(job_id: str, timeout_s: float = 180.0, poll_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = slurm.job_state(job_id)
        if st is not None and st.state == "PENDING":
            if st.reason == "BeginTime":
                time.sleep(slurm_act.REVOKE_MARGIN_S)  # the old credential's revocation (slurm_act)
                return slurm_act.release_now(job_id)
            return True  # waiting for resources or a dependency: nothing to release
        time.sleep(poll_s)
    return False


def spawn_releaser(job_id: str) -> None:
    """Make the requeued job eligible at once instead of after Slurm's ~120 s BeginTime hold.

    It must outlive this job: it runs in its own session and is orphaned at once (a shell starts it in the
    background and exits), so process tracking by descent (proctrack/linuxproc, pgid) no longer finds it
    among the job's processes when the requeue kills them. Where cgroups hold it anyway, Slurm's hold
    applies and `launch --wait` releases the job from outside.
    """
    sh = subprocess.Popen(
        ["/bin/sh", "-c", '"$@" &', "justrl-releaser", sys.executable, "-m", "justrl_hpc.jobs.train.release", job_id],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        # Unmarked: the chunk's end-of-incarnation sweep (cleanup.py) must not end it.
        env={k: v for k, v in os.environ.items() if k != RUN_MARK_ENV},
    )
    try:
        sh.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m justrl_hpc.jobs.train.release JOBID", file=sys.stderr)
        return 2
    return 0 if release_when_pending(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
