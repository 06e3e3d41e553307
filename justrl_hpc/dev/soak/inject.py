"""The soak's faults, each done the way it happens on a cluster: Slurm's own commands, signals to the real
processes, a real filesystem filling up. Each returns a short description for the soak's fault log and, where
the fault has to be undone (a node, a full disk), a function the runner calls once the chunk has moved on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from justrl_hpc.dev.soak.save_fault import ARM

Undo = Callable[[], None]


@dataclass
class Target:
    """What a fault acts on: the run, its current job and chunk, the dev cluster, the daemon."""

    run_dir: Path
    job_id: str
    hosts: list[str]
    trainer_pid: int | None
    scratch: Path
    restart_daemon: Callable[[], int]
    filler: Path  # where disk-full puts its file (on the checkpoints' own filesystem)
    nvml: Path  # the replayed NVML recordings, one per node (nvml-<node>.jsonl): the run's cluster.nvml_backend


def _run(*cmd: str) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return f"{' '.join(cmd)} → {out.returncode}" + (f" ({out.stderr.strip()[:120]})" if out.returncode else "")


def usr2_preemption(t: Target) -> tuple[str, Undo | None]:
    return _run("scancel", "--signal=USR2", t.job_id), None


def sigterm_preemption(t: Target) -> tuple[str, Undo | None]:
    return _run("scancel", "--signal=TERM", t.job_id), None


def outside_requeue(t: Target) -> tuple[str, Undo | None]:
    return _run("scontrol", "requeue", t.job_id), None


def save_now(t: Target) -> tuple[str, Undo | None]:
    return _run(sys.executable, "-m", "justrl_hpc.cli", "save-now", str(t.run_dir)), None


def kill9_trainer(t: Target) -> tuple[str, Undo | None]:
    if not t.trainer_pid:
        return "no trainer pid yet", None
    try:
        os.kill(t.trainer_pid, signal.SIGKILL)
    except ProcessLookupError:
        return f"trainer {t.trainer_pid} already gone", None
    return f"kill -9 {t.trainer_pid}", None


def kill9_in_save(t: Target) -> tuple[str, Undo | None]:
    arm = t.run_dir / "control" / ARM
    arm.write_text(f"{time.time()}\n")

    def disarm() -> None:
        arm.unlink(missing_ok=True)  # the chunk ended without a save: the fault did not happen

    return f"armed {arm.name}: the next rank-0 shard write is cut and the trainer killed", disarm


def job_processes(job_id: str, node: str) -> list[int]:
    """Every process of the job on one simulated node (its Slurm environment says so) and its slurmstepds."""
    found: set[int] = set()
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            env = open(f"/proc/{proc}/environ", "rb").read().split(b"\0")
            stat = open(f"/proc/{proc}/stat").read()
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in env and f"SLURMD_NODENAME={node}".encode() in env:
            found.add(int(proc))
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            try:
                if open(f"/proc/{ppid}/comm").read().strip() == "slurmstepd":
                    found.add(ppid)
            except OSError:
                pass
    return sorted(found)


def node_lost(t: Target) -> tuple[str, Undo | None]:
    from justrl_hpc.dev.devcluster import cluster as dc

    if len(t.hosts) < 2:
        return "one node only: nothing to lose", None
    node = t.hosts[-1]  # a worker node: the chunk's driver lives on, as on a cluster
    slurmd = dc._recorded_pid(dc.Layout(t.scratch).pidfile(f"slurmd-{node}"))
    victims = [p for p in [slurmd, *job_processes(t.job_id, node)] if p]
    for sig in (signal.SIGSTOP, signal.SIGKILL):  # the whole node at one instant
        for pid in victims:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def back() -> None:
        dc.up(t.scratch, log=lambda line: None)

    return f"node {node} lost ({len(victims)} processes, slurmd {slurmd})", back


def disk_full(t: Target) -> tuple[str, Undo | None]:
    st = os.statvfs(t.filler.parent)
    free = st.f_bavail * st.f_frsize
    size = max(0, free - 256 * 1024)  # a quarter MiB left: no checkpoint fits
    with open(t.filler, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, size)

    def free_it() -> None:
        t.filler.unlink(missing_ok=True)

    return f"filled {t.filler.parent} ({size / 2**20:.1f} MiB, {free / 2**20:.1f} MiB were free)", free_it


def ctld_restart(t: Target) -> tuple[str, Undo | None]:
    from justrl_hpc.dev.devcluster import cluster as dc

    pid = dc._recorded_pid(dc.Layout(t.scratch).pidfile("slurmctld"))
    if not pid:
        return "no slurmctld pid", None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.2)
    time.sleep(2)
    dc.up(t.scratch, log=lambda line: None)
    return f"slurmctld {pid} stopped and started again", None


def daemon_restart(t: Target) -> tuple[str, Undo | None]:
    pid = t.restart_daemon()
    return f"daemon kill -9, restarted as {pid}", None


def _verl_worker(t: Target) -> int | None:
    """One of verl's FSDP workers of this run, on the worker node where there is one (by the run mark)."""
    from justrl_hpc.jobs.train import cleanup

    run = cleanup.run_id(t.run_dir)
    found = []
    for proc, mark in cleanup.marked():
        try:
            if mark.run == run and mark.job_id == t.job_id and proc.cmdline()[0].startswith("ray::WorkerDict"):
                found.append((mark.node == t.hosts[-1], proc.pid))
        except (OSError, IndexError):
            continue
    return max(found)[1] if found else None


def _signal_worker(t: Target, sig: signal.Signals, what: str) -> tuple[str, Undo | None]:
    pid = _verl_worker(t)
    if pid is None:
        return "no verl worker found", None
    os.kill(pid, sig)
    return f"{what} of verl worker {pid}", None


def trainer_crash(t: Target) -> tuple[str, Undo | None]:
    return _signal_worker(t, signal.SIGKILL, "kill -9")


def hang(t: Target) -> tuple[str, Undo | None]:
    return _signal_worker(t, signal.SIGSTOP, "SIGSTOP")


def plant_row_remap_failure(recording: Path) -> None:
    """GPU 2 of a replayed recording reports a failed row remap from its first reading on: hard evidence."""
    import json

    lines = recording.read_text().splitlines()
    first = json.loads(lines[1])
    first["gpus"][2]["DCGM_FI_DEV_ROW_REMAP_FAILURE"] = 1
    tmp = recording.with_suffix(".planted")
    tmp.write_text("\n".join([lines[0], json.dumps(first), *lines[2:]]) + "\n")
    os.replace(tmp, recording)


def bad_node(t: Target) -> tuple[str, Undo | None]:
    node = t.hosts[-1]
    recording = t.nvml / f"nvml-{node}.jsonl"
    healthy = recording.read_text()
    plant_row_remap_failure(recording)
    ended = _run("scancel", "--signal=USR2", t.job_id)

    def repaired() -> None:
        recording.write_text(healthy)

    return f"{node}: GPU 2 row remap failed (replayed NVML); {ended}", repaired


def driver_upgrade(t: Target) -> tuple[str, Undo | None]:
    import json

    for recording in sorted(t.nvml.glob("nvml-*.jsonl")):
        lines = recording.read_text().splitlines()
        header = json.loads(lines[0])
        header["inventory"].update(driver=UPGRADED_DRIVER[0], cuda=UPGRADED_DRIVER[1])
        tmp = recording.with_suffix(".upgraded")
        tmp.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
        os.replace(tmp, recording)
    return f"every node's driver now {UPGRADED_DRIVER[0]} (CUDA {UPGRADED_DRIVER[1]}) in its replayed NVML", None


UPGRADED_DRIVER = ("550.54.15", "12.4")


INJECT: dict[str, Callable[[Target], tuple[str, Undo | None]]] = {
    "usr2-preemption": usr2_preemption,
    "paced-limit-signal": usr2_preemption,  # the runner's own pace (run.Soak._pace), not drawn
    "sigterm-preemption": sigterm_preemption,
    "outside-requeue": outside_requeue,
    "save-now": save_now,
    "kill9-trainer": kill9_trainer,
    "kill9-in-save": kill9_in_save,
    "node-lost": node_lost,
    "disk-full": disk_full,
    "ctld-restart": ctld_restart,
    "daemon-restart": daemon_restart,
    "trainer-crash": trainer_crash,
    "hang": hang,
    "bad-node": bad_node,
    "driver-upgrade": driver_upgrade,
}
