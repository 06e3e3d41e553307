"""How strict the dev cluster is, decided from the mounted cgroup controllers (devcluster/strict.py); the
cluster itself confining real jobs is tests/cluster/test_devcluster.py's."""

from __future__ import annotations

from pathlib import Path

import pytest

from justrl_hpc.dev.devcluster.conf import render_conf
from justrl_hpc.dev.devcluster.layout import Layout
from justrl_hpc.dev.devcluster.strict import (
    CGROUP_ROOT,
    CONTROLLERS,
    cgroup_conf,
    choose,
    missing_controllers,
    read,
)

# /proc/self/mounts lines, constructed after this machine's (cgroup v1 controllers each on its own hierarchy).
V1 = "\n".join(f"cgroup /sys/fs/cgroup/{c} cgroup rw,relatime,{c} 0 0" for c in (*CONTROLLERS, "pids", "cpu"))
V2_ONLY = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0"
CO_MOUNTED = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n" + V1


@pytest.mark.parametrize(
    ("mounts", "missing"),
    [
        (V1, ()),
        (CO_MOUNTED, ()),
        (V2_ONLY, CONTROLLERS),  # a cgroup v2 host: Slurm 22.05's v1 plugin cannot run there
        ("\n".join(line for line in V1.splitlines() if "freezer" not in line), ("freezer",)),
        # Mounted elsewhere than where Slurm looks (CgroupMountpoint).
        (V1.replace("/sys/fs/cgroup/memory", "/mnt/memory"), ("memory",)),
    ],
)
def test_missing_controllers(mounts: str, missing: tuple[str, ...]) -> None:
    # The mount text is constructed; writability is this machine's (its controllers are writable as root).
    assert missing_controllers(mounts, CGROUP_ROOT) == missing


def test_this_machine_is_strict_and_a_missing_controller_falls_back_loudly(tmp_path: Path) -> None:
    assert missing_controllers() == ()  # the dev machines mount them all, writable (as root)
    strict = choose(())
    assert strict.strict and strict.line() == "strict: proctrack/cgroup, task/cgroup,task/affinity, constrained cores, ram"
    loose = choose(("freezer", "memory"))
    assert not loose.strict and (loose.proctrack, loose.task) == ("proctrack/linuxproc", "task/none")
    assert loose.line().startswith("NOT strict:") and "controllers freezer, memory not mounted writable" in loose.line()
    layout = Layout(tmp_path)
    for c in (strict, loose):
        conf, cgroups = render_conf(layout, 6817, 17001, c), cgroup_conf(c)
        assert f"ProctrackType={c.proctrack}\n" in conf and f"TaskPlugin={c.task}\n" in conf
        assert "SelectTypeParameters=CR_Core_Memory" in conf and "DefMemPerNode=" in conf
        assert read(conf, cgroups) == c  # what `status` reads back is what `up` decided
    assert "ConstrainCores=yes" in cgroup_conf(strict) and "ConstrainRAMSpace=yes" in cgroup_conf(strict)
    assert "CgroupPlugin=cgroup/v1" in cgroup_conf(strict)


@pytest.mark.parametrize(
    ("state", "ok"),
    [
        ("idle", True),
        ("mixed", True),
        ("allocated", True),
        ("completing", True),
        ("planned", True),  # backfill holds it for a pending job until its next cycle
        ("mixed-", True),
        ("allocated+", True),
        ("IDLE", True),
        ("idle*", False),  # not responding
        ("down", False),
        ("down*", False),
        ("drained", False),
        ("draining", False),
        ("idle~", False),  # powered off
        ("idle$", False),  # maintenance reservation
        ("idle@", False),  # reboot pending
        ("unknown", False),
        ("", False),
    ],
)
def test_which_sinfo_states_count_as_a_usable_node(state: str, ok: bool) -> None:
    from justrl_hpc.dev.devcluster.status import usable

    assert usable(state) is ok
