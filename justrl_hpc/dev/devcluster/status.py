"""Where a dev cluster stands: which daemons run (from the pid files), and node states from sinfo."""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from justrl_hpc.dev.devcluster.conf import _conf_ports, _etc_is_ours
from justrl_hpc.dev.devcluster.layout import DAEMONS, NODES, PARTITION, Layout, resolve_scratch, slurm_env
from justrl_hpc.dev.devcluster.procs import _recorded_pid
from justrl_hpc.dev.devcluster.strict import Confinement, read

# sinfo %T states of a node that can take jobs. "planned" (idle, held by backfill for a pending job), "mixed-"
# and "allocated+" (jobs still completing) are busy, not broken: backfill keeps a node planned until its next
# cycle (30 s), and CI once read the cluster as down for that long after a requeue (2026-12-07).
USABLE_STATES = {"idle", "mixed", "allocated", "completing", "planned", "reserved"}
# Trailing flags that leave a node usable; any other (`*` not responding, `~` powered off, `$` maintenance,
# `@`/`^` reboot, ...) does not.
HARMLESS_FLAGS = "+-"


def usable(state: str) -> bool:
    """Whether a node in this sinfo %T state can take jobs now."""
    return state.lower().rstrip(HARMLESS_FLAGS) in USABLE_STATES


@dataclass
class ClusterStatus:
    """Where one dev cluster stands. `daemons` maps munged/slurmctld/slurmd-nX to its pid, None when not running."""

    scratch: Path
    conf: Path
    partition: str = PARTITION
    daemons: dict[str, int | None] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)
    keeper: int | None = None
    ctld_port: int | None = None
    etc_conf: bool = False  # /etc/slurm/slurm.conf is this cluster's, so plain Slurm commands reach it
    started_now: bool = False  # this `up` call started the cluster from nothing
    confinement: Confinement | None = None  # how strictly jobs are confined, as the written confs say

    @property
    def strict(self) -> bool:
        return self.confinement is not None and self.confinement.strict

    @property
    def up(self) -> bool:
        return (
            all(self.daemons.get(d) for d in DAEMONS)
            and len(self.nodes) == len(NODES)
            and all(usable(self.nodes.get(n, "")) for n in NODES)
        )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["scratch"], d["conf"], d["up"] = str(self.scratch), str(self.conf), self.up
        d["strict"] = self.strict
        if self.confinement is not None:
            d["confinement"]["line"] = self.confinement.line()
        return d


def _sinfo_nodes(layout: Layout) -> dict[str, str]:
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %T"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
            env=slurm_env(layout.root),
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    nodes = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            nodes[parts[0]] = parts[1].lower()
    return nodes


def _status(layout: Layout, query_slurm: bool = True) -> ClusterStatus:
    daemons = {d: _recorded_pid(layout.pidfile(d)) for d in DAEMONS}
    ports = None
    confinement = None
    with contextlib.suppress(OSError):
        conf_text = layout.conf.read_text()
        ports = _conf_ports(conf_text)
        cgroup_text = layout.cgroup_conf.read_text() if layout.cgroup_conf.exists() else ""
        confinement = read(conf_text, cgroup_text)
    nodes = _sinfo_nodes(layout) if query_slurm and daemons["slurmctld"] and daemons["munged"] else {}
    return ClusterStatus(
        scratch=layout.root,
        conf=layout.conf,
        daemons=daemons,
        nodes=nodes,
        keeper=_recorded_pid(layout.keeper_pidfile),
        ctld_port=ports[0] if ports else None,
        etc_conf=_etc_is_ours(layout),
        confinement=confinement,
    )


def status(scratch: Path | str | None = None) -> ClusterStatus:
    """Which daemons run (pid each), node states from sinfo, the partition, the conf path."""
    return _status(Layout(resolve_scratch(scratch)))
