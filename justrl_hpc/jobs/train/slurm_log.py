"""What Slurm itself said about a job: slurmstepd's and srun's crash lines in the job's stderr files.

Slurm reports what it did to a step (the cgroup OOM killer's kills, a node it lost) on the step's stderr, which
submitit and train.sbatch point at `<job>_<task>_log.err` under the run's logs (RunPaths.slurm_stderr); verl's
trainer log never holds them. The files are appended to across requeues (--open-mode=append), so a chunk marks
their sizes as it starts (`marks`) and reads only what follows (`slurm_said(..., since=marks)`) when its trainer
exits; without a mark the files' tails still hold how an earlier incarnation of the job ended.

When the lines arrive: slurmstepd counts a step's OOM kills when that step ends on a node, so a kill on a node
whose task lives on (the head node's, where the chunk driver runs) is written only as the step ends; a node's
task that the kill ended, and srun's `Node failure on …`, are written while the chunk still runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from justrl_hpc.core.paths import RunPaths
from justrl_hpc.jobs.train.trainer_process import SLURM_PATTERNS, classify_exit

MAX_BYTES = 4 << 20  # per file: a day's driver log is far less; Slurm's lines come at a task's end


def slurm_lines(text: str) -> list[str]:
    """The lines of `text` in which Slurm says a step was OOM-killed or lost a node; nothing else (the driver's
    own log lines share these files)."""
    return [line for line in text.splitlines() if any(p.search(line) for _, p in SLURM_PATTERNS)]


def marks(paths: RunPaths, job_id: str) -> dict[str, int]:
    """Each of the job's stderr files and its size now: what a chunk's own lines will follow."""
    out = {}
    for path in paths.slurm_stderr(job_id):
        try:
            out[str(path)] = path.stat().st_size
        except OSError:
            continue
    return out


def slurm_said(paths: RunPaths, job_id: str, since: dict[str, int] | None = None, max_bytes: int = MAX_BYTES) -> str:
    """Slurm's crash lines in the job's stderr files, written after `since` (marks) or, without it, in each
    file's last `max_bytes`; a file missing from `since` is new since the mark and read whole."""
    found: list[str] = []
    for path in paths.slurm_stderr(job_id):
        found += slurm_lines(_read_from(path, None if since is None else since.get(str(path), 0), max_bytes))
    return "\n".join(found)


def _read_from(path: Path, start: int | None, max_bytes: int) -> str:
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if start is None or start > size:  # no mark, or the file was cut since: its tail
                start = 0
            fh.seek(max(start, size - max_bytes))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


ENDINGS = frozenset({"trainer-exited", "requeued", "finished", "failed", "chunk-failed", "chunk-lost"})


def lost_chunk(events: list[dict], paths: RunPaths) -> dict | None:
    """The previous chunk, when it wrote no ending (killed outright: the cgroup OOM killer on its head node, a
    node failure, a SIGKILL), with how Slurm says it ended: the fields of a `chunk-lost` event. Called by a
    chunk before its own `started`, when Slurm's lines about the previous incarnation are all written."""
    starts = [i for i, e in enumerate(events) if e.get("event") == "started"]
    if not starts or any(e.get("event") in ENDINGS for e in events[starts[-1]:]):
        return None
    prev = events[starts[-1]]
    said = slurm_said(paths, str(prev.get("job_id")))
    reason = classify_exit(None, False, "", said) if said else "killed"
    return {"job_id": prev.get("job_id"), "chunk": prev.get("chunk"), "reason": reason,
            "slurm_said": said.splitlines()[-1][:300] if said else None}
