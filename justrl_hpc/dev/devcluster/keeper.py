"""The keeper: the process that parents the daemons (`python -m justrl_hpc.dev.devcluster.keeper DIR`).

It records their pids, reaps them and the job processes slurmd orphans (it is a child subreaper, so nothing
of the cluster is left as a zombie or stray process), starts what is missing on SIGHUP, and stops them in
order on SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from justrl_hpc.dev.devcluster.conf import DEFAULT_CTLD_PORT, DEFAULT_SLURMD_PORT, _conf_ports
from justrl_hpc.dev.devcluster.install import _munge_key
from justrl_hpc.dev.devcluster.layout import DAEMONS, NODES, STOP_GRACE_S, STOP_ORDER, Layout
from justrl_hpc.dev.devcluster.procs import (
    _children,
    _listening_ports,
    _record_pid,
    _recorded_pid,
    _stop_pids,
    _write_atomic,
)


def _daemon_argv(layout: Layout, daemon: str) -> list[str]:
    if daemon == "munged":
        return [
            "/usr/sbin/munged",
            "-F",
            f"--socket={layout.socket}",
            f"--key-file={_munge_key(layout)}",
            f"--log-file={layout.daemon_log('munged')}",
            f"--pid-file={layout.munge}/munged.pid",
            f"--seed-file={layout.munge}/munged.seed",
        ]
    if daemon == "slurmctld":
        return [
            shutil.which("slurmctld", path="/usr/sbin:/usr/bin") or "slurmctld",
            "-D",
            "-i",
            "-f",
            str(layout.conf),
        ]
    node = daemon.removeprefix("slurmd-")
    return [
        shutil.which("slurmd", path="/usr/sbin:/usr/bin") or "slurmd",
        "-D",
        "-N",
        node,
        "-f",
        str(layout.conf),
    ]


class _Keeper:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.children: dict[int, str] = {}
        self.stop = False
        self.rescan = False
        self.logf = open(layout.log / "keeper.log", "a", buffering=1)  # open as long as the keeper lives

    def log(self, line: str) -> None:
        self.logf.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} keeper[{os.getpid()}]: {line}\n")

    def reap(self) -> None:
        while True:
            try:
                pid, status_ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            name = self.children.pop(pid, None)
            if name is None:
                continue  # an orphaned job process or slurmstepd handed to us as subreaper
            code = os.waitstatus_to_exitcode(status_)
            self.log(f"{name} (pid {pid}) exited with status {code}")
            with contextlib.suppress(OSError):
                self.layout.pidfile(name).unlink()
            if not self.stop:
                _write_atomic(self.layout.exitfile(name), f"{code} {time.time():.3f}\n")

    def start(self, daemon: str) -> int:
        lay = self.layout
        out = open(lay.log / f"{daemon}.out", "ab")  # the child keeps its own copy
        munge = daemon == "munged"
        proc = subprocess.Popen(
            _daemon_argv(lay, daemon),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=dict(os.environ, SLURM_CONF=str(lay.conf)),
            cwd=str(lay.root),
            # munged refuses to run as root.
            user="munge" if munge else None,
            group="munge" if munge else None,
            extra_groups=[] if munge else None,
        )
        out.close()
        self.children[proc.pid] = daemon
        _record_pid(lay.pidfile(daemon), proc.pid)
        with contextlib.suppress(OSError):
            lay.exitfile(daemon).unlink()
        self.log(f"started {daemon} pid {proc.pid}")
        return proc.pid

    def wait_for(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop:
            self.reap()
            if ready():
                return
            time.sleep(0.05)
        self.log(f"{what} not ready after {timeout_s:.0f} s; going on")

    def start_missing(self) -> None:
        lay = self.layout
        ports = _conf_ports(lay.conf.read_text()) or (DEFAULT_CTLD_PORT, DEFAULT_SLURMD_PORT)
        if not _recorded_pid(lay.pidfile("munged")):
            with contextlib.suppress(OSError):
                lay.socket.unlink()
            self.start("munged")
            self.wait_for("munge socket", lay.socket.exists, 10)
        if not _recorded_pid(lay.pidfile("slurmctld")):
            self.start("slurmctld")
            # slurmd registers once at start; starting it before the controller listens costs a ping interval.
            self.wait_for("slurmctld port", lambda: ports[0] in _listening_ports(), 20)
        for node in NODES:
            if not _recorded_pid(lay.pidfile(f"slurmd-{node}")):
                self.start(f"slurmd-{node}")

    def shutdown(self) -> None:
        for group in STOP_ORDER:
            pids = [p for d in group if (p := _recorded_pid(self.layout.pidfile(d)))]
            if pids:
                hard = _stop_pids(pids, STOP_GRACE_S, reap=self.reap)
                self.log(f"stopped {', '.join(group)}" + (f" (SIGKILL to {hard})" if hard else ""))
        # Whatever else is still our child is a job process that escaped proctrack and was handed to us.
        left = _children(os.getpid())
        if left:
            hard = _stop_pids(left, 3, reap=self.reap)
            self.log(
                f"stopped {len(left)} leftover job processes {left}"
                + (f" (SIGKILL to {hard})" if hard else "")
            )
        self.reap()
        for d in DAEMONS:
            with contextlib.suppress(OSError):
                self.layout.pidfile(d).unlink()

    def run(self) -> int:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_child_subreaper = 36
        libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)

        def on_stop(signum: int, _frame: object) -> None:
            self.stop = True

        def on_rescan(signum: int, _frame: object) -> None:
            self.rescan = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_rescan)
        _record_pid(self.layout.keeper_pidfile, os.getpid())
        self.log("up")
        self.start_missing()
        while not self.stop:
            self.reap()
            if self.rescan:
                self.rescan = False
                self.log("asked to start what is missing")
                self.start_missing()
            time.sleep(0.2)
        self.log("stopping")
        self.shutdown()
        self.log("down")
        with contextlib.suppress(OSError):
            self.layout.keeper_pidfile.unlink()
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m justrl_hpc.dev.devcluster.keeper SCRATCH_DIR", file=sys.stderr)
        return 2
    return _Keeper(Layout(Path(argv[0]))).run()


if __name__ == "__main__":
    sys.exit(main())
