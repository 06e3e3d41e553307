"""A real Slurm on this machine: munged, slurmctld and four slurmd posing as nodes n1..n4 (partition `dev`).

Everything lives under one short scratch folder (Unix sockets cap path length): slurm.conf, controller state,
per-node spool, logs, pid files and a private munge socket. A small "keeper" process (this module run as
`python -m justrl_hpc.devcluster _keeper DIR`) is the parent of the daemons: it records their pids, reaps them
and the job processes slurmd orphans (it is a child subreaper, so nothing of the cluster is left as a zombie or
stray process), and stops them in order on SIGTERM. `up` repairs a half-up cluster by asking the keeper to
start what is missing; `down` cancels the cluster's jobs, then stops exactly the processes the keeper started.

Plain `sbatch`/`squeue` (submitit calls plain `sbatch`) find the cluster through /etc/slurm/slurm.conf, which
`up` writes when it is absent or was written by this module; jobs get SLURM_CONF from slurmd, so `srun` and
`scontrol requeue` inside a job talk to the same cluster. `slurm_env()` gives an environment for the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from justrl_hpc.errors import UserError, cli_entry

DEFAULT_SCRATCH = Path("/tmp/justrl-devcluster")
SCRATCH_ENV = "JUSTRL_DEVCLUSTER_DIR"
ETC_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by justrl_hpc.devcluster"
PARTITION = "dev"
NODES = ("n1", "n2", "n3", "n4")
CPUS_PER_NODE = 2
REAL_MEMORY_MB = 4000
DEFAULT_CTLD_PORT = 6817
DEFAULT_SLURMD_PORT = 17001
# The longest path Slurm and munge put under the scratch folder is a step socket in the spool
# (spool/n1/<host>_<job>.<step>); a sun_path holds 107 bytes.
MAX_SCRATCH_CHARS = 60
STOP_GRACE_S = 10.0
# sinfo %T states of a node that can take jobs (no trailing `*`: that means "not responding").
USABLE_STATES = {"idle", "mixed", "allocated", "completing"}
DAEMONS = ("munged", "slurmctld", *(f"slurmd-{n}" for n in NODES))
# Stop nodes first (they report to the controller), munge last (everyone authenticates through it).
STOP_ORDER = (tuple(f"slurmd-{n}" for n in NODES), ("slurmctld",), ("munged",))
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

Log = Callable[[str], None]


class DevClusterError(RuntimeError):
    """The cluster could not be brought up or down (not bad input: a daemon failed, a port is taken, …)."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """The paths of one dev cluster under its scratch folder."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

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


# ---------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a live process; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name sits in parentheses and may itself hold spaces or parentheses.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _alive(pid: int, starttime: int | None = None) -> bool:
    """Running (a zombie counts as exited) and, when given, the same process as recorded (pids get reused)."""
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return starttime is None or st[2] == starttime


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _record_pid(path: Path, pid: int) -> None:
    st = _proc_stat(pid)
    _write_atomic(path, f"{pid} {st[2] if st else 0}\n")


def _recorded_pid(path: Path) -> int | None:
    """The pid in a pid file if that very process still runs."""
    try:
        parts = path.read_text().split()
        pid, start = int(parts[0]), int(parts[1])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid, start) else None


def _reap(pid: int) -> None:
    # Our own child (the keeper, when this process started it) must be waited for or it stays a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _stop_pids(pids: list[int], grace_s: float, reap: Callable[[], None] | None = None) -> list[int]:
    """SIGTERM, wait up to grace_s, then SIGKILL what is left and wait for it. Returns the pids killed hard."""
    starts = {pid: (_proc_stat(pid) or ("", 0, 0))[2] for pid in pids}
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if reap:
            reap()
        for pid in pids:
            _reap(pid)
        if not any(_alive(pid, starts[pid]) for pid in pids):
            return []
        time.sleep(0.05)
    hard = [pid for pid in pids if _alive(pid, starts[pid])]
    for pid in hard:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid, starts[pid]) for pid in hard):
        if reap:
            reap()
        for pid in hard:
            _reap(pid)
        time.sleep(0.05)
    return hard


def _children(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st and st[1] == ppid and st[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def _port_free(port: int) -> bool:
    # SO_REUSEADDR as the daemons use it, so that TIME_WAIT leftovers do not count as taken.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _listening_ports() -> set[int]:
    """TCP ports something listens on, from /proc (probing with connect() would make the daemons log errors)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ---------------------------------------------------------------- configuration


def _hostname() -> str:
    return socket.gethostname().split(".")[0]


def render_conf(layout: Layout, ctld_port: int, slurmd_port: int) -> str:
    """slurm.conf for the dev cluster: 4 nodes on this host, partition dev, no accounting, no cgroups."""
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
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
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
        f"NodeName=n[1-{len(NODES)}] NodeHostname={host} NodeAddr=127.0.0.1 Port=[{slurmd_port}-{last}] "
        f"CPUs={CPUS_PER_NODE} RealMemory={REAL_MEMORY_MB} State=UNKNOWN",
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


# ---------------------------------------------------------------- status


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

    @property
    def up(self) -> bool:
        return (
            all(self.daemons.get(d) for d in DAEMONS)
            and len(self.nodes) == len(NODES)
            and all(self.nodes.get(n) in USABLE_STATES for n in NODES)
        )

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["scratch"], d["conf"], d["up"] = str(self.scratch), str(self.conf), self.up
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


def _etc_is_ours(layout: Layout) -> bool:
    try:
        return _conf_scratch(ETC_CONF.read_text()) == layout.root
    except OSError:
        return False


def _status(layout: Layout, query_slurm: bool = True) -> ClusterStatus:
    daemons = {d: _recorded_pid(layout.pidfile(d)) for d in DAEMONS}
    ports = None
    with contextlib.suppress(OSError):
        ports = _conf_ports(layout.conf.read_text())
    nodes = _sinfo_nodes(layout) if query_slurm and daemons["slurmctld"] and daemons["munged"] else {}
    return ClusterStatus(
        scratch=layout.root,
        conf=layout.conf,
        daemons=daemons,
        nodes=nodes,
        keeper=_recorded_pid(layout.keeper_pidfile),
        ctld_port=ports[0] if ports else None,
        etc_conf=_etc_is_ours(layout),
    )


def status(scratch: Path | str | None = None) -> ClusterStatus:
    """Which daemons run (pid each), node states from sinfo, the partition, the conf path."""
    return _status(Layout(resolve_scratch(scratch)))


# ---------------------------------------------------------------- install and prepare


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


def _write_etc_conf(layout: Layout, text: str, log: Log) -> None:
    """Point plain Slurm commands at this cluster, unless /etc/slurm/slurm.conf belongs to someone else.

    Only the default cluster ($JUSTRL_DEVCLUSTER_DIR or /tmp/justrl-devcluster) takes it: a second cluster
    in another folder (tests of this module) is reached through slurm_env() and must not steal it.
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


# ---------------------------------------------------------------- the keeper (parent of the daemons)


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


def _keeper_main(scratch: Path) -> int:
    return _Keeper(Layout(scratch)).run()


# ---------------------------------------------------------------- up / down


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One up/down at a time per scratch folder, across processes (test sessions start it concurrently)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _failed_daemon(layout: Layout, since: float) -> str | None:
    for d in DAEMONS:
        try:
            parts = layout.exitfile(d).read_text().split()
        except OSError:
            continue
        if float(parts[1]) >= since and not _recorded_pid(layout.pidfile(d)):
            tail = ""
            with contextlib.suppress(OSError):
                lines = layout.daemon_log(d).read_text(errors="replace").strip().splitlines()
                tail = f": {lines[-1]}" if lines else ""
            return f"{d} exited with status {parts[0]} (log {layout.daemon_log(d)}{tail})"
    return None


def _start_keeper(layout: Layout) -> int:
    out = open(layout.log / "keeper.out", "ab")  # the keeper keeps its own copy
    proc = subprocess.Popen(
        [sys.executable, "-m", "justrl_hpc.devcluster", "_keeper", str(layout.root)],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        start_new_session=True,
        cwd=str(layout.root),
        env=dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")])),
        ),
    )
    out.close()
    return proc.pid


def _package_root() -> str:
    # The keeper must import this very module even when the suite is not installed (a plain checkout).
    return str(Path(__file__).resolve().parent.parent)


def _wait_up(layout: Layout, keeper: int, timeout_s: float, since: float, slurmd_port: int) -> ClusterStatus:
    deadline = time.monotonic() + timeout_s
    resumed: set[str] = set()
    bad_since: dict[str, float] = {}
    st = _status(layout, query_slurm=False)
    while time.monotonic() < deadline:
        _reap(keeper)
        failed = _failed_daemon(layout, since)
        if failed:
            raise DevClusterError(failed)
        if not _alive(keeper):
            raise DevClusterError(f"the keeper (pid {keeper}) died; see {layout.log / 'keeper.out'}")
        st = _status(layout)
        node_ports = set(range(slurmd_port, slurmd_port + len(NODES)))
        # sinfo can say idle before a restarted slurmd listens again; a job sent there then would fail.
        if st.up and node_ports <= _listening_ports():
            return st
        now = time.monotonic()
        for node, state in st.nodes.items():
            # A node the controller marked down or drained while its slurmd ran: resume it (once).
            if (
                st.daemons.get(f"slurmd-{node}")
                and ("down" in state or "drain" in state)
                and "*" not in state
            ):
                bad_since.setdefault(node, now)
                if node not in resumed and now - bad_since[node] > 2:
                    resumed.add(node)
                    subprocess.run(
                        ["scontrol", "update", f"NodeName={node}", "State=RESUME"],
                        capture_output=True,
                        timeout=15,
                        check=False,
                        env=slurm_env(layout.root),
                    )
        time.sleep(0.1)
    missing = [d for d, p in st.daemons.items() if not p]
    raise DevClusterError(
        f"not up after {timeout_s:.0f} s: daemons not running {missing or 'none'}, nodes {st.nodes or 'unknown'} "
        f"(logs in {layout.log})"
    )


def _up_locked(layout: Layout, timeout_s: float, log: Log) -> ClusterStatus:
    t0 = time.monotonic()
    st = _status(layout)
    if st.up and st.keeper:
        if not st.etc_conf:
            _write_etc_conf(layout, layout.conf.read_text(), log)
        log(f"devcluster: already up, {_nodes_line(st)} (partition {PARTITION}, conf {layout.conf})")
        return st
    if os.geteuid() != 0:
        raise UserError("the dev cluster runs its daemons as root; run as root", "devcluster")
    _ensure_installed(log)
    _prepare_dirs(layout)
    running = [d for d, p in st.daemons.items() if p]
    ctld_port, slurmd_port = _choose_ports(layout, starting=not running and not st.keeper)
    text = render_conf(layout, ctld_port, slurmd_port)
    old = layout.conf.read_text() if layout.conf.exists() else None
    if old != text and (running or st.keeper):
        log("devcluster: configuration changed; restarting the cluster")
        _down_locked(layout, log)
        st = _status(layout, query_slurm=False)
        running = []
    if old != text:
        _write_atomic(layout.conf, text)
    _write_etc_conf(layout, text, log)
    since = time.time()
    started_now = not running
    if st.keeper:
        keeper = st.keeper
        missing = [d for d, p in st.daemons.items() if not p]
        if missing:
            log(f"devcluster: restarting {', '.join(missing)}")
            _signal(keeper, signal.SIGHUP)
    else:
        if running:
            # Daemons whose keeper is gone: adopt nothing half-known, stop them and start clean.
            log(f"devcluster: keeper gone, restarting {', '.join(running)}")
            _stop_recorded(layout, log)
            started_now = True
        with contextlib.suppress(OSError):
            layout.owner_file.unlink()
        if not _block_free(ctld_port, slurmd_port):
            raise DevClusterError(
                f"TCP ports {ctld_port} and {slurmd_port}-{slurmd_port + len(NODES) - 1} are not free; "
                "stop what holds them, or `devcluster down` and `up` again (a start picks free ports)"
            )
        keeper = _start_keeper(layout)
    st = _wait_up(layout, keeper, timeout_s, since, slurmd_port)
    st.started_now = started_now
    log(
        f"devcluster: {_nodes_line(st)} in {time.monotonic() - t0:.1f} s (partition {PARTITION}, conf {layout.conf})"
    )
    if not st.etc_conf:
        log(f"devcluster: plain Slurm commands need SLURM_CONF={layout.conf}")
    return st


def _nodes_line(st: ClusterStatus) -> str:
    states = sorted(set(st.nodes.values()))
    if states == ["idle"]:
        return f"{len(st.nodes)} nodes idle"
    return f"{len(st.nodes)} nodes up ({', '.join(f'{n} {s}' for n, s in sorted(st.nodes.items()))})"


def up(scratch: Path | str | None = None, timeout_s: float = 60, log: Log = _stderr) -> ClusterStatus:
    """Bring the dev cluster up (install Slurm/munge if missing) and return once sinfo shows n1..n4 usable.

    Idempotent: an up cluster returns at once; a half-up one (a daemon died) is repaired.
    """
    layout = Layout(resolve_scratch(scratch))
    with _locked(layout):
        return _up_locked(layout, timeout_s, log)


def _cancel_jobs(layout: Layout, log: Log) -> int:
    env = slurm_env(layout.root)
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=15, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    jobs = sorted(set(out.stdout.split())) if out.returncode == 0 else []
    if not jobs:
        return 0
    subprocess.run(["scancel", *jobs], capture_output=True, timeout=30, check=False, env=env)
    # KillWait=5: steps get SIGTERM, then SIGKILL 5 s later; wait until the controller lists none.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=15, check=False, env=env
        )
        if out.returncode != 0 or not out.stdout.strip():
            break
        time.sleep(0.2)
    log(f"devcluster: cancelled {len(jobs)} jobs ({', '.join(jobs)})")
    return len(jobs)


def _stop_recorded(layout: Layout, log: Log) -> list[str]:
    stopped = []
    for group in STOP_ORDER:
        pids = {d: p for d in group if (p := _recorded_pid(layout.pidfile(d)))}
        if pids:
            hard = _stop_pids(list(pids.values()), STOP_GRACE_S)
            if hard:
                log(f"devcluster: SIGKILL to {hard} after {STOP_GRACE_S:.0f} s")
            stopped += list(pids)
        for d in group:
            with contextlib.suppress(OSError):
                layout.pidfile(d).unlink()
    return stopped


def _down_locked(layout: Layout, log: Log) -> list[str]:
    t0 = time.monotonic()
    st = _status(layout, query_slurm=False)
    running = [d for d, p in st.daemons.items() if p]
    if not running and not st.keeper:
        return []
    if st.daemons["slurmctld"] and st.daemons["munged"]:
        _cancel_jobs(layout, log)
    if st.keeper:
        # The keeper stops its daemons in order (escalating to SIGKILL) and the job leftovers it inherited.
        hard = _stop_pids([st.keeper], 3 * STOP_GRACE_S + 10)
        if hard:
            log(f"devcluster: keeper {st.keeper} did not stop in time; killed")
    # Daemons left behind by a keeper that was killed: stop them here.
    _stop_recorded(layout, log)
    with contextlib.suppress(OSError):
        layout.owner_file.unlink()
    log(f"devcluster: stopped {', '.join(running) or 'the keeper'} in {time.monotonic() - t0:.1f} s")
    return running


def down(scratch: Path | str | None = None, log: Log = _stderr) -> None:
    """Cancel the cluster's jobs and stop exactly the daemons up started; wait until they are gone."""
    layout = Layout(resolve_scratch(scratch))
    if not layout.root.is_dir():
        log(f"devcluster: nothing at {layout.root}")
        return
    with _locked(layout):
        if not _down_locked(layout, log):
            log(f"devcluster: not running (scratch {layout.root})")


# ---------------------------------------------------------------- shared use by test sessions


def _lease_name() -> str:
    st = _proc_stat(os.getpid())
    return f"{os.getpid()}-{st[2] if st else 0}"


def _live_leases(layout: Layout) -> list[str]:
    live = []
    for f in layout.leases.glob("*-*"):
        pid, _, start = f.name.partition("-")
        if pid.isdigit() and start.isdigit() and _alive(int(pid), int(start)):
            live.append(f.name)
        else:
            with contextlib.suppress(OSError):
                f.unlink()
    return live


@contextlib.contextmanager
def lease(
    scratch: Path | str | None = None, timeout_s: float = 60, log: Log = _stderr
) -> Iterator[ClusterStatus]:
    """Use the cluster for a while (a test session): up on entry; on exit, down only if a lease holder started
    it and no other live process holds it (several pytest sessions share one cluster; a cluster a person
    started with `devcluster up` is never taken down)."""
    layout = Layout(resolve_scratch(scratch))
    with _locked(layout):
        st = _up_locked(layout, timeout_s, log)
        if st.started_now:
            _write_atomic(layout.owner_file, "lease\n")
        me = layout.leases / _lease_name()
        me.touch()
    try:
        yield st
    finally:
        with _locked(layout):
            with contextlib.suppress(OSError):
                me.unlink()
            others = _live_leases(layout)
            owned = layout.owner_file.exists() and layout.owner_file.read_text().strip() == "lease"
            if owned and not others:
                _down_locked(layout, log)
            elif owned:
                log(f"devcluster: left up for {len(others)} other sessions holding it")


# ---------------------------------------------------------------- CLI


def _print_status(st: ClusterStatus) -> None:
    print(
        f"devcluster: {'up' if st.up else 'not up'} (scratch {st.scratch}, partition {st.partition}, "
        f"conf {st.conf}{', /etc/slurm/slurm.conf points here' if st.etc_conf else ''})"
    )
    print(f"devcluster: keeper {'pid ' + str(st.keeper) if st.keeper else 'not running'}")
    for d, pid in st.daemons.items():
        print(f"devcluster: {d} {'pid ' + str(pid) if pid else 'not running'}")
    for n in NODES:
        print(f"devcluster: node {n} {st.nodes.get(n, 'unknown')}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        # One `error:` line (house rule) instead of argparse's usage block.
        raise UserError(f"{message}; see `justrl-hpc devcluster --help`", "devcluster")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_keeper"] and len(argv) == 2:
        return _keeper_main(Path(argv[1]))
    p = _Parser(
        prog="justrl-hpc devcluster",
        description="A real Slurm on this machine: munged, slurmctld and 4 slurmd as nodes n1..n4 (partition dev).",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--scratch",
        metavar="DIR",
        help=f"state, logs and slurm.conf (default ${SCRATCH_ENV} or {DEFAULT_SCRATCH})",
    )
    p.add_argument("--json", action="store_true", help="print the cluster's status as JSON on stdout")
    p.add_argument(
        "--timeout", type=float, default=60, metavar="SECONDS", help="how long `up` waits (default 60)"
    )
    args = p.parse_args(argv)
    if args.timeout <= 0:
        raise UserError(f"must be positive seconds, got {args.timeout}", "--timeout")
    scratch = resolve_scratch(args.scratch)
    try:
        if args.action == "up":
            st = up(scratch, timeout_s=args.timeout)
        elif args.action == "down":
            down(scratch)
            st = status(scratch)
        else:
            st = status(scratch)
            if not args.json:
                _print_status(st)
    except DevClusterError as exc:
        print(f"devcluster: failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st.to_dict(), indent=2))
    if args.action == "status":
        return 0 if st.up else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
