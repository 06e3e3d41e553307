"""The daemon's memory: RUN/monitor.db (SQLite, WAL), the alert book, and the leader lock.

What the database holds (one file per run folder):
  state       name → JSON blob: read cursors (TensorBoard, telemetry, ledger offset) and the rules' rolling
              state, so a restarted daemon continues where the last committed cycle stopped
  open_alert  the keys firing now (first seen, last fired, absent since, the finding)
  history     every transition ever raised, with its alert id
  outbox      (alert id, sink) pairs not yet delivered
  lease       who leads this folder (host, pid, when renewed), for the people and for a second guard

Delivery is commit-then-deliver through the outbox. One transaction per cycle writes the new cursors, the
rules' state, the open-alert changes, the history rows and one outbox row per transition and sink; only
after it commits are the alerts handed to the sinks, and each sink's success deletes its outbox row at
once (its own small transaction). A daemon killed before the commit re-reads the same data from the old
cursors and raises the same transitions (alert ids are derived from key, start and count, so they come out
equal); killed after it, it finds the undelivered rows in the outbox and delivers them when it restarts.
So no transition is lost, and:
  - alerts.jsonl is exactly-once: before re-delivering to it, the daemon looks for the alert id in the file
    (a kill between the append and its outbox delete leaves the id there);
  - the webhook, e-mail and log sinks are at-least-once: a kill in the milliseconds between a sink's
    success and its outbox delete repeats that one alert after the restart (the receiving end cannot be
    asked what it already has). A delivery that the dispatcher gave up on stays in the outbox and is tried
    again when the daemon next starts.

Leadership: a POSIX lock (fcntl.lockf) on RUN/monitor.lock, held for the daemon's life and dropped by the
kernel when the process dies (kill -9 included). It excludes a second daemon on the same machine on any
filesystem, and across machines on filesystems whose locks are cluster-wide: NFSv3 with lockd, NFSv4, GPFS,
BeeGFS with global locks, Lustre mounted with `flock`. Lustre's `localflock` and mounts with `nolock` keep
locks per machine; for those the lease row is the second guard: a daemon that holds the file lock but sees
a lease renewed within `lease_s` by another host refuses to lead and says why. Only the leader ever opens
monitor.db (the dashboard reads alerts.jsonl and monitor.heartbeat), which matters because SQLite's WAL
needs every connection on one machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from justrl_hpc.monitor.findings import SEVERITIES, Alert, Finding

log = logging.getLogger("justrl_hpc.monitor.daemon.store")

LOCK_NAME = "monitor.lock"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS open_alert (key TEXT PRIMARY KEY, scope TEXT NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    state TEXT NOT NULL,
    time REAL NOT NULL,
    alert TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    alert_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    PRIMARY KEY (alert_id, sink)
);
CREATE TABLE IF NOT EXISTS lease (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    since REAL NOT NULL,
    renewed REAL NOT NULL
);
"""


@dataclass
class BookAlert(Alert):
    """An Alert with the id that makes its delivery idempotent (also written to alerts.jsonl)."""

    alert_id: str = ""


def alert_id(run: str, key: str, first_seen: float, count: int, state: str) -> str:
    """Deterministic: the same transition recomputed after a crash gets the same id."""
    raw = f"{run}\0{key}\0{first_seen:.6f}\0{count}\0{state}".encode()
    return hashlib.sha256(raw).hexdigest()[:20]


# -- the alert book -------------------------------------------------------------------------------------------


@dataclass
class BookSettings:
    """The `daemon:` timings of the book (seconds, in the clock of the data each scope is judged by)."""

    refire_s: float = 3600.0  # a key still holding is sent again this often (nvrx_watch's hourly re-fire)
    cooldown_s: float = 300.0  # a key must be absent this long before it resolves (no fire/resolve flapping)


@dataclass
class OpenAlert:
    key: str
    scope: str
    finding: dict[str, Any]
    first_seen: float
    last_fired: float
    last_seen: float
    count: int = 1  # how many times it was sent firing (1 + re-fires)
    absent_since: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str) -> OpenAlert:
        return cls(**json.loads(text))


class AlertBook:
    """Turns each evaluation's findings into transitions.

    Findings come in scopes (`train` per TensorBoard step, `gpu` and `progress` per cycle, `sinks`): an
    evaluation of a scope resolves only that scope's keys, so the GPU rules never resolve a training
    alert. `at` is the time the evaluation stands for: a step's wall time for training findings, the cycle
    time otherwise, so a replay of old steps gives the same transitions as watching them live.
    """

    def __init__(self, run: str, settings: BookSettings, open_alerts: Mapping[str, OpenAlert] | None = None):
        self.run = run
        self.settings = settings
        self.open: dict[str, OpenAlert] = dict(open_alerts or {})
        self.pending: list[BookAlert] = []  # transitions since the last take()
        self._dirty: set[str] = set()
        self._gone: set[str] = set()

    def update(self, scope: str, findings: Iterable[Finding], at: float) -> list[BookAlert]:
        st = self.settings
        out: list[BookAlert] = []
        seen: set[str] = set()
        for f in findings:
            if f.key in seen:
                continue  # a rule that named one key twice: the first wins
            seen.add(f.key)
            cur = self.open.get(f.key)
            if cur is None:
                cur = OpenAlert(f.key, scope, asdict(f), first_seen=at, last_fired=at, last_seen=at)
                self.open[f.key] = cur
                out.append(self._alert(cur, f, "firing", at))
            else:
                cur.finding, cur.last_seen, cur.absent_since = asdict(f), at, None
                if at - cur.last_fired >= st.refire_s:
                    cur.count += 1
                    cur.last_fired = at
                    out.append(self._alert(cur, f, "firing", at))
            self._touch(f.key)
        for key, cur in list(self.open.items()):
            if cur.scope != scope or key in seen:
                continue
            if cur.absent_since is None:
                cur.absent_since = at
                self._touch(key)
            if at - cur.absent_since >= st.cooldown_s:
                del self.open[key]
                self._dirty.discard(key)
                self._gone.add(key)
                out.append(self._alert(cur, Finding(**cur.finding), "resolved", at))
        self.pending.extend(out)
        return out

    def _touch(self, key: str) -> None:
        self._dirty.add(key)
        self._gone.discard(key)

    def _alert(
        self, cur: OpenAlert, f: Finding, state: Literal["firing", "resolved"], at: float
    ) -> BookAlert:
        a = BookAlert.from_finding(self.run, f, state)
        a.time = at
        a.alert_id = alert_id(self.run, cur.key, cur.first_seen, cur.count, state)
        if state == "resolved":
            a.message = f"resolved: {f.message}"
        return a

    def firing_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SEVERITIES, 0)
        for cur in self.open.values():
            sev = str(cur.finding.get("severity", "info"))
            counts[sev] = counts.get(sev, 0) + 1
        return counts

    def take(self) -> tuple[list[BookAlert], list[OpenAlert], list[str]]:
        """Transitions, changed open alerts and resolved keys since the last take (for one commit)."""
        out = (
            self.pending,
            [self.open[k] for k in sorted(self._dirty) if k in self.open],
            sorted(self._gone),
        )
        self.pending, self._dirty, self._gone = [], set(), set()
        return out


# -- the database ---------------------------------------------------------------------------------------------


@dataclass
class Pending:
    alert: BookAlert
    sinks: list[str] = field(default_factory=list)


class MonitorStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = self._connect()
        self._ack_lock = threading.Lock()
        self._ack_db: sqlite3.Connection | None = None
        with self._db:
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a commit that returned is on disk: cursors are promises
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def close(self) -> None:
        with self._ack_lock:
            if self._ack_db is not None:
                self._ack_db.close()
                self._ack_db = None
        self._db.close()

    # -- reading ---------------------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def open_alerts(self) -> dict[str, OpenAlert]:
        rows = self._db.execute("SELECT value FROM open_alert").fetchall()
        return {a.key: a for a in (OpenAlert.from_json(r[0]) for r in rows)}

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT alert FROM history ORDER BY seq"
        rows = self._db.execute(sql).fetchall()
        out = [json.loads(r[0]) for r in rows]
        return out[-limit:] if limit else out

    def pending(self) -> list[Pending]:
        """Transitions committed but not yet delivered to every sink, oldest first."""
        rows = self._db.execute(
            "SELECT h.alert, o.sink FROM outbox o JOIN history h ON h.alert_id = o.alert_id ORDER BY h.seq"
        ).fetchall()
        by_id: dict[str, Pending] = {}
        for text, sink in rows:
            data = json.loads(text)
            p = by_id.setdefault(data["alert_id"], Pending(BookAlert(**data)))
            p.sinks.append(sink)
        return list(by_id.values())

    # -- writing ---------------------------------------------------------------------------------------
    def commit(
        self,
        state: Mapping[str, Any],
        book: AlertBook,
        sinks: Sequence[str],
        lease: tuple[str, str, int] | None = None,
    ) -> list[BookAlert]:
        """One transaction: the cursors and rule state that produced this cycle's transitions, the
        transitions themselves, their outbox rows, and the lease renewal. Returns the transitions."""
        alerts, changed, gone = book.take()
        now = time.time()
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for name, value in state.items():
                db.execute(
                    "INSERT INTO state (name, value, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                    (name, json.dumps(value, sort_keys=True, default=str), now),
                )
            for cur in changed:
                db.execute(
                    "INSERT INTO open_alert (key, scope, value) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET scope = excluded.scope, value = excluded.value",
                    (cur.key, cur.scope, cur.to_json()),
                )
            for key in gone:
                db.execute("DELETE FROM open_alert WHERE key = ?", (key,))
            for a in alerts:
                cur_ins = db.execute(
                    "INSERT OR IGNORE INTO history (alert_id, key, state, time, alert) VALUES (?, ?, ?, ?, ?)",
                    (a.alert_id, a.key, a.state, a.time, a.to_json()),
                )
                if cur_ins.rowcount:
                    db.executemany(
                        "INSERT OR IGNORE INTO outbox (alert_id, sink) VALUES (?, ?)",
                        [(a.alert_id, s) for s in sinks],
                    )
            if lease is not None:
                self._renew(*lease, now=now)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return alerts

    def ack(self, alert_id: str, sink: str) -> None:
        """One sink delivered one alert: forget its outbox row now (called from the sinks' threads)."""
        with self._ack_lock:
            if self._ack_db is None:
                self._ack_db = self._connect()
            with self._ack_db:
                self._ack_db.execute("DELETE FROM outbox WHERE alert_id = ? AND sink = ?", (alert_id, sink))

    def drop_outbox(self, sink: str) -> int:
        with self._db:
            return self._db.execute("DELETE FROM outbox WHERE sink = ?", (sink,)).rowcount

    # -- the lease ----------------------------------------------------------------------------------------
    def lease(self) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT owner, host, pid, since, renewed FROM lease WHERE name = 'leader'"
        ).fetchone()
        return dict(zip(("owner", "host", "pid", "since", "renewed"), row, strict=True)) if row else None

    def take_lease(self, owner: str, host: str, pid: int, lease_s: float) -> str | None:
        """Claim the lease row; None when claimed, else why not (another host renewed it recently)."""
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self.lease()
            if cur and cur["host"] != host and now - cur["renewed"] < lease_s:
                self._db.execute("ROLLBACK")
                return (
                    f"monitor.db's lease is held by {cur['owner']} (renewed {now - cur['renewed']:.0f} s ago) "
                    "although this daemon holds monitor.lock: this filesystem's locks are not cluster-wide"
                )
            self._db.execute(
                "INSERT INTO lease (name, owner, host, pid, since, renewed) VALUES ('leader', ?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, host = excluded.host, "
                "pid = excluded.pid, since = excluded.since, renewed = excluded.renewed",
                (owner, host, pid, now, now),
            )
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return None

    def _renew(self, owner: str, host: str, pid: int, now: float) -> None:
        self._db.execute(
            "UPDATE lease SET renewed = ?, owner = ?, host = ?, pid = ? WHERE name = 'leader'",
            (now, owner, host, pid),
        )


# -- the leader lock -------------------------------------------------------------------------------------------


class LeaderLock:
    """fcntl.lockf on RUN/monitor.lock; see the module docstring for where it is cluster-wide."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.owner} {time.time():.3f}\n".encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().split(" ")[0].strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


def ids_in_jsonl(path: Path, wanted: set[str]) -> set[str]:
    """Which of `wanted` alert ids alerts.jsonl already holds (the exactly-once check for that sink)."""
    if not wanted:
        return set()
    found: set[str] = set()
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                if b'"alert_id"' not in raw:
                    continue
                try:
                    aid = json.loads(raw).get("alert_id")
                except ValueError:
                    continue
                if aid in wanted:
                    found.add(aid)
    except FileNotFoundError:
        pass
    return found
