"""Every node's part of a chunk: its Ray resources and address, the node agent, clean-up of what earlier
chunks left, and ranks ≥ 1's whole life (join the driver's Ray, wait until it is done)."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from justrl_hpc.core import slurm
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.run_folder import load
from justrl_hpc.jobs.train import cleanup, preflight, ray_cluster, stacks
from justrl_hpc.jobs.train.addresses import AddressError, address_env, node_address
from justrl_hpc.jobs.train.environment import ChunkInfo, log, node_name
from justrl_hpc.jobs.train.signals import _prctl_pdeathsig, ignore_limit_signal, shield_from_slurm_signals


def ray_resources(resolved: Any) -> tuple[int, int]:
    """(CPUs, GPUs) each node's Ray advertises. On the CPU backend the GPUs are a count Ray schedules
    verl's workers by (nothing touches CUDA) and the CPUs logical: each of verl's placement bundles asks
    for several."""
    cpus, gpus = resolved.cluster.cpus_per_node, resolved.cluster.gpus_per_node
    if resolved.recipe.device == "cpu":
        return max(cpus, 16), resolved.recipe.ranks_per_node
    return cpus, gpus


def put_code_first(run_dir: Path) -> None:
    """The run's code snapshot ahead of whatever PYTHONPATH the job had, for every process this task
    starts from now on: `ray start`'s raylets pass it to verl's workers (the deadline hook, the backend)."""
    code = str(RunPaths(run_dir).code)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != code]
    os.environ["PYTHONPATH"] = os.pathsep.join([code, *parts])


def start_agent(info: ChunkInfo, backend: str = "auto") -> subprocess.Popen[bytes] | None:
    """The node telemetry agent (the monitor's eyes on this node); absent module → none, said once."""
    if importlib.util.find_spec("justrl_hpc.monitor.agent") is None:
        log("node agent not available in this code snapshot; no telemetry from this node")
        return None
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    logf = open(info.paths.agent_log(host), "ab")
    parent = os.getpid()

    def preexec() -> None:
        shield_from_slurm_signals()
        # In its own session the agent outlives a chunk task that Slurm kills outright (a requeue ends the
        # other ranks within a second, before their cleanup runs) where process tracking is by process group:
        # it would sample a finished job's folder forever. Linux tells it when its parent goes (SIGINT = its
        # clean stop, the same as stop_process sends).
        _prctl_pdeathsig(signal.SIGINT)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "justrl_hpc.monitor.agent", "--run-dir", str(info.run_dir), "--host", host,
         "--backend", backend],
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=preexec,
    )
    logf.close()
    return proc


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # started ignoring SIGTERM
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def clean_stale(info: ChunkInfo) -> int:
    """End Ray left on this node by earlier incarnations of this job or by jobs that are gone."""
    active = set(slurm.active_job_ids())
    active.add(info.job_id)
    procs = ray_cluster.stale_processes(info.job_id, info.restart, active)
    if procs:
        log(f"ending {len(procs)} stale Ray processes left by earlier chunks on this node")
    return ray_cluster.kill_tree(procs)


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(1.0)


def run_node(info: ChunkInfo) -> str:
    """Ranks ≥ 1: join the driver's Ray, run the node agent, wait until the driver is done."""
    resolved = load(info.run_dir)
    ledger = Ledger(info.run_dir)
    mark = cleanup.Mark(cleanup.run_id(info.run_dir), info.job_id, info.restart, node_name())
    _cleanup_event(ledger, info, "start", cleanup.at_start(mark, info.control, set(slurm.active_job_ids()) | {info.job_id}))
    clean_stale(info)
    agent = start_agent(info, resolved.cluster.nvml_backend)
    try:
        put_code_first(info.run_dir)
        result = preflight.on_this_node(resolved, info.run_dir, ledger, info.job_id, None, info.rank)
        preflight.publish(info.control, info.job_id, info.restart, info.rank, result)
        if not result["ok"]:
            log(f"rank {info.rank}: preflight failed ({result['failed'][0]}); the driver ends the chunk")
            _wait_for(info.done_file, resolved.cluster.ray_wait_timeout_s * 2)
            return "preflight-failed"
        head = ray_cluster.read_head(
            info.control, info.job_id, info.restart, timeout_s=resolved.cluster.ray_wait_timeout_s,
            unless=info.done_file,
        )
        if head is None:
            log(f"rank {info.rank}: no Ray head published; the driver will report it")
            return "no-head"
        try:
            ip, how = node_address(resolved.cluster.network_interface, head.address.rsplit(":", 1)[0], info.nodes)
        except AddressError as exc:
            # The driver's wait for Ray then reports the missing node; this line says why it is missing.
            ledger.append("preflight", job_id=info.job_id, chunk=None, node=result["node"],
                                        rank=info.rank, ok=False, failed=[f"address: {exc}"])
            return "no-address"
        log(f"rank {info.rank}: joining Ray at {head.address} as {ip} ({how})")
        os.environ.update(address_env(resolved.cluster.network_interface, ip, how))
        cpus, gpus = ray_resources(resolved)
        own_ray = ray_cluster.join(
            head,
            info.rank,
            ip,
            resolved.cluster.ray_port,
            cpus,
            gpus,
            info.paths.ray_log(info.job_id),
        )
        cleanup.note_temp_dir(info.control, mark, own_ray)
        answered: set[str] = set()
        while not info.done_file.exists():
            stacks.answer(mark, info.control, answered)  # a hung trainer's stacks, when the driver asks
            time.sleep(1.0)
        ignore_limit_signal(f"rank {info.rank} job {info.job_id}")
        ray_cluster.stop(own_ray)  # its own Ray: nothing of this chunk outlives it on this node
        return "done"
    finally:
        stop_process(agent)
        _cleanup_event(ledger, info, "end", cleanup.at_end(mark, info.control))


def _cleanup_event(ledger: Ledger, info: ChunkInfo, when: str, found: dict[str, Any]) -> None:
    what = ", ".join(f"{n} {k}" for k, n in (found["kinds"] or {}).items()) or "no processes"
    log(f"rank {info.rank} job {info.job_id}: cleanup at {when}: {what}, {found['shm_removed']} shm segments, "
        f"{found['temp_dirs_removed']} temp dirs")
    if found["processes"] or found["shm_removed"] or found["temp_dirs_removed"]:
        ledger.append("cleanup", job_id=info.job_id, chunk=None, when=when, node=node_name(), rank=info.rank, **found)
