"""What a chunk does with Slurm's signals: the pre-limit/preemption signal submitit requeues on, and the
shield every child of the chunk starts with."""

from __future__ import annotations

import os
import signal

from justrl_hpc.jobs.train.environment import log


def shield_from_slurm_signals() -> None:
    """In a child of the chunk: ignore what Slurm sends every process of the job step.

    `--signal=USR2@lead` and a preemption's SIGTERM reach every process of the step, the trainer and Ray's
    daemons included; their default action kills them before the save the signal asks for. Ignored signals
    stay ignored across exec, so the trainer and whatever it starts keep working while the chunk driver
    (which handles both) asks for the save and stops them itself.
    """
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def ignore_limit_signal(who: str) -> None:
    """From now on the pre-limit signal does nothing. SIG_IGN rather than a Python handler: Python puts its
    own handlers back to the default while the process exits, and a signal in that last moment would kill
    the task, which srun reports and Slurm turns into a FAILED job."""
    try:
        signal.signal(requeue_signal(), signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing of submitit's to keep out either
        return
    log(f"{who}: the run ended here; {requeue_signal().name} is ignored from now on")


def requeue_signal() -> signal.Signals:
    """The signal submitit's handler turns into checkpoint() + `scontrol requeue` (USR2 unless overridden)."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def _prctl_pdeathsig(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG, sig): this process gets `sig` when the thread that forked it exits (Linux)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the agent then relies on stop_process and Slurm's process tracking
