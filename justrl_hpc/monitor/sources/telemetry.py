"""Tail of the node agents' RUN/telemetry/<host>.jsonl files, for the monitor's poll loop.

Per host it keeps a cursor (inode, offset, last sample time) that the engine persists (`state()` /
`from_state()`), so a restarted daemon continues where it stopped. It follows the agent's rotation
(<host>.jsonl → <host>.jsonl.1): the rest of the rotated file is read before the new one. A line is read
only once it ends in a newline (the agent writes each line whole; an unterminated end is a write in
flight); a complete line that is not a JSON object is skipped and reported, never fatal.

Clock skew: a sample's `time` is the node's clock. Given the monitor's clock (`poll(now=...)`), the tail
bounds each node's offset from when new lines appear: lines that arrive between two polls were written
between them, so their newest time minus the monitor's time at those polls brackets the skew (and a line
from the future bounds it at once). Each sample read with `now` also carries `arrived`: the monitor's time
of the poll that read it (the file's mtime for a backlog), so silence can be judged on the monitor's own
clock before any bracket exists. The estimate moves only as far as a bracket forces it (it stays 0 for
synchronised clocks), and samples are shifted onto the monitor's clock (`time`), keeping the node's own as
`host_time` and the estimate as `clock_skew_s`.
Without that a node whose clock is behind looks silent, and one whose clock is ahead never does.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("justrl_hpc.monitor.sources.telemetry")

SUFFIX = ".jsonl"
HEAD_BYTES = 64
READ_CHUNK = 4 << 20  # bytes per read; a long backlog is read in several polls' worth of chunks


@dataclass
class CorruptLine:
    host: str
    file: str
    offset: int
    reason: str
    excerpt: str


@dataclass
class Cursor:
    inode: int = 0
    offset: int = 0
    last_time: float | None = None
    final: bool = False  # the last line read was the agent's clean-stop line
    head: str = ""  # the file's first bytes (up to HEAD_BYTES): its identity beside the inode
    skew: float = 0.0  # the node's clock minus the monitor's, in seconds (see the module docstring)
    polled_at: float | None = None  # the monitor's clock at the last poll that gave `now`
    caught_up: bool = False  # that poll read the file to its end: what appears next was written after it


@dataclass
class TelemetryBatch:
    """What one poll found: new samples by host (oldest first), corrupt lines, and lost data (a file
    rotated twice between polls)."""

    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    corrupt: list[CorruptLine] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.samples.values())


class TelemetryTail:
    def __init__(
        self, directory: Path, cursors: dict[str, Cursor] | None = None, arrival_slack_s: float = 5.0
    ) -> None:
        self.directory = Path(directory)
        self.cursors: dict[str, Cursor] = dict(cursors or {})
        # How late a shared filesystem may show a line written before the last poll.
        self.arrival_slack_s = arrival_slack_s

    # -- persistence ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-serialisable cursors, for the engine's SQLite store."""
        return {
            host: {
                "inode": c.inode,
                "offset": c.offset,
                "last_time": c.last_time,
                "final": c.final,
                "head": c.head,
                "skew": c.skew,
                "polled_at": c.polled_at,
                "caught_up": c.caught_up,
            }
            for host, c in sorted(self.cursors.items())
        }

    @classmethod
    def from_state(cls, directory: Path, state: dict[str, Any] | None) -> TelemetryTail:
        cursors = {}
        for host, c in (state or {}).items():
            cursors[host] = Cursor(
                inode=int(c.get("inode", 0)),
                offset=int(c.get("offset", 0)),
                last_time=c.get("last_time"),
                final=bool(c.get("final", False)),
                head=str(c.get("head", "")),
                skew=float(c.get("skew") or 0.0),
                polled_at=c.get("polled_at"),
                caught_up=bool(c.get("caught_up", False)),
            )
        return cls(directory, cursors)

    # -- queries ---------------------------------------------------------------------------------------
    def last_seen(self) -> dict[str, float]:
        """Time of the newest sample per host (on the monitor's clock once skew is known)."""
        return {h: c.last_time for h, c in self.cursors.items() if c.last_time is not None}

    def stopped_cleanly(self) -> set[str]:
        """Hosts whose agent's last line was its clean-stop line (the chunk ended; silence is expected)."""
        return {h for h, c in self.cursors.items() if c.final}

    def hosts(self) -> list[str]:
        if not self.directory.is_dir():
            return sorted(self.cursors)
        found = {p.name[: -len(SUFFIX)] for p in self.directory.iterdir() if p.name.endswith(SUFFIX)}
        return sorted(found | set(self.cursors))

    # -- the poll ------------------------------------------------------------------------------------------
    def poll(self, max_bytes_per_host: int | None = None, now: float | None = None) -> TelemetryBatch:
        """Everything new since the last poll (up to max_bytes_per_host per host, if given). `now`, the
        monitor's clock, lets the tail estimate each node's clock skew and correct for it."""
        batch = TelemetryBatch()
        for host in self.hosts():
            cur = self.cursors.setdefault(host, Cursor())
            # Lines that appear now were written after the last poll only if that poll read to the end.
            since = cur.polled_at if cur.caught_up else None
            caught_up, mtime = self._poll_host(host, batch, max_bytes_per_host)
            self._settle(host, cur, batch, since, now, mtime)
            if now is not None:
                cur.polled_at, cur.caught_up = now, caught_up
        return batch

    def _settle(
        self,
        host: str,
        cur: Cursor,
        batch: TelemetryBatch,
        since: float | None,
        now: float | None,
        mtime: float | None,
    ) -> None:
        """Update the skew estimate from this poll's new lines, then put them on the monitor's clock."""
        new = batch.samples.get(host)
        if not new:
            return
        if now is not None:
            times = [float(s["time"]) for s in new]
            # Each line was written at a monitor time w ≤ now, and after `since` (less the slack) when that
            # is known: skew = time - w. The newest line bounds it from below, the oldest from above; a
            # line from the future needs no bracket.
            lo = max(times) - now
            hi = min(times) - since + self.arrival_slack_s if since is not None else math.inf
            before = cur.skew
            cur.skew = min(max(cur.skew, lo), hi)
            if abs(cur.skew - before) >= 1.0:
                log.info(
                    "telemetry clock host=%s: skew estimate %+.0f s (was %+.0f s)", host, cur.skew, before
                )
        # A line that appeared since the last poll was there by now; a backlog line (no bracket) by the
        # file's last change, where the filesystem's clock is the best witness there is.
        arrived = now if since is not None or mtime is None or now is None else min(now, mtime)
        for s in new:
            if arrived is not None:
                s["arrived"] = arrived
            if cur.skew:
                s["host_time"] = s["time"]
                s["time"] = float(s["time"]) - cur.skew
                s["clock_skew_s"] = round(cur.skew, 1)
            if cur.last_time is None or s["time"] >= cur.last_time:
                cur.last_time = float(s["time"])
                cur.final = bool(s.get("final", False))

    def _poll_host(self, host: str, batch: TelemetryBatch, budget: int | None) -> tuple[bool, float | None]:
        """Reads the host's new lines into the batch: (read the live file to its end, its mtime)."""
        cur = self.cursors.setdefault(host, Cursor())
        live = self.directory / f"{host}{SUFFIX}"
        rotated = self.directory / f"{host}{SUFFIX}.1"
        try:
            st = live.stat()
        except FileNotFoundError:
            return False, None
        if cur.inode and not self._same_file(live, st.st_ino, cur):
            # The file we were reading was rotated: finish it if it is the .1, else it is gone.
            try:
                rst = rotated.stat()
            except FileNotFoundError:
                rst = None
            if rst is not None and self._same_file(rotated, rst.st_ino, cur):
                self._read(host, rotated, cur, batch, budget, finished=True)
                if cur.offset < rst.st_size:
                    return False, st.st_mtime  # budget spent inside the rotated file; the rest next poll
            else:
                batch.gaps.append(
                    f"{host}: telemetry rotated more than once between polls; some samples lost"
                )
                log.warning("telemetry gap host=%s: file rotated more than once between polls", host)
            cur.inode, cur.offset, cur.head = st.st_ino, 0, ""
        elif not cur.inode:
            cur.inode = st.st_ino
        if st.st_size < cur.offset:  # truncated in place (someone emptied it): start again
            cur.offset, cur.head = 0, ""
        caught_up = self._read(host, live, cur, batch, budget, finished=False)
        if len(cur.head) < HEAD_BYTES:
            cur.head = _head(live, HEAD_BYTES)
        return caught_up, st.st_mtime

    @staticmethod
    def _same_file(path: Path, inode: int, cur: Cursor) -> bool:
        """Same inode *and* same first bytes: a rotated-away file's inode is often reused at once by the
        next new file, so the inode alone would resume the new file at the old offset."""
        if inode != cur.inode:
            return False
        return not cur.head or _head(path, len(cur.head)) == cur.head

    def _read(
        self, host: str, path: Path, cur: Cursor, batch: TelemetryBatch, budget: int | None, finished: bool
    ) -> bool:
        """True when it read to the file's end (a partial last line is a write in flight: not the end)."""
        limit = budget
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            size = os.fstat(fd).st_size
            pos = cur.offset
            spent = 0
            while pos < size and (limit is None or spent < limit):
                want = min(READ_CHUNK, size - pos)
                if limit is not None:
                    want = min(want, limit - spent)
                data = os.pread(fd, want, pos)
                if not data:
                    break
                end = data.rfind(b"\n")
                if end < 0:
                    if pos + len(data) >= size or (limit is not None and spent > 0):
                        break  # a write in flight, or the budget ends inside a line: next poll
                    # A line longer than the chunk (or than the whole budget): read on to its newline.
                    while end < 0 and pos + len(data) < size:
                        data += os.pread(fd, min(READ_CHUNK, size - pos - len(data)), pos + len(data))
                        end = data.find(b"\n")
                    if end < 0:
                        break
                self._parse(host, path, pos, data[: end + 1], cur, batch)
                pos += end + 1
                spent += end + 1
            if finished and pos < size and (limit is None or spent < limit):
                # The rotated file will not grow: an unterminated end is a torn line, not a write in flight.
                tail = os.pread(fd, size - pos, pos)
                self._corrupt(host, path, pos, "unterminated last line of a rotated file", tail, batch)
                pos = size
            cur.offset = pos
        finally:
            os.close(fd)
        return pos >= size

    def _parse(
        self, host: str, path: Path, base: int, data: bytes, cur: Cursor, batch: TelemetryBatch
    ) -> None:
        out = batch.samples.setdefault(host, [])
        start = 0
        for raw in data.split(b"\n")[:-1]:
            offset = base + start
            start += len(raw) + 1
            if not raw.strip():
                continue
            try:
                sample = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self._corrupt(host, path, offset, f"not JSON ({exc.__class__.__name__})", raw, batch)
                continue
            if not isinstance(sample, dict) or not isinstance(sample.get("time"), int | float):
                self._corrupt(host, path, offset, "not a telemetry sample (no numeric 'time')", raw, batch)
                continue
            sample.setdefault("host", host)
            out.append(sample)
        if not out:
            batch.samples.pop(host, None)

    @staticmethod
    def _corrupt(host: str, path: Path, offset: int, reason: str, raw: bytes, batch: TelemetryBatch) -> None:
        excerpt = raw[:80].decode("utf-8", "replace").replace("\x00", "\\0")
        batch.corrupt.append(
            CorruptLine(host=host, file=path.name, offset=offset, reason=reason, excerpt=excerpt)
        )
        log.warning("corrupt telemetry line host=%s file=%s offset=%d: %s", host, path.name, offset, reason)


def _head(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(n).decode("latin-1")
    except FileNotFoundError:
        return ""


class SampleWindow:
    """The recent samples per host that gpu_rules.evaluate() looks at: the last `history_s` seconds, but
    always at least the newest sample of each host (so a silent agent stays visible).

    With `dense_s`, samples older than that are thinned to one per `sparse_every_s` (a sample carrying an
    XID event, an NVML error or the clean-stop line is always kept): at 32 GPUs × 1 Hz the full 30 minutes
    would hold ~200 MiB of samples, and only the trend and the XID hold look that far back."""

    def __init__(
        self, history_s: float = 1800.0, dense_s: float | None = None, sparse_every_s: float = 30.0
    ) -> None:
        self.history_s = history_s
        self.dense_s = dense_s
        self.sparse_every_s = sparse_every_s
        self._by_host: dict[str, deque[dict[str, Any]]] = {}
        self._old: dict[str, deque[dict[str, Any]]] = {}

    def add(self, samples: dict[str, list[dict[str, Any]]]) -> None:
        for host, items in samples.items():
            dq = self._by_host.setdefault(host, deque())
            for s in items:
                # After a resume the tail can hand back an older sample; keep the buffer in time order.
                if dq and s["time"] < dq[-1]["time"]:
                    continue
                dq.append(s)

    def trim(self, now: float) -> None:
        cutoff = now - self.history_s
        dense_cutoff = now - self.dense_s if self.dense_s is not None else None
        for host, dq in self._by_host.items():
            old = self._old.setdefault(host, deque())
            if dense_cutoff is not None:
                while len(dq) > 1 and dq[0]["time"] < dense_cutoff:
                    s = dq.popleft()
                    if (
                        not old
                        or s["time"] - old[-1]["time"] >= self.sparse_every_s
                        or s.get("xid_events")
                        or s.get("nvml_error")
                        or s.get("final")
                    ):
                        old.append(s)
            while old and old[0]["time"] < cutoff:
                old.popleft()
            while not old and len(dq) > 1 and dq[0]["time"] < cutoff:
                dq.popleft()

    def by_host(self, now: float) -> dict[str, list[dict[str, Any]]]:
        self.trim(now)
        return {h: [*self._old.get(h, ()), *dq] for h, dq in self._by_host.items()}
