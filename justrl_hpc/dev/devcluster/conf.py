"""slurm.conf for the dev cluster, the ports it takes, and /etc/slurm/slurm.conf pointing at it.

Plain `sbatch`/`squeue` (submitit calls plain `sbatch`) find the cluster through /etc/slurm/slurm.conf, which
`up` writes when it is absent or was written by this package (MARKER on its first line); jobs get SLURM_CONF
from slurmd, so `srun` and `scontrol requeue` inside a job talk to the same cluster.
"""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path

from justrl_hpc.dev.devcluster.layout import NODES, PARTITION, DevClusterError, Layout, Log, resolve_scratch
from justrl_hpc.dev.devcluster.procs import _port_free, _recorded_pid, _write_atomic
from justrl_hpc.dev.devcluster.strict import (
    DEF_MEM_PER_NODE_MB,
    NODE_MEMORY_MB,
    Confinement,
    slurm_conf_lines,
)

ETC_CONF = Path("/etc/slurm/slurm.conf")
# The old package name on purpose: confs already on disk (/etc/slurm/slurm.conf included) carry it.
MARKER = "# written by justrl_hpc.devcluster"
CPUS_PER_NODE = 2
DEFAULT_CTLD_PORT = 6817
DEFAULT_SLURMD_PORT = 17001


def _hostname() -> str:
    return socket.gethostname().split(".")[0]


def render_conf(layout: Layout, ctld_port: int, slurmd_port: int, confinement: Confinement) -> str:
    """slurm.conf for the dev cluster: 4 nodes on this host, partition dev, no accounting, jobs confined by
    cgroups as `confinement` says (strict.py)."""
    root = layout.root
    host = _hostname()
    last = slurmd_port + len(NODES) - 1
    lines = [
        f"{MARKER}; scratch {root}",
        "ClusterName=justrl-dev",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # A private munge socket: the cluster neither needs nor disturbs a system munged.
        f"AuthInfo=socket={layout.socket}",
        *slurm_conf_lines(confinement),
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        f"StateSaveLocation={layout.state}",
        f"SlurmdSpoolDir={layout.spool}/%n",
        f"SlurmctldPidFile={layout.run}/slurmctld.slurm.pid",
        f"SlurmdPidFile={layout.run}/slurmd-%n.slurm.pid",
        f"SlurmctldLogFile={layout.log}/slurmctld.log",
        f"SlurmdLogFile={layout.log}/slurmd-%n.log",
        "KillWait=5",
        "MinJobAge=60",
        "JobRequeue=1",
        # A node whose slurmd comes back registers as usable again (repairs after a daemon died).
        "ReturnToService=2",
        "SlurmdTimeout=60",
        # Trust slurm.conf over the hardware: a smaller machine must not drain the fake nodes.
        "SlurmdParameters=config_overrides",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        f"DefMemPerNode={DEF_MEM_PER_NODE_MB}",
        f"NodeName=n[1-{len(NODES)}] NodeHostname={host} NodeAddr=127.0.0.1 Port=[{slurmd_port}-{last}] "
        f"CPUs={CPUS_PER_NODE} RealMemory={NODE_MEMORY_MB} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=n[1-{len(NODES)}] Default=YES OverSubscribe=FORCE:4 "
        "MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _conf_ports(text: str) -> tuple[int, int] | None:
    ctld = re.search(r"^SlurmctldPort=(\d+)$", text, re.M)
    node = re.search(r"^NodeName=.*\bPort=\[(\d+)-\d+\]", text, re.M)
    return (int(ctld.group(1)), int(node.group(1))) if ctld and node else None


def _conf_scratch(text: str) -> Path | None:
    m = re.match(re.escape(MARKER) + r"; scratch (\S+)", text)
    return Path(m.group(1)) if m else None


def _block_free(ctld: int, node: int) -> bool:
    return all(_port_free(p) for p in (ctld, *range(node, node + len(NODES))))


def _choose_ports(layout: Layout, starting: bool) -> tuple[int, int]:
    """A running cluster keeps its ports. A start takes the first free block: the usual 6817 and 17001-17004
    for the default cluster, a block from 17010 up for a second cluster in another folder (tests)."""
    if not starting:
        with contextlib.suppress(OSError):
            ports = _conf_ports(layout.conf.read_text())
            if ports:
                return ports
    candidates = [(DEFAULT_CTLD_PORT, DEFAULT_SLURMD_PORT)] if layout.root == resolve_scratch(None) else []
    candidates += [(17000 + 10 * k, 17001 + 10 * k) for k in range(1, 60)]
    for ctld, node in candidates:
        if _block_free(ctld, node):
            return ctld, node
    raise DevClusterError(
        "no free block of 5 TCP ports for slurmctld and the 4 slurmd (tried 6817/17001 and up)"
    )


def _etc_is_ours(layout: Layout) -> bool:
    try:
        return _conf_scratch(ETC_CONF.read_text()) == layout.root
    except OSError:
        return False


def _write_etc_conf(layout: Layout, text: str, log: Log) -> None:
    """Point plain Slurm commands at this cluster, unless /etc/slurm/slurm.conf belongs to someone else.

    Only the default cluster ($JUSTRL_DEVCLUSTER_DIR or /tmp/justrl-devcluster) takes it: a second cluster
    in another folder (tests of this package) is reached through slurm_env() and must not steal it.
    """
    if layout.root != resolve_scratch(None):
        return
    try:
        current = ETC_CONF.read_text()
    except FileNotFoundError:
        current = None
    except OSError as exc:
        log(f"devcluster: cannot read {ETC_CONF} ({exc}); Slurm commands need SLURM_CONF={layout.conf}")
        return
    if current == text:
        return
    if current is not None:
        other = _conf_scratch(current)
        if other is None:
            log(f"devcluster: {ETC_CONF} is not ours, left alone; export SLURM_CONF={layout.conf}")
            return
        if other != layout.root and _recorded_pid(Layout(other).pidfile("slurmctld")):
            log(
                f"devcluster: {ETC_CONF} belongs to the dev cluster at {other}, which is up; "
                f"export SLURM_CONF={layout.conf} to reach this one"
            )
            return
    try:
        ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(ETC_CONF, text)
    except OSError as exc:
        log(f"devcluster: cannot write {ETC_CONF} ({exc}); Slurm commands need SLURM_CONF={layout.conf}")
