"""Nothing of an earlier incarnation survives on a node, and nothing of this one outlives it.

Every process a chunk starts inherits one environment variable, `JUSTRL_RUN_MARK=<run>/<job>/<restart>/<node>`:
Ray's daemons and workers, verl's processes, vLLM's EngineCore and its workers (`mp` executor), the node
agent. A command line cannot find them all (vLLM's workers and Ray's client server name no temp dir; a
SIGKILLed parent leaves them re-parented to init), an environment can: /proc/<pid>/environ is the one a
process was started with, so the chunk task itself, which sets the mark only for its children, never
matches. At a chunk's start each node ends what an earlier incarnation of this run, or a job Slurm no longer
has, left there; at its end, what this incarnation started; both remove the /dev/shm segments and Ray temp
dirs those left behind, and write one `cleanup` ledger event saying what was found.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil

from justrl_hpc.core.slurm_resources import RUN_MARK_ENV
from justrl_hpc.jobs.train.ray_cluster import kill_tree

MARK_ENV = RUN_MARK_ENV
SHM = Path("/dev/shm")
# What a chunk's processes put in /dev/shm: NCCL's and torch's segments, vLLM's message queues and Python
# multiprocessing's semaphores (Ray's object store lives in a file Ray itself removes).
SHM_PATTERNS = ("nccl-", "torch_", "vllm", "psm_", "sem.mp-", "cuda.shm")


@dataclass(frozen=True)
class Mark:
    run: str
    job_id: str
    restart: int
    node: str

    def __str__(self) -> str:
        return f"{self.run}/{self.job_id}/{self.restart}/{self.node}"

    @classmethod
    def parse(cls, text: str) -> Mark | None:
        parts = text.split("/")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])


def run_id(run_dir: Path) -> str:
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]


def mark_of(pid: int) -> Mark | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:
        return None
    key = MARK_ENV.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return Mark.parse(item[len(key):].decode(errors="replace"))
    return None


def marked() -> list[tuple[psutil.Process, Mark]]:
    own = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    out = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in own:
            continue
        mark = mark_of(proc.pid)
        if mark is not None:
            out.append((proc, mark))
    return out


def leftovers(current: Mark, active_jobs: set[str]) -> list[tuple[psutil.Process, Mark]]:
    """On this node: an earlier incarnation of this run, or any run's job that Slurm no longer has."""
    return [
        (p, m) for p, m in marked()
        if m.node == current.node and m != current
        and ((m.run == current.run and (m.job_id, m.restart) != (current.job_id, current.restart))
             or m.job_id not in active_jobs)
    ]


def ours(current: Mark) -> list[tuple[psutil.Process, Mark]]:
    return [(p, m) for p, m in marked() if m == current]


def kind_of(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    for kind, words in (("agent", ("justrl_hpc.monitor.agent",)), ("vllm", ("vllm", "EngineCore")),
                        ("trainer", ("verl.trainer",)), ("ray", ("ray", "raylet", "gcs_server", "plasma"))):
        if any(w in cmd for w in words):
            return kind
    return "other"


def _open_files() -> set[str]:
    paths: set[str] = set()
    for proc in psutil.process_iter(["pid"]):
        try:
            paths.update(f.path for f in proc.open_files())
            paths.update(m.path for m in proc.memory_maps(grouped=True) if m.path.startswith(str(SHM)))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return paths


def shm_snapshot(root: Path = SHM) -> set[str]:
    try:
        return {p.name for p in root.iterdir()}
    except OSError:
        return set()


def stray_segments(before: set[str], root: Path = SHM) -> list[Path]:
    """Segments that appeared after `before` was taken, of the kinds a chunk makes, that no process holds."""
    uid = os.getuid()
    candidates = []
    for name in shm_snapshot(root) - before:
        path = root / name
        try:
            if name.startswith(SHM_PATTERNS) and path.is_file() and path.stat().st_uid == uid:
                candidates.append(path)
        except OSError:
            continue
    if not candidates:
        return []
    held = _open_files()  # only now: reading every process's maps takes a moment
    return [p for p in candidates if str(p) not in held]


def snapshot_file(control: Path, mark: Mark) -> Path:
    return control / f"shm-{mark.job_id}-{mark.restart}-{mark.node}.json"


def sweep(
    found: list[tuple[psutil.Process, Mark]], segments: list[Path], temp_dirs: list[Path], grace_s: float = 1.0
) -> dict[str, object]:
    """End the processes, remove the segments and dirs; what was there, for the ledger."""
    kinds = Counter(kind_of(p) for p, _ in found)
    kill_tree([p for p, _ in found], grace_s)
    removed = 0
    for path in segments:
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    dirs = 0
    for d in temp_dirs:
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            dirs += 1
    return {
        "processes": sum(kinds.values()),
        "kinds": dict(sorted(kinds.items())) or None,
        "incarnations": sorted({f"{m.job_id}/{m.restart}" for _, m in found}) or None,
        "shm_removed": removed,
        "temp_dirs_removed": dirs,
    }


def at_start(current: Mark, control: Path, active_jobs: set[str]) -> dict[str, object]:
    """Mark this task's children, end what earlier incarnations left on this node, and take the /dev/shm
    snapshot this incarnation's end (or the next one's start) compares with."""
    os.environ[MARK_ENV] = str(current)
    found = leftovers(current, active_jobs)
    segments: list[Path] = []
    temp_dirs: list[Path] = []
    for old in sorted(control.glob(f"shm-*-{current.node}.json")):
        try:
            data = json.loads(old.read_text())
        except (OSError, ValueError):
            continue
        if data.get("mark") == str(current):
            continue
        segments += stray_segments(set(data.get("names", [])))
        temp_dirs += [Path(t) for t in data.get("temp_dirs", [])]
        old.unlink(missing_ok=True)
    result = sweep(found, segments, temp_dirs)
    snapshot_file(control, current).write_text(json.dumps({"mark": str(current), "names": sorted(shm_snapshot())}))
    return result


def note_temp_dir(control: Path, current: Mark, temp_dir: str) -> None:
    """A Ray temp dir this incarnation made, for whoever cleans up after it."""
    path = snapshot_file(control, current)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # the start's snapshot is gone: take one now, never an empty one (all "new")
        data = {"mark": str(current), "names": sorted(shm_snapshot())}
    data["temp_dirs"] = sorted({*data.get("temp_dirs", []), temp_dir})
    path.write_text(json.dumps(data))


def at_end(current: Mark, control: Path) -> dict[str, object]:
    """End what this incarnation started on this node and what it left in /dev/shm and /tmp."""
    path = snapshot_file(control, current)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None  # swept already (a teardown that runs twice): without the start's list, no segment is ours
    segments = stray_segments(set(data.get("names", []))) if data is not None else []
    temp_dirs = [Path(t) for t in data.get("temp_dirs", [])] if data is not None else []
    # What is left after the orderly stops (Ray's client server outlives `ray stop`) needs no long grace,
    # and the chunk's tail is time the allocation pays for.
    result = sweep(ours(current), segments, temp_dirs)
    path.unlink(missing_ok=True)
    return result
