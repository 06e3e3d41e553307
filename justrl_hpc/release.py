"""`python -m justrl_hpc.release JOBID`: once a requeued job is PENDING, make it eligible now.

Slurm holds a requeued job ~120 s (Reason=BeginTime); on a free cluster that is the whole requeue gap.
"""

from __future__ import annotations

import sys
import time

from justrl_hpc import slurm

REVOKE_MARGIN_S = 2.0


def release_when_pending(job_id: str, timeout_s: float = 180.0, poll_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = slurm.job_state(job_id)
        if st is not None and st.state == "PENDING":
            if st.reason == "BeginTime":
                # The requeue revoked the job's old credential on its nodes, with one-second resolution: a new
                # launch in the same second is refused ("Job credential revoked") and the job FAILS. Slurm's own
                # ~120 s hold is this margin made long; two seconds are enough.
                time.sleep(REVOKE_MARGIN_S)
                return slurm.release_now(job_id)
            return True  # waiting for resources or a dependency: nothing to release
        time.sleep(poll_s)
    return False


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m justrl_hpc.release JOBID", file=sys.stderr)
        return 2
    return 0 if release_when_pending(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
