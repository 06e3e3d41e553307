"""The trainer process of one chunk: start it, follow its steps and saves, stop it at a step boundary.

The trainer is verl (`python -m verl.trainer.main_ppo`), on GPUs or on the CPU backend. What the
chunk learns about it comes from outside, never from its internals: its console lines (`step:N - … -
timing_s/step:…`, verl's console logger), verl's tracker file, and its exit status.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from justrl_hpc.jobs.train.signals import shield_from_slurm_signals

# A training step's console line; validation lines carry no timing_s/step and are not steps.
STEP_LINE = re.compile(r"\bstep:(\d+) - .*\btiming_s/step:")
TRACKER = "latest_checkpointed_iteration.txt"

# Slurm's own words for what it did to a step, as slurmstepd and srun write them to the job's stderr files
# (jobs/train/slurm_log.py reads them there): the cgroup OOM killer's count (cgroup v1 `oom-kill event(s) in
# StepId=J.S cgroup`, v2 `oom_kill event in StepId=J.S`, often with no `srun: … Out Of Memory` line beside it),
# the memory enforcer's kill, and a lost node (`srun: error: Node failure on n3`, `*** JOB J ON n1 CANCELLED AT
# … DUE TO NODE FAILURE …`). Definite statements, so they come first: what they cause (Ray actors dying, NCCL
# timeouts on the ranks left) would otherwise be read as the cause.
SLURM_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "crashed-oom",
        re.compile(r"Detected \d+ oom[-_]kill events?\b|: task \d+: Out Of Memory|exceeded memory limit .*being killed"),
    ),
    ("crashed-node", re.compile(r"\bNode failure on \S|\bCANCELLED AT \S+ DUE TO NODE FAILURE\b")),
]

# Crash classes from the tail of the log (and Slurm's lines); the first match wins.
CRASH_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    *SLURM_PATTERNS,
    # Before Ray's messages: a full filesystem also kills Ray actors, whose deaths would read as a node crash.
    ("crashed-disk", re.compile(r"No space left on device|\[Errno 28\]|Disk quota exceeded|\[Errno 122\]")),
    # Definite statements only: Ray's worker- and raylet-death messages list "SIGKILL by the OOM killer" among
    # *possible* causes, so a bare "OOM killer" would read every lost node as an OOM.
    (
        "crashed-oom",
        re.compile(
            # MemoryError also matches torch's and Ray's OutOfMemoryError; the last two are the kernel's lines.
            r"MemoryError|CUDA out of memory|\bout of memory\b|running low on memory|"
            r"invoked oom-killer|Killed process \d+",
            re.I,
        ),
    ),
    (
        "crashed-nccl",
        re.compile(r"NCCL|Watchdog caught collective|ProcessGroupNCCL|collective operation timeout"),
    ),
    (
        "crashed-node",
        re.compile(
            r"NodeDiedError|node .* (died|dead)|RaySystemError|GCS .* (unavailable|failed)|"
            r"ActorUnavailableError|Ray cluster .* not .*nodes|Raylet is terminated|Invalid memory access from Raylet",
            re.I,
        ),
    ),
    # One of verl's Ray workers died while its node lives (kill -9 of a worker, a segfault, a kernel OOM kill
    # that left no definite line): Ray says the worker process died, and names no node or raylet. Recorded real
    # tails of both (tests/data/ray_crash_tails/) tell it from a lost node.
    ("crashed-worker", re.compile(r"ActorDiedError|worker process has died|Worker unexpectedly exits")),
]


@dataclass
class TrainerProcess:
    command: list[str]
    log_path: Path
    ckpt_dir: Path
    env: dict[str, str]
    # Hydra writes its outputs/<date>/<time>/ folder into the working directory: the run's logs, not
    # wherever the run was launched from.
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    last_step: int | None = None
    steps_seen: list[int] = field(default_factory=list)
    _log_offset: int = 0
    _run_start: int = 0
    _partial: str = ""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._run_start = self._log_offset
        log = open(self.log_path, "ab")  # appended across requeues, like submitit's own logs
        log.write(
            f"\n===== trainer start {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(self.command)}\n".encode()
        )
        log.flush()
        # Its own session: the chunk can stop the trainer and everything it forked as one group.
        self.proc = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=shield_from_slurm_signals,
        )
        log.close()
        self.started_at = time.time()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def new_steps(self) -> list[int]:
        """Training steps the trainer has logged since the last call."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                data = fh.read()
        except OSError:
            return []
        self._log_offset += len(data)
        text = self._partial + data.decode(errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # a line still being written
        steps = [int(m.group(1)) for line in lines if (m := STEP_LINE.search(line))]
        if steps:
            self.last_step = max(steps[-1], self.last_step or 0)  # a step read from TensorBoard may lead
            self.steps_seen += steps
        return steps

    def tracker_step(self) -> int | None:
        try:
            text = (self.ckpt_dir / TRACKER).read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGINT the trainer's process group, SIGKILL after the grace. Returns the exit status.

        SIGINT, not SIGTERM: the trainer ignores SIGTERM (see shield_from_slurm_signals).
        """
        if not self.proc or self.proc.poll() is not None:
            return self.poll()
        for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return self.poll()

    def log_tail(self, max_bytes: int = 20000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(self._run_start, fh.seek(0, 2) - max_bytes))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""


def classify_exit(code: int | None, reached_target: bool, log_tail: str, slurm_said: str = "") -> str:
    """finished only when the target step was reached; a clean exit without it is a failure too.

    `log_tail`: the trainer's log; `slurm_said`: Slurm's lines about this job (slurm_log.slurm_said), which
    are never in the trainer's log."""
    if code == 0 and reached_target:
        return "finished"
    for reason, pattern in CRASH_PATTERNS:
        if pattern.search(slurm_said) or pattern.search(log_tail):
            return reason
    if code == 0:
        return "exited-early"
    return "crashed-other"
