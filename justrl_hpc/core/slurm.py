"""Thin helpers over squeue / scontrol. A missing or failing Slurm answers None, never a traceback."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime

ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
}


@dataclass
class JobState:
    job_id: str
    state: str
    reason: str
    end_time: float | None
    nodes: str
    restarts: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def _run(args: list[str], timeout: float = 20) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout


def controller_problem(timeout: float = 2.0) -> str | None:
    """None when Slurm's controller answers `scontrol ping` within `timeout`, else what was seen, in a few
    words. A query of a job while the controller is down waits out Slurm's own retries (~18 s) and then
    reads as "no such job", which it cannot know; ping says so at once."""
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return "scontrol not found"
    except subprocess.TimeoutExpired:
        return f"scontrol ping did not answer in {timeout:g} s"
    if out.returncode == 0 and " is UP" in out.stdout:
        return None
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else f"scontrol ping exited {out.returncode}"


def _parse_time(text: str) -> float | None:
    text = text.strip()
    if not text or text in ("N/A", "Unknown", "NONE"):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def job_state(job_id: str) -> JobState | None:
    """State of one job from scontrol (it still knows a job for MinJobAge after it ends)."""
    out = _run(["scontrol", "show", "job", "-o", str(job_id)])
    if not out:
        return None
    fields: dict[str, str] = {}
    for token in out.split():
        key, sep, value = token.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return JobState(
        job_id=str(job_id),
        state=fields.get("JobState", "UNKNOWN"),
        reason=fields.get("Reason", ""),
        end_time=_parse_time(fields.get("EndTime", "")),
        nodes=fields.get("NodeList", ""),
        restarts=int(fields.get("Restarts", "0") or 0),
    )


def job_end_time(job_id: str) -> float | None:
    """The end time Slurm holds for a running job (its wall-clock deadline), as epoch seconds."""
    out = _run(["squeue", "-h", "-j", str(job_id), "-o", "%e"])
    return _parse_time(out) if out else None


def expand_nodelist(nodelist: str) -> list[str]:
    out = _run(["scontrol", "show", "hostnames", nodelist])
    if out:
        return out.split()
    return [nodelist] if nodelist else []


def active_job_ids() -> list[str]:
    """Jobs Slurm still has queued or running (all users visible to this one)."""
    out = _run(["squeue", "-h", "-o", "%i"])
    return [line.split("_")[0] for line in out.split()] if out else []


def job_ids_named(name: str) -> list[str]:
    """This user's queued or running jobs of one name (a chain of singleton jobs)."""
    out = _run(["squeue", "-h", "--me", f"--name={name}", "-o", "%i"])
    return out.split() if out else []


def current_job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID")


def wait_for_state(job_id: str, states: set[str], timeout_s: float, poll_s: float = 1.0) -> JobState | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = job_state(job_id)
        if st and st.state in states:
            return st
        time.sleep(poll_s)
    return None
