"""Bring a dev cluster up and down, alone or shared by several test sessions (`lease`).

`up` starts the keeper (keeper.py), which starts the daemons, and repairs a half-up cluster by asking the
keeper to start what is missing; `down` cancels the cluster's jobs, then stops exactly the processes the
keeper started.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from justrl_hpc.core.errors import UserError
from justrl_hpc.dev.devcluster.conf import _block_free, _choose_ports, _write_etc_conf, render_conf
from justrl_hpc.dev.devcluster.install import _ensure_installed, _prepare_dirs
from justrl_hpc.dev.devcluster.layout import (
    DAEMONS,
    NODES,
    PARTITION,
    STOP_GRACE_S,
    STOP_ORDER,
    DevClusterError,
    Layout,
    Log,
    resolve_scratch,
    slurm_env,
)
from justrl_hpc.dev.devcluster.procs import (
    _alive,
    _listening_ports,
    _proc_stat,
    _reap,
    _recorded_pid,
    _signal,
    _stop_pids,
    _write_atomic,
)
from justrl_hpc.dev.devcluster.status import ClusterStatus, _status
from justrl_hpc.dev.devcluster.strict import cgroup_conf, choose, missing_controllers


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
        [sys.executable, "-m", "justrl_hpc.dev.devcluster.keeper", str(layout.root)],
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
    # The keeper must import this package even when the suite is not installed (a plain checkout).
    return str(Path(__file__).resolve().parents[3])


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
    if st.up and st.keeper and _conf_current(layout):
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
    confinement = choose(missing_controllers())
    if not confinement.strict:
        log(f"devcluster: WARNING: {confinement.line()}")
    text = render_conf(layout, ctld_port, slurmd_port, confinement)
    cgroups = cgroup_conf(confinement)
    old = layout.conf.read_text() if layout.conf.exists() else None
    old_cgroups = layout.cgroup_conf.read_text() if layout.cgroup_conf.exists() else None
    changed = old != text or old_cgroups != cgroups
    if changed and (running or st.keeper):
        log("devcluster: configuration changed; restarting the cluster")
        _down_locked(layout, log)
        st = _status(layout, query_slurm=False)
        running = []
    if changed:
        _write_atomic(layout.cgroup_conf, cgroups)
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
        f"devcluster: {_nodes_line(st)} in {time.monotonic() - t0:.1f} s (partition {PARTITION}, conf {layout.conf}; "
        f"{confinement.line()})"
    )
    if not st.etc_conf:
        log(f"devcluster: plain Slurm commands need SLURM_CONF={layout.conf}")
    return st


def _conf_current(layout: Layout) -> bool:
    """The running cluster's confs are what this package writes now (a cluster left up by an older checkout,
    before cgroups, is restarted with the new ones)."""
    ports, confinement = _choose_ports(layout, starting=False), choose(missing_controllers())
    try:
        return layout.conf.read_text() == render_conf(layout, *ports, confinement) and \
            layout.cgroup_conf.read_text() == cgroup_conf(confinement)
    except OSError:
        return False


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
