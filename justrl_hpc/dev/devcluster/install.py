"""What the daemons need before they start: Slurm and munge installed, the scratch folders, a munge key."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from justrl_hpc.core.errors import UserError
from justrl_hpc.dev.devcluster.layout import NODES, DevClusterError, Layout, Log

APT_PACKAGES = ("slurm-wlm", "munge")
NEEDED_BINARIES = (
    "slurmctld",
    "slurmd",
    "sbatch",
    "sinfo",
    "squeue",
    "scontrol",
    "scancel",
    "srun",
    "munged",
)


def _ensure_installed(log: Log) -> None:
    missing = [
        b
        for b in NEEDED_BINARIES
        if not shutil.which(b, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        raise UserError(
            f"{', '.join(missing)} not installed; run as root (up installs them) or "
            f"`apt-get install {' '.join(APT_PACKAGES)}`",
            "devcluster",
        )
    log(f"devcluster: installing {' '.join(APT_PACKAGES)} with apt-get (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        # A fresh image may have no package lists yet.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
            raise DevClusterError(f"apt-get install {' '.join(APT_PACKAGES)} failed: {tail[0]}")


def _munge_key(layout: Layout) -> Path:
    system = Path("/etc/munge/munge.key")
    if system.is_file():
        return system
    key = layout.munge / "munge.key"
    if not key.is_file():
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
    return key


def _prepare_dirs(layout: Layout) -> None:
    for d in (
        layout.root,
        layout.state,
        layout.spool,
        layout.log,
        layout.run,
        layout.leases,
        layout.munge,
        *(layout.spool / n for n in NODES),
    ):
        d.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o755)
    # munged refuses a socket folder others can write to, and must own its folder to create the socket.
    shutil.chown(layout.munge, "munge", "munge")
    layout.munge.chmod(0o755)
