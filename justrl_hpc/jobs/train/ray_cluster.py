"""Ray across the allocation: head on the first node, the others join, wait until every node is in.

Per-job ports and temp dir so two jobs sharing a node (or the dev cluster's four nodes on one host) never
collide; teardown kills only the processes of this job's Ray (found by its temp dir), never `ray stop`,
which would take down every Ray of the user on the node.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from justrl_hpc.jobs.train.signals import shield_from_slurm_signals

_PORT_STRIDE = 40
# Per-rank offsets matter only where ranks share a host (the dev cluster's fake nodes); six fit in a slot. On a
# real cluster every rank is its own host, so rank 6 reusing rank 0's offsets collides with nothing.
_RANKS_PER_SLOT = 6


@dataclass
class RayHead:
    address: str  # ip:port
    temp_dir: str
    job_id: str


def ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """Where the kernel starts handing out ephemeral source ports (32768 unless the node says otherwise)."""
    try:
        with open(path) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def ports(
    base: int, job_id: str, rank: int, below: int | None = None, gcs: int | None = None
) -> dict[str, int]:
    """The job's ports on one rank; a joining rank passes the head's `gcs` so its ports are in the head's slot
    even where its own node has another ephemeral range."""
    if gcs is None:
        # Every fixed port stays below the ephemeral range: any outgoing connection on the node may hold a port
        # there by the time `ray start` binds it. The dev cluster showed it: job 288's slot was 37899, the
        # runtime-env agent found its port taken, the raylet fate-shared with it and the chunk lost 90 s.
        below = ephemeral_low() if below is None else below
        slots = max(1, (below - base - _PORT_STRIDE) // _PORT_STRIDE)
        gcs = base + (int(job_id) % slots) * _PORT_STRIDE if job_id.isdigit() else base
    node = gcs + 10 + (rank % _RANKS_PER_SLOT) * 5
    return {
        "gcs": gcs,
        "client": gcs + 1,
        "dashboard": gcs + 2,
        "agent_listen": node,
        "agent_grpc": node + 1,
        "runtime_env": node + 2,
        "metrics": node + 3,
    }


def temp_dir_for(job_id: str, restart: int = 0) -> str:
    # Short on purpose: Ray's socket paths live under it and Unix sockets cap at 107 bytes. The restart
    # count makes each incarnation of a requeued job distinct, so a stale one can be told from the live one.
    return f"/tmp/justrl-ray-{job_id}-{restart}"


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _common_args(p: dict[str, int], rank: int, num_cpus: int, num_gpus: int, ip: str) -> list[str]:
    return [
        f"--node-ip-address={ip}",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        f"--dashboard-agent-listen-port={p['agent_listen']}",
        f"--dashboard-agent-grpc-port={p['agent_grpc']}",
        f"--runtime-env-agent-port={p['runtime_env']}",
        f"--metrics-export-port={p['metrics']}",
        "--disable-usage-stats",
    ]


def start_head(
    job_id: str, restart: int, ip: str, base_port: int, num_cpus: int, num_gpus: int, log: Path
) -> RayHead:
    p = ports(base_port, job_id, 0)
    tmp = temp_dir_for(job_id, restart)
    args = [
        _ray_bin(),
        "start",
        "--head",
        f"--port={p['gcs']}",
        f"--temp-dir={tmp}",
        f"--ray-client-server-port={p['client']}",
        f"--dashboard-port={p['dashboard']}",
        "--include-dashboard=false",
        *_common_args(p, 0, num_cpus, num_gpus, ip),
    ]
    _run_logged(args, log)
    return RayHead(address=f"{ip}:{p['gcs']}", temp_dir=tmp, job_id=job_id)


def joiner_temp_dir(head: RayHead, rank: int) -> str:
    """A joining rank's own session folder. Where ranks share a host (the dev cluster), a joiner that took
    the head's folder would run a second log monitor over the same worker logs, and every line the trainer
    prints would reach the driver's console (and the chunk's step count) twice."""
    return f"{head.temp_dir}-r{rank}"


def join(head: RayHead, rank: int, ip: str, base_port: int, num_cpus: int, num_gpus: int, log: Path) -> str:
    """Join the head; returns this rank's temp dir (what `stop` ends it by)."""
    p = ports(base_port, head.job_id, rank, gcs=int(head.address.rsplit(":", 1)[1]))
    tmp = joiner_temp_dir(head, rank)
    args = [_ray_bin(), "start", f"--address={head.address}", f"--temp-dir={tmp}",
            *_common_args(p, rank, num_cpus, num_gpus, ip)]
    _run_logged(args, log)
    return tmp


def _run_logged(args: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run(
            args,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=180,
            check=False,
            preexec_fn=shield_from_slurm_signals,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"`ray start` exited {proc.returncode} (see {log})")


def count_nodes(address: str, timeout_s: float = 30) -> tuple[int, float, float]:
    """(alive nodes, CPUs, GPUs) as Ray's GCS sees them, asked from a short-lived subprocess.

    A subprocess keeps `import ray` and a driver connection out of the long-lived chunk process.
    """
    code = (
        f"import json,ray;ray.init(address={address!r},logging_level='ERROR',log_to_driver=False);"
        "n=[x for x in ray.nodes() if x['Alive']];"
        "print(json.dumps([len(n),sum(x['Resources'].get('CPU',0) for x in n),"
        "sum(x['Resources'].get('GPU',0) for x in n)]))"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
        nodes, cpus, gpus = json.loads(out.stdout.strip().splitlines()[-1])
        return int(nodes), float(cpus), float(gpus)
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return 0, 0.0, 0.0


def wait_for_nodes(
    address: str, nodes: int, gpus_per_node: int, timeout_s: float, poll_s: float = 2.0
) -> tuple[int, float]:
    """Block until Ray sees `nodes` alive nodes (and their GPUs); return (nodes, gpus) last seen.

    verl sums GPUs once at start and fails if short; it never waits, so the chunk does.
    """
    deadline = time.monotonic() + timeout_s
    seen, gpus = 0, 0.0
    while time.monotonic() < deadline:
        seen, _, gpus = count_nodes(address, timeout_s=max(5.0, min(30.0, deadline - time.monotonic())))
        if seen >= nodes and gpus >= nodes * gpus_per_node:
            return seen, gpus
        time.sleep(poll_s)
    return seen, gpus


NODES_LOST_WAIT_S = 40.0


def nodes_lost(address: str, nodes: int, wait_s: float = NODES_LOST_WAIT_S, poll_s: float = 3.0) -> int:
    """How many of the job's `nodes` Ray's GCS has declared dead, waiting up to `wait_s` for it to decide.

    A lost node can show first as an error the crash patterns do not name (a socket closed under a surviving
    rank), seconds before Ray's health check (5 misses, 3 s apart, by default) marks the node dead. 0 when
    none is, or when the GCS cannot be asked (the crash text then speaks for itself).
    """
    deadline = time.monotonic() + wait_s
    while True:
        alive = count_nodes(address, timeout_s=max(5.0, min(20.0, deadline - time.monotonic())))[0]
        if 0 < alive < nodes:
            return nodes - alive
        if time.monotonic() + poll_s >= deadline:
            return 0
        time.sleep(poll_s)


def publish_head(control_dir: Path, head: RayHead, restart: int) -> None:
    """Tell the other ranks where the head is (they may not resolve node names; the shared run folder works)."""
    from justrl_hpc.core.run_folder import atomic_write

    atomic_write(control_dir / f"ray-{head.job_id}-{restart}.json", json.dumps(asdict(head)))


def read_head(
    control_dir: Path, job_id: str, restart: int, timeout_s: float, unless: Path | None = None
) -> RayHead | None:
    """The head the driver published, or None after the timeout or once `unless` exists (the driver ended
    the chunk before starting Ray, as after a failed preflight)."""
    path = control_dir / f"ray-{job_id}-{restart}.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (unless is not None and unless.exists()):
        if path.is_file():
            try:
                return RayHead(**json.loads(path.read_text()))
            except (ValueError, TypeError):
                pass  # caught mid-rename on a slow shared filesystem
        time.sleep(0.5)
    return None


_TEMP_DIR = re.compile(r"/tmp/justrl-ray-(\d+)-(\d+)")


def processes_of(temp_dir: str) -> list[psutil.Process]:
    """This job's Ray daemons (their command lines name the temp dir) and everything they started."""
    return _with_children(_matching(lambda cmd: temp_dir in cmd))


def stale_processes(job_id: str, restart: int, active_jobs: set[str]) -> list[psutil.Process]:
    """Ray left on this node by an earlier incarnation of this job or by a job that no longer runs.

    A chunk killed hard (SIGKILL, node trouble) never tears down its Ray: the daemons, started in their own
    sessions, outlive the job and hold ports and memory the next chunk needs.
    """

    def stale(cmd: str) -> bool:
        m = _TEMP_DIR.search(cmd)
        if not m:
            return False
        other_job, other_restart = m.group(1), int(m.group(2))
        if other_job == job_id:
            return other_restart < restart
        return other_job not in active_jobs

    return _with_children(_matching(stale))


def _matching(pred: Any) -> list[psutil.Process]:
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if proc.pid != os.getpid() and pred(cmd):
            roots.append(proc)
    return roots


def _with_children(roots: list[psutil.Process]) -> list[psutil.Process]:
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def kill_tree(procs: list[psutil.Process], grace_s: float = 1.0) -> int:
    # SIGINT and SIGTERM, then SIGKILL after a short grace. Ray's daemons ignore SIGINT (Ray starts them so)
    # and gcs_server and raylet outlast 6 s of SIGTERM here (measured 2026-12-08): with SIGINT and a 5 s grace
    # every teardown waited the whole grace, and on a worker node that held the job's end (and its requeue)
    # ~8 s. Nothing of an ended incarnation needs an orderly exit: its checkpoint is saved or set aside.
    for sig in (signal.SIGINT, signal.SIGTERM):
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5.0)
    return len(procs)


def stop(temp_dir: str) -> int:
    """Stop this job's Ray on this node; returns how many processes were ended."""
    return kill_tree(processes_of(temp_dir))
