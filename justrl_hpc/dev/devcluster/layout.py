"""What a dev cluster is made of: its nodes and daemons, the paths under its scratch folder, and its error.

Everything lives under one short scratch folder (Unix sockets cap path length): slurm.conf, controller state,
per-node spool, logs, pid files and a private munge socket.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from justrl_hpc.core.errors import UserError

DEFAULT_SCRATCH = Path("/tmp/justrl-devcluster")
SCRATCH_ENV = "JUSTRL_DEVCLUSTER_DIR"
PARTITION = "dev"
NODES = ("n1", "n2", "n3", "n4")
# The longest path Slurm and munge put under the scratch folder is a step socket in the spool
# (spool/n1/<host>_<job>.<step>); a sun_path holds 107 bytes.
MAX_SCRATCH_CHARS = 60
STOP_GRACE_S = 10.0
DAEMONS = ("munged", "slurmctld", *(f"slurmd-{n}" for n in NODES))
# Stop nodes first (they report to the controller), munge last (everyone authenticates through it).
STOP_ORDER = (tuple(f"slurmd-{n}" for n in NODES), ("slurmctld",), ("munged",))

Log = Callable[[str], None]


class DevClusterError(RuntimeError):
    """The cluster could not be brought up or down (not bad input: a daemon failed, a port is taken, …)."""


@dataclass(frozen=True)
class Layout:
    """The paths of one dev cluster under its scratch folder."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def cgroup_conf(self) -> Path:
        return self.root / "cgroup.conf"  # beside slurm.conf: where slurmd and slurmstepd look for it

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def munge(self) -> Path:
        return self.root / "munge"

    @property
    def socket(self) -> Path:
        return self.munge / "munge.socket"

    @property
    def leases(self) -> Path:
        return self.run / "leases"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def keeper_pidfile(self) -> Path:
        return self.run / "keeper.pid"

    @property
    def owner_file(self) -> Path:
        return self.run / "owner"

    def pidfile(self, daemon: str) -> Path:
        return self.run / f"{daemon}.pid"

    def exitfile(self, daemon: str) -> Path:
        return self.run / f"{daemon}.exit"

    def daemon_log(self, daemon: str) -> Path:
        return self.log / ("munged.log" if daemon == "munged" else f"{daemon}.log")


def resolve_scratch(scratch: Path | str | None = None) -> Path:
    """The scratch folder: the argument, else $JUSTRL_DEVCLUSTER_DIR, else /tmp/justrl-devcluster."""
    raw = Path(scratch) if scratch is not None else Path(os.environ.get(SCRATCH_ENV) or DEFAULT_SCRATCH)
    path = Path(os.path.abspath(raw))
    if len(str(path)) > MAX_SCRATCH_CHARS:
        raise UserError(
            f"{path} is {len(str(path))} characters; Unix socket paths under it would be too long, "
            f"use a folder of at most {MAX_SCRATCH_CHARS} characters (e.g. under /tmp)",
            "--scratch",
        )
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder; pass a folder path", "--scratch")
    return path


def conf_path(scratch: Path | str | None = None) -> Path:
    return Layout(resolve_scratch(scratch)).conf


def slurm_env(scratch: Path | str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose Slurm commands talk to this dev cluster (SLURM_CONF set)."""
    env = dict(os.environ if base is None else base)
    env["SLURM_CONF"] = str(conf_path(scratch))
    return env
