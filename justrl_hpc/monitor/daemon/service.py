"""The alerting daemon: the loop that cycles every run folder it was given, and the one-shot scan.

Each folder has its RunMonitor (cycle.py: one cycle is read, judge, book, tell). A folder another daemon
leads is retried every cycle, so a standby takes over when the leader dies (store.LeaderLock and the lease
row say who leads). `justrl-monitor daemon` runs `run_daemon` until SIGTERM/SIGINT; `justrl-monitor scan`
runs `scan`, one final cycle that also judges the newest TensorBoard step.

It only reads the job: no scancel, no scontrol update/requeue/hold, no file in control/ (tests assert it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from justrl_hpc.core.errors import UserError
from justrl_hpc.monitor.daemon.cycle import RunMonitor
from justrl_hpc.monitor.daemon.store import BookAlert
from justrl_hpc.monitor.settings import MonitorSettings

log = logging.getLogger("justrl_hpc.monitor.daemon.service")


def run_daemon(
    monitors: Sequence[RunMonitor],
    interval_s: float,
    stop: threading.Event,
    cycles: int | None = None,
    until_ended: bool = False,
) -> int:
    """Cycle every run until `stop` is set (SIGTERM/SIGINT in the CLI). A run another daemon leads is
    retried each cycle, so a standby takes over when the leader dies. `until_ended`: also stop once every run
    has ended (its ledger's last word is finished or failed), after one last cycle that judges the newest step
    too (the rehearsal's daemon, and the daemon's Slurm chain, end with the run)."""
    standby_said: dict[str, str] = {}
    done = 0
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            for m in monitors:
                if stop.is_set():
                    break
                if not m.leading:
                    if not m.start():
                        if standby_said.get(m.name) != m.refused:
                            log.info("run %s: standby: %s", m.name, m.refused)
                            standby_said[m.name] = m.refused or ""
                        continue
                    standby_said.pop(m.name, None)
                try:
                    m.cycle()
                except Exception as exc:  # one bad cycle of one run must not stop the watch
                    log.error(
                        "run %s: cycle failed: %s: %s (state kept; retrying)", m.name, type(exc).__name__, exc
                    )
            done += 1
            if cycles is not None and done >= cycles:
                break
            if until_ended and all(m.leading and m.run_ended() for m in monitors):
                for m in monitors:
                    m.cycle(final=True)
                    if m.config.daemon.heartbeat:
                        m.write_heartbeat(time.time(), m.book.firing_counts(), ended=m.run_ended())
                    log.info("run %s: %s: the monitor's work on it is done", m.name, m.run_ended())
                break
            stop.wait(max(0.0, interval_s - (time.monotonic() - t0)))
    finally:
        for m in monitors:
            m.close()
        log.info("monitor stopped: state committed")
    return 0


def scan(run_dir: Path, config: MonitorSettings, emit: Callable[[BookAlert], None], **kw: Any) -> int:
    """One cycle over everything new; each alert it raised goes to `emit` (and to the sinks)."""
    m = RunMonitor(run_dir, config, **kw)
    if not m.start():
        raise UserError(
            f"a monitor daemon is watching this folder ({m.refused}); scan would double-alert", "RUN"
        )
    try:
        report = m.cycle(final=True)
        for a in report.alerts:
            emit(a)
    finally:
        m.close()
    return 0
