"""Processes and ports on this machine, read from /proc: pid files that survive pid reuse, stopping, reaping."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path


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
