"""Tail of the node agents' RUN/telemetry/<host>.jsonl files, for the monitor's poll loop.

Per host it keeps a cursor (inode, offset, last sample time) that the engine persists (`state()` /
`from_state()`), so a restarted daemon continues where it stopped. It follows the agent's rotation
(<host>.jsonl → <host>.jsonl.1): the rest of the rotated file is read before the new one. A line is read
only once it ends in a newline (the agent writes each line whole; an unterminated end is a write in
flight); a complete line that is not a JSON object is skipped and reported, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("justrl_hpc.monitor.telemetry")

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
    def __init__(self, directory: Path, cursors: dict[str, Cursor] | None = None) -> None:
        self.directory = Path(directory)
        self.cursors: dict[str, Cursor] = dict(cursors or {})

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
            )
        return cls(directory, cursors)

    # -- queries ---------------------------------------------------------------------------------------
    def last_seen(self) -> dict[str, float]:
        """Time of the newest sample per host (the agent's clock), for "agent silent"."""
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
    def poll(self, max_bytes_per_host: int | None = None) -> TelemetryBatch:
        """Everything new since the last poll (up to max_bytes_per_host per host, if given)."""
        batch = TelemetryBatch()
        for host in self.hosts():
            self._poll_host(host, batch, max_bytes_per_host)
        return batch

    def _poll_host(self, host: str, batch: TelemetryBatch, budget: int | None) -> None:
        cur = self.cursors.setdefault(host, Cursor())
        live = self.directory / f"{host}{SUFFIX}"
        rotated = self.directory / f"{host}{SUFFIX}.1"
        try:
            st = live.stat()
        except FileNotFoundError:
            return
        if cur.inode and not self._same_file(live, st.st_ino, cur):
            # The file we were reading was rotated: finish it if it is the .1, else it is gone.
            try:
                rst = rotated.stat()
            except FileNotFoundError:
                rst = None
            if rst is not None and self._same_file(rotated, rst.st_ino, cur):
                self._read(host, rotated, cur, batch, budget, finished=True)
                if cur.offset < rst.st_size:
                    return  # budget spent inside the rotated file; the rest next poll
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
        self._read(host, live, cur, batch, budget, finished=False)
        if len(cur.head) < HEAD_BYTES:
            cur.head = _head(live, HEAD_BYTES)

    @staticmethod
    def _same_file(path: Path, inode: int, cur: Cursor) -> bool:
        """Same inode *and* same first bytes: a rotated-away file's inode is often reused at once by the
        next new file, so the inode alone would resume the new file at the old offset."""
        if inode != cur.inode:
            return False
        return not cur.head or _head(path, len(cur.head)) == cur.head

    def _read(
        self, host: str, path: Path, cur: Cursor, batch: TelemetryBatch, budget: int | None, finished: bool
    ) -> None:
        limit = budget
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
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
            if cur.last_time is None or sample["time"] >= cur.last_time:
                cur.last_time = float(sample["time"])
                cur.final = bool(sample.get("final", False))
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
    always at least the newest sample of each host (so a silent agent stays visible)."""

    def __init__(self, history_s: float = 1800.0) -> None:
        self.history_s = history_s
        self._by_host: dict[str, deque[dict[str, Any]]] = {}

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
        for dq in self._by_host.values():
            while len(dq) > 1 and dq[0]["time"] < cutoff:
                dq.popleft()

    def by_host(self, now: float) -> dict[str, list[dict[str, Any]]]:
        self.trim(now)
        return {h: list(dq) for h, dq in self._by_host.items()}
