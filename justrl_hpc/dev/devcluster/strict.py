"""How strictly the dev cluster confines its jobs: Slurm's cgroup plugins, as GPU sites run them.

With `proctrack/cgroup` every process of a step lives in the job's cgroup, so Slurm's signals at a cancel, a
limit or a requeue reach all of them (Ray's agents, vLLM's EngineCore) and nothing outlives the job; with
`task/cgroup` a node task gets the cores and the memory its job asked for, and no more. Slurm 22.05's
cgroup/v1 plugin needs the v1 controllers below mounted and writable. Where one is missing the cluster falls
back to tracking by descent (`proctrack/linuxproc`, `task/none`) and says so on every `up` and `status`,
never silently.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# proctrack/cgroup needs freezer; task/cgroup's ConstrainCores cpuset, ConstrainRAMSpace memory; Slurm's v1
# plugin creates its devices hierarchy at every step whether or not devices are constrained.
CONTROLLERS = ("cpuset", "memory", "freezer", "devices")
# Memory is a consumable resource (CR_Core_Memory), as on GPU sites: a job's --mem is its cgroup's limit, and a
# job that asks for none gets DefMemPerNode (with plain CR_Core Slurm allocates 0 MB and the limit is the
# whole host). Sized so that a training chunk (configs/clusters/dev.yaml mem_gb) and a 1-CPU monitor job
# share a node, and four jobs that ask nothing fit each node. 4000 MB holds a rehearsal chunk whose run.yaml
# asks no memory (runs made before the cluster was strict: 3.2 GB peak on the head node; 2000 MB OOM-killed
# its workers, seen 2026-12-07).
DEF_MEM_PER_NODE_MB = 4000
# Declared per fake node. The four share this host's RAM, so the sum may exceed it; each job's own limit is
# what the kernel enforces.
NODE_MEMORY_MB = 16000


@dataclass(frozen=True)
class Confinement:
    """What slurm.conf and cgroup.conf say, and which controllers were missing when they were written."""

    proctrack: str
    task: str
    constrained: tuple[str, ...] = ()
    missing: tuple[str, ...] = field(default=())

    @property
    def strict(self) -> bool:
        return self.proctrack == "proctrack/cgroup" and "task/cgroup" in self.task

    def line(self) -> str:
        if self.strict:
            what = ", ".join(self.constrained) or "nothing"
            return f"strict: {self.proctrack}, {self.task}, constrained {what}"
        why = f" (cgroup v1 controller{'s' if len(self.missing) > 1 else ''} {', '.join(self.missing)} " \
              f"not mounted writable under {CGROUP_ROOT})" if self.missing else ""
        return f"NOT strict: {self.proctrack}, {self.task}{why}; jobs are tracked by descent and not confined"


def _cgroup_mounts(mounts_text: str) -> dict[str, Path]:
    """controller -> mount point of every cgroup v1 hierarchy in a /proc/self/mounts text."""
    found: dict[str, Path] = {}
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "cgroup":
            for opt in parts[3].split(","):
                found.setdefault(opt, Path(parts[1]))
    return found


def missing_controllers(mounts_text: str | None = None, root: Path = CGROUP_ROOT) -> tuple[str, ...]:
    """The controllers Slurm's cgroup/v1 plugin needs that are not mounted at root/<name> or not writable."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/self/mounts").read_text()
        except OSError:
            return CONTROLLERS
    mounts = _cgroup_mounts(mounts_text)
    return tuple(
        c for c in CONTROLLERS if mounts.get(c) != root / c or not os.access(root / c, os.W_OK | os.X_OK)
    )


def choose(missing: tuple[str, ...]) -> Confinement:
    """Cgroups when every controller is there; else tracking by descent, with what was missing."""
    if missing:
        return Confinement("proctrack/linuxproc", "task/none", (), missing)
    return Confinement("proctrack/cgroup", "task/cgroup,task/affinity", ("cores", "ram"))


def slurm_conf_lines(c: Confinement) -> list[str]:
    lines = [f"ProctrackType={c.proctrack}", f"TaskPlugin={c.task}"]
    if c.missing:
        lines.insert(0, f"# cgroup v1 controllers missing: {','.join(c.missing)}")
    return lines


def cgroup_conf(c: Confinement) -> str:
    """cgroup.conf beside slurm.conf (slurmd and slurmstepd read it from there)."""
    if not c.strict:
        return "# the cluster is not confined (see slurm.conf); Slurm does not read this file\n"
    return "\n".join([
        "CgroupPlugin=cgroup/v1",
        f"CgroupMountpoint={CGROUP_ROOT}",
        "CgroupAutomount=no",
        "ConstrainCores=yes",
        "ConstrainRAMSpace=yes",
        # The host has no swap to constrain; a job over its RAM limit meets the cgroup's OOM killer.
        "ConstrainSwapSpace=no",
        "ConstrainDevices=no",
    ]) + "\n"


def read(conf_text: str, cgroup_text: str) -> Confinement:
    """The confinement a written slurm.conf and cgroup.conf describe (for `status`)."""
    def value(text: str, key: str) -> str:
        m = re.search(rf"^{key}=(\S+)", text, re.M)
        return m.group(1) if m else "unknown"

    missing = re.search(r"^# cgroup v1 controllers missing: (\S+)", conf_text, re.M)
    constrained = tuple(
        name for key, name in (("ConstrainCores", "cores"), ("ConstrainRAMSpace", "ram"))
        if value(cgroup_text, key).lower() == "yes"
    )
    return Confinement(value(conf_text, "ProctrackType"), value(conf_text, "TaskPlugin"), constrained,
                       tuple(missing.group(1).split(",")) if missing else ())
