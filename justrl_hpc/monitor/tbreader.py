"""Incremental reader of the TensorBoard event files in RUN/tensorboard/: `TBTail(logdir).poll()`.

verl 0.9.1 logs through `torch.utils.tensorboard.SummaryWriter.add_scalar` (verl/utils/tracking.py,
`_TensorboardAdapter`): one Event per scalar with a tf1-style `simple_value`, file version "brain.Event:2",
no `purge_step`, so no SessionLog.START. The rehearsal (verl on the CPU backend) uses the same class. tf2-style scalars (a
scalar-shaped `tensor` whose tag carries plugin "scalars", as `tensorboard.plugins.scalar.summary_v2` and
`add_scalar(new_style=True)` write them) are read too.

How it reads
- Per file a cursor (inode, offset, first bytes as identity); a poll reads only the bytes added since. A
  record whose bytes are not all there yet (a writer mid-record) is left for the next poll.
- TFRecord framing is walked here (uint64 length, masked crc32c of the length, data, masked crc32c of the
  data). The length CRC is always checked; the expected CRC per length is cached, so it costs a dict
  lookup. The data CRC is checked with `google-crc32c` when it is importable; without it data CRCs are
  skipped (a pure-Python CRC would cost more than the whole rest of the read) unless `check_data_crc=True`.
- A bad length CRC loses the framing: the reader searches forward for the next offset whose 12 header
  bytes carry a valid length CRC (a false match has odds 2**-32) and reports the bytes skipped. A bad data
  CRC or an undecodable Event skips exactly that record. Either is reported once in `PollResult.corrupt`
  (file, offset) and logged; nothing is fatal and every step of the walk moves forward. A bad record that
  ends exactly at the end of the file is given one more poll before it is reported (a network filesystem
  can show the new size before the new bytes), and a zero-filled tail is treated as not yet written.
- The common record (one simple_value, tag < 128 bytes: what SummaryWriter writes) is decoded by a
  hand-written fast path over the wire format; anything else goes to the protobuf Event class
  (`tensorboard.compat.proto.event_pb2`, imported only then). benchmarks/bench_tbreader.py measures both.
- Files are read in creation order: the timestamp in `events.out.tfevents.<time>.<host>...`, then name.

Replacement rule (resumes re-log replayed steps): a new point at step s for a tag drops every stored point
of that tag at steps >= s, in this file or an earlier one, so each series is strictly increasing in step.
This is the rule of TensorBoard's Rust data server (RustBoard, what `tensorboard` 2.21 serves by default):
per time series, a step <= the last one "preempts" the points at steps >= it. TensorBoard's Python
`EventAccumulator` (event_accumulator.py) differs: for files of version >= 2 it purges only on a
SessionLog.START event (all tags, steps >= its step, `_CheckForRestartAndMaybePurge`); only files without a
version get the out-of-order rule, and then by the event's tags when step < the *global* most recent step
(`_CheckForOutOfOrderStepAndMaybePurge` / `_Purge(by_tags=True)`, keeping `x.step < event.step`). As verl
writes version 2 and never a START event, EventAccumulator would show a resumed run's replayed steps twice;
RustBoard and this reader show them once, with the newest values.

Runs: with `recursive=True` each subfolder is its own run, as in TensorBoard; runs are named by their
path relative to `logdir` ("." is the logdir itself) and every query takes `run=` (default "."). With
`recursive=False` only files directly in `logdir` are read (the monitor's own scalars in
tensorboard/monitor/ stay out of verl's curves).

Restart of a consumer: `state()` is JSON (cursors, tag filter, plugin names); `TBTail.from_state(logdir,
state, series=export)` continues exactly where it stopped when the consumer also saved `export_series()`;
without `series=` it re-reads the files up to the saved offsets silently (about 1-2 s for a whole run), so
the first poll after the restore again reports only what was written since the state was taken.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import struct
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("justrl_hpc.monitor.tbreader")

ROOT_RUN = "."
STATE_VERSION = 1
READ_CHUNK = 8 << 20  # bytes per read: large enough to amortise the syscalls, small enough for memory
HEAD_BYTES = 32  # a file's first bytes (length, CRCs, wall time of its first event): its identity
MAX_RECORD = 1 << 30  # a header claiming more than this is taken as corrupt even with a matching CRC

Point = tuple[int, float, float]  # (step, wall_time, value)
SeriesKey = tuple[str, str]  # (run, tag)

_HDR = struct.Struct("<QI")
_HEAD = struct.Struct("<QIBdB")  # header + the first 10 bytes of a SummaryWriter Event
_TAIL = struct.Struct("<fI")  # its value (the record's last 4 data bytes) + the data CRC
_U32 = struct.Struct("<I")
_F32 = struct.Struct("<f")
# Offsets p where bytes p+4..p+8 are zero, i.e. a uint64 length below 2**32: the resync candidates.
_CANDIDATE = re.compile(rb"(?s)(?=.{4}\x00\x00\x00\x00)")
_MASK_DELTA = 0xA282EAD8


# -- CRC ------------------------------------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE: list[int] | None = None


def crc32c_py(data: bytes) -> int:
    """Plain CRC-32C (Castagnoli); the fallback when google-crc32c is missing."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _crc32c_table()
    table, crc = _TABLE, 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_crc() -> Callable[[bytes], int] | None:
    try:
        import google_crc32c
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "c") != "c":
        return None  # its pure-Python fallback is as slow as ours
    return google_crc32c.value


def masked(crc: int) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant (so a CRC of CRCs is not trivial)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(buf: bytes, p: int, end: int) -> tuple[int, int]:
    """A varint (int64) at p; an unterminated one reads as (0, end), which no layout check accepts."""
    value = shift = 0
    while p < end:
        b = buf[p]
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return (value - (1 << 64) if value >= 1 << 63 else value), p
        shift += 7
    return 0, end


# -- results ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorruptRecord:
    file: str  # path relative to logdir
    offset: int  # where the bad bytes start
    reason: str  # "length crc", "data crc", "undecodable: …", "truncated"
    skipped: int  # bytes skipped (0 for a truncated tail that is kept in case it grows)


@dataclass
class PollResult:
    """What one poll found. `new` and `points()` are views of the stored series: read them before the
    next poll (which may replace points)."""

    new_counts: dict[SeriesKey, int] = field(default_factory=dict)  # new points per series
    replaced_from: dict[SeriesKey, int] = field(default_factory=dict)  # lowest step whose old points went
    corrupt: list[CorruptRecord] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # every event file seen, in reading order
    reset: list[str] = field(default_factory=list)  # files read again from 0 (shrunk or replaced)
    bytes_read: int = 0
    records: int = 0
    _tail: TBTail | None = field(default=None, repr=False, compare=False)

    @property
    def count(self) -> int:
        return sum(self.new_counts.values())

    def points(self, tag: str, run: str = ROOT_RUN) -> list[Point]:
        """The points this poll added for one series (after any replacement), oldest first."""
        n = self.new_counts.get((run, tag), 0)
        if not n or self._tail is None:
            return []
        s = self._tail._series.get(run, {}).get(tag)
        return s.slice(len(s.steps) - n) if s is not None else []

    @property
    def new(self) -> dict[SeriesKey, list[Point]]:
        return {key: self.points(key[1], key[0]) for key in self.new_counts}

    def replaced(self, tag: str, run: str = ROOT_RUN) -> int | None:
        return self.replaced_from.get((run, tag))


# -- storage ------------------------------------------------------------------------------------------------


class _Series:
    """One tag of one run as three typed arrays (24 B a point, not ~130 B as tuples), strictly increasing
    in step. `entry` is what the scan loop touches per point: [newest step, the three appends, self]."""

    __slots__ = ("tag", "steps", "walls", "values", "base", "entry")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.steps = array("q")
        self.walls = array("d")
        self.values = array("d")
        self.base = 0  # length when this poll began, lowered by a replacement within it
        self.entry: list[Any] = [_BEFORE_ALL, self.steps.append, self.walls.append, self.values.append, self]

    def cut(self, step: int) -> int:
        """Drop the points at steps >= `step`; returns the index cut at."""
        i = bisect.bisect_left(self.steps, step)
        del self.steps[i:]
        del self.walls[i:]
        del self.values[i:]
        return i

    def slice(self, start: int = 0) -> list[Point]:
        return list(zip(self.steps[start:], self.walls[start:], self.values[start:], strict=True))


_BEFORE_ALL = -(1 << 63) - 1  # below any int64 step
_SKIP: list[Any] = [None]  # the entry of a tag not kept


@dataclass
class _File:
    rel: str
    run: str
    path: Path
    inode: int = 0
    offset: int = 0
    head: bytes = b""
    held_bad: int = -1  # offset of a bad record at the end of the file given one more poll
    tail_reported: int = -1  # offset of an unfinished tail already reported as truncated
    size: int = 0  # the size read up to in the last poll


def _sort_key(name: str) -> tuple[int, str]:
    """events.out.tfevents.<unix time>.<host>.<pid>.<n>: creation order is the time, then the name."""
    rest = name.split("tfevents.", 1)[-1]
    stamp = rest.split(".", 1)[0]
    return (int(stamp) if stamp.isdigit() else 0, name)


def is_event_file(name: str) -> bool:
    return "tfevents" in name  # TensorBoard's own test (io_wrapper.IsTensorFlowEventsFile)


# -- the reader ------------------------------------------------------------------------------------------------


class TBTail:
    def __init__(
        self,
        logdir: str | os.PathLike[str],
        tags: Iterable[str] | None = None,
        recursive: bool = False,
        check_data_crc: bool | None = None,
        fast_path: bool = True,
    ) -> None:
        """`tags=None` keeps every scalar tag; a list keeps only those. `check_data_crc=None` checks data
        CRCs when google-crc32c is importable. `fast_path=False` decodes every record with protobuf
        (for the benchmark and the tests that compare the two)."""
        self.logdir = Path(logdir)
        self.recursive = recursive
        self.wanted: frozenset[str] | None = None if tags is None else frozenset(tags)
        crc = _fast_crc()
        if check_data_crc is None:
            check_data_crc = crc is not None
        self._data_crc: Callable[[bytes], int] | None = (crc or crc32c_py) if check_data_crc else None
        self._len_crc: Callable[[bytes], int] = crc or crc32c_py
        self._fast = fast_path
        self._files: dict[str, _File] = {}
        self._series: dict[str, dict[str, _Series]] = {}
        # per run: raw tag bytes -> series, or None for a tag not kept
        self._by_raw: dict[str, dict[bytes, list[Any]]] = {}
        self._by_key: dict[str, dict[bytes, list[Any]]] = {}
        self._plugins: dict[SeriesKey, str] = {}
        self._lencrc: dict[int, int] = {}
        self._event_cls: Any = None

    # -- queries ------------------------------------------------------------------------------------------
    def runs(self) -> list[str]:
        return sorted(r for r, tags in self._series.items() if any(s.steps for s in tags.values()))

    def tags(self, run: str = ROOT_RUN) -> list[str]:
        return sorted(t for t, s in self._series.get(run, {}).items() if s.steps)

    def series(self, tag: str, run: str = ROOT_RUN) -> list[Point]:
        """(step, wall_time, value) of one tag, sorted by step (one point a step: the newest written)."""
        s = self._series.get(run, {}).get(tag)
        return s.slice() if s is not None else []

    def latest(self, tag: str, run: str = ROOT_RUN) -> Point | None:
        s = self._series.get(run, {}).get(tag)
        if s is None or not s.steps:
            return None
        return (s.steps[-1], s.walls[-1], s.values[-1])

    def files(self) -> list[str]:
        return list(self._files)

    # -- persistence ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-serialisable cursors, for the monitor's store."""
        return {
            "version": STATE_VERSION,
            "recursive": self.recursive,
            "tags": None if self.wanted is None else sorted(self.wanted),
            "files": {
                rel: {"inode": f.inode, "offset": f.offset, "head": f.head.hex()}
                for rel, f in self._files.items()
            },
            "plugins": [[run, tag, name] for (run, tag), name in sorted(self._plugins.items())],
        }

    def export_series(self) -> dict[str, Any]:
        """The stored series as JSON (columns per tag; NaN/inf as json.dumps writes them), for
        `from_state(..., series=)`."""
        return {
            "version": STATE_VERSION,
            "runs": {
                run: {
                    tag: [s.steps.tolist(), s.walls.tolist(), s.values.tolist()]
                    for tag, s in tags.items()
                    if s.steps
                }
                for run, tags in self._series.items()
            },
        }

    @classmethod
    def from_state(
        cls,
        logdir: str | os.PathLike[str],
        state: dict[str, Any] | None,
        tags: Iterable[str] | None = None,
        recursive: bool = False,
        series: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TBTail:
        """A reader that continues where the one that wrote `state` stopped. A state that does not fit
        (another version, other `recursive`, a tag filter that lacks tags asked for now) is ignored: the
        reader starts from the beginning, so every point comes as new."""
        tail = cls(logdir, tags=tags, recursive=recursive, **kwargs)
        if not tail._state_fits(state):
            return tail
        assert state is not None
        for run, tag, name in state.get("plugins") or ():
            tail._plugins[(str(run), str(tag))] = str(name)
        saved: dict[str, dict[str, Any]] = {}
        for rel, c in (state.get("files") or {}).items():
            try:
                saved[str(rel)] = {
                    "inode": int(c["inode"]),
                    "offset": int(c["offset"]),
                    "head": bytes.fromhex(str(c.get("head", ""))),
                }
            except (KeyError, TypeError, ValueError):
                continue
        if series is not None and tail._seed(series):
            for rel, c in saved.items():
                f = tail._new_file(rel)
                f.inode, f.offset, f.head = c["inode"], c["offset"], c["head"]
        else:
            # Rebuild the series from the files up to the saved offsets, silently; a file that is not the
            # one saved any more is left out, so the next poll reads all of it as new.
            limits = {rel: c["offset"] for rel, c in saved.items() if tail._same_file(rel, c)}
            tail.poll(limits=limits)
        return tail

    def _same_file(self, rel: str, saved: dict[str, Any]) -> bool:
        try:
            with open(self.logdir / rel, "rb") as fh:
                st = os.fstat(fh.fileno())
                head = fh.read(len(saved["head"]))
        except OSError:
            return False
        return st.st_ino == saved["inode"] and st.st_size >= saved["offset"] and head == saved["head"]

    def _state_fits(self, state: dict[str, Any] | None) -> bool:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return False
        if bool(state.get("recursive")) != self.recursive:
            return False
        old = state.get("tags")
        if old is None:
            return True
        return self.wanted is not None and self.wanted <= set(old)

    def _seed(self, series: dict[str, Any]) -> bool:
        if not isinstance(series, dict) or series.get("version") != STATE_VERSION:
            return False
        try:
            for run, tags in series["runs"].items():
                for tag, (steps, walls, values) in tags.items():
                    if self.wanted is not None and tag not in self.wanted:
                        continue
                    s = self._get_series(str(run), str(tag))
                    s.steps.extend(int(x) for x in steps)
                    s.walls.extend(float(x) for x in walls)
                    s.values.extend(float(x) for x in values)
                    if not (len(s.steps) == len(s.walls) == len(s.values)):
                        raise ValueError("columns of unequal length")
                    if s.steps:
                        s.entry[0] = s.steps[-1]
        except (AttributeError, KeyError, TypeError, ValueError):
            self._series.clear()
            self._by_raw.clear()
            self._by_key.clear()
            return False
        return True

    # -- the poll ---------------------------------------------------------------------------------------------
    def poll(self, limits: dict[str, int] | None = None) -> PollResult:
        """Read what was added since the last poll. `limits` (file → offset) stops those files there and
        skips the others; from_state uses it to rebuild the series."""
        result = PollResult(_tail=self)
        for tags in self._series.values():
            for s in tags.values():
                s.base = len(s.steps)
        for rel, path, run in self._discover():
            if limits is not None and rel not in limits:
                continue
            result.files.append(rel)
            f = self._files.get(rel) or self._new_file(rel, path, run)
            try:
                self._read_file(f, result, None if limits is None else limits[rel])
            except FileNotFoundError:
                continue  # removed between listing and opening
        if limits is None:
            self._check_truncated(result.files, result)
        for run, tags in self._series.items():
            for tag, s in tags.items():
                if len(s.steps) > s.base:
                    result.new_counts[(run, tag)] = len(s.steps) - s.base
        return result

    def _discover(self) -> list[tuple[str, Path, str]]:
        found: list[tuple[str, tuple[int, str], Path, str]] = []
        if not self.logdir.is_dir():
            return []
        if self.recursive:
            for root, dirs, names in os.walk(self.logdir):
                dirs.sort()
                rel_dir = os.path.relpath(root, self.logdir).replace(os.sep, "/")
                run = ROOT_RUN if rel_dir == "." else rel_dir
                for name in names:
                    if is_event_file(name):
                        rel = name if run == ROOT_RUN else f"{run}/{name}"
                        found.append((run, _sort_key(name), Path(root) / name, rel))
        else:
            with os.scandir(self.logdir) as it:
                for entry in it:
                    if is_event_file(entry.name) and entry.is_file():
                        found.append((ROOT_RUN, _sort_key(entry.name), Path(entry.path), entry.name))
        found.sort(key=lambda x: (x[0], x[1]))
        return [(rel, path, run) for run, _, path, rel in found]

    def _new_file(self, rel: str, path: Path | None = None, run: str | None = None) -> _File:
        if run is None:
            run = rel.rsplit("/", 1)[0] if "/" in rel else ROOT_RUN
        f = _File(rel=rel, run=run, path=path if path is not None else self.logdir / rel)
        self._files[rel] = f
        return f

    def _read_file(self, f: _File, result: PollResult, limit: int | None) -> None:
        with open(f.path, "rb") as fh:
            st = os.fstat(fh.fileno())
            size = st.st_size if limit is None else min(limit, st.st_size)
            if f.offset or f.head:
                same = st.st_ino == f.inode and st.st_size >= f.offset
                if same and f.head:
                    head = fh.read(len(f.head))
                    same = head == f.head
                if not same:
                    result.reset.append(f.rel)
                    log.warning("tensorboard %s: replaced or shrunk, reading it again from 0", f.rel)
                    f.offset, f.head, f.held_bad, f.tail_reported = 0, b"", -1, -1
            f.inode = st.st_ino
            if size <= f.offset:
                return
            if len(f.head) < HEAD_BYTES and size > len(f.head):
                fh.seek(0)
                f.head = fh.read(min(HEAD_BYTES, size))
            need = READ_CHUNK
            while f.offset < size:
                fh.seek(f.offset)
                buf = fh.read(min(need, size - f.offset))
                if not buf:
                    break
                result.bytes_read += len(buf)
                at_end = f.offset + len(buf) >= size
                used, want, stop = self._scan(f, buf, at_end, result)
                f.offset += used
                if stop or at_end:
                    break  # the rest is unfinished (or held back once): the next poll
                if used == 0:
                    need = max(want, need)  # one record larger than the read size
                else:
                    need = READ_CHUNK
            f.size = size

    def _check_truncated(self, seen: list[str], result: PollResult) -> None:
        """An unfinished record at the end of a file that a newer file in the same run follows: the writer
        died mid-record. Reported once; the bytes are kept in case the writer was only slow."""
        newest: dict[str, tuple[int, str]] = {}
        for rel in seen:
            f = self._files[rel]
            newest[f.run] = max(newest.get(f.run, (-1, "")), _sort_key(f.path.name))
        for rel in seen:
            f = self._files[rel]
            if f.offset < f.size and _sort_key(f.path.name) < newest[f.run] and f.tail_reported != f.offset:
                f.tail_reported = f.offset
                self._report(result, CorruptRecord(f.rel, f.offset, "truncated", 0))

    def _report(self, result: PollResult, rec: CorruptRecord) -> None:
        result.corrupt.append(rec)
        log.warning(
            "tensorboard %s: corrupt record at offset %d (%s), %d bytes skipped",
            rec.file,
            rec.offset,
            rec.reason,
            rec.skipped,
        )

    def _len_ok(self, buf: bytes, pos: int, length: int, lcrc: int) -> bool:
        good = self._lencrc.get(length)
        if good is None:
            good = masked(self._len_crc(buf[pos : pos + 8]))
            if len(self._lencrc) < 1 << 16 and length <= MAX_RECORD:
                self._lencrc[length] = good
        return good == lcrc and length <= MAX_RECORD

    def _resync(self, buf: bytes, start: int) -> int | None:
        """The next offset >= start in buf with a valid header, or None."""
        n = len(buf)
        for m in _CANDIDATE.finditer(buf, start):
            p = m.start()
            if p + 12 > n:
                return None
            length, lcrc = _HDR.unpack_from(buf, p)
            if self._len_ok(buf, p, length, lcrc):
                return p
        return None

    def _get_series(self, run: str, tag: str) -> _Series:
        tags = self._series.setdefault(run, {})
        s = tags.get(tag)
        if s is None:
            s = tags[tag] = _Series(tag)
        return s

    def _entry(self, run: str, tag_raw: bytes) -> list[Any]:
        """The scan entry of a tag (made on its first record): its series' entry, or _SKIP."""
        by_raw = self._by_raw.setdefault(run, {})
        ent = by_raw.get(tag_raw)
        if ent is None:
            tag = tag_raw.decode("utf-8", "replace")
            ent = (
                _SKIP
                if self.wanted is not None and tag not in self.wanted
                else self._get_series(run, tag).entry
            )
            by_raw[tag_raw] = ent
        return ent

    def _replace(
        self, ent: list[Any], step: int, wall: float, value: float, run: str, result: PollResult
    ) -> None:
        """A point at a step <= the newest stored: drop the stored points at steps >= it first."""
        s: _Series = ent[4]
        i = s.cut(step)
        if i < s.base:
            key = (run, s.tag)
            old = result.replaced_from.get(key)
            result.replaced_from[key] = step if old is None else min(old, step)
            s.base = i
        ent[0] = step
        ent[1](step)
        ent[2](wall)
        ent[3](value)

    def _scan(self, f: _File, buf: bytes, at_end: bool, result: PollResult) -> tuple[int, int, bool]:
        """Walk the records in buf; returns (bytes consumed, bytes the next record needs, whether to stop
        reading this file for this poll)."""
        run = f.run
        # Fast-path key: the bytes of a SummaryWriter record from the Summary field up to the value
        # (2a L1 0a L2 0a Lt <tag> 15). A key found here was checked once, so the layout is known.
        by_key: dict[bytes, list[Any]] = self._by_key.setdefault(run, {})
        lencrc = self._lencrc
        data_crc = self._data_crc
        fast = self._fast
        unpack_head = _HEAD.unpack_from
        unpack_tail = _TAIL.unpack_from
        skip = _SKIP
        n = len(buf)
        pos = 0
        records = 0
        stop = False

        def store(tag_raw: bytes, step: int, wall: float, value: float) -> None:
            ent = self._entry(run, tag_raw)
            if ent is skip:
                return
            if step > ent[0]:
                ent[0] = step
                ent[1](step)
                ent[2](wall)
                ent[3](value)
            else:
                self._replace(ent, step, wall, value, run, result)

        while pos + 22 <= n:
            # length, its CRC, then (if this is SummaryWriter's layout) 09 <wall_time f64> 10
            length, lcrc, m_wall, wall, m_step = unpack_head(buf, pos)
            if lencrc.get(length) != lcrc and not self._len_ok(buf, pos, length, lcrc):
                if at_end and not buf[pos:].strip(b"\x00"):
                    stop = True
                    break  # zeros at the end: pages not written yet
                nxt = self._resync(buf, pos + 1)
                if nxt is None:
                    nxt = n - 11 if not at_end else max(pos + 1, n - 11)  # a header may straddle reads
                self._report(result, CorruptRecord(f.rel, f.offset + pos, "length crc", nxt - pos))
                pos = nxt
                continue
            dend = pos + 12 + length
            if dend + 4 > n:
                if pos == 0:
                    return 0, dend + 4, at_end
                break
            value, dcrc = unpack_tail(buf, dend - 4)
            if data_crc is not None:
                c = data_crc(buf[pos + 12 : dend])
                if ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF != dcrc:
                    if self._hold(f, pos, dend + 4 == n and at_end):
                        stop = True
                        break
                    self._report(result, CorruptRecord(f.rel, f.offset + pos, "data crc", length + 16))
                    pos = dend + 4
                    continue
            records += 1
            if fast and m_wall == 0x09 and m_step == 0x10 and length >= 20:
                p = pos + 22
                step = buf[p]
                if step < 0x80:
                    p += 1
                else:
                    step, p = _varint(buf, p, dend)
                ent = by_key.get(buf[p : dend - 4])
                if ent is None:
                    ent = self._fast_key(run, buf, p, dend, by_key)
                if ent is not None:
                    if ent is skip:
                        pass
                    elif step > ent[0]:
                        ent[0] = step
                        ent[1](step)
                        ent[2](wall)
                        ent[3](value)
                    else:
                        self._replace(ent, step, wall, value, run, result)
                    pos = dend + 4
                    continue
            problem = self._decode(run, buf[pos + 12 : dend], store)
            if problem is not None:
                if self._hold(f, pos, dend + 4 == n and at_end):
                    records -= 1
                    stop = True
                    break
                self._report(
                    result, CorruptRecord(f.rel, f.offset + pos, f"undecodable: {problem}", length + 16)
                )
            pos = dend + 4
        if n - pos < 22 and n - pos >= 12 and not stop:
            # fewer bytes left than the fast header: one record (or less) through the plain header
            used = self._scan_short(f, buf, pos, at_end, result, store)
            if used < 0:
                stop = True
            else:
                pos = used
        result.records += records
        return pos, 0, stop

    def _scan_short(
        self,
        f: _File,
        buf: bytes,
        pos: int,
        at_end: bool,
        result: PollResult,
        store: Callable[[bytes, int, float, float], None],
    ) -> int:
        """The last record of a read shorter than 22 bytes (a tiny Event); -1 means stop for this poll."""
        n = len(buf)
        length, lcrc = _HDR.unpack_from(buf, pos)
        if not self._len_ok(buf, pos, length, lcrc):
            if at_end and not buf[pos:].strip(b"\x00"):
                return -1
            nxt = self._resync(buf, pos + 1)
            nxt = nxt if nxt is not None else (n - 11 if not at_end else max(pos + 1, n - 11))
            self._report(result, CorruptRecord(f.rel, f.offset + pos, "length crc", nxt - pos))
            return nxt
        dend = pos + 12 + length
        if dend + 4 > n:
            return pos
        data = buf[pos + 12 : dend]
        if self._data_crc is not None and masked(self._data_crc(data)) != _U32.unpack_from(buf, dend)[0]:
            if self._hold(f, pos, dend + 4 == n and at_end):
                return -1
            self._report(result, CorruptRecord(f.rel, f.offset + pos, "data crc", length + 16))
            return dend + 4
        problem = self._decode(f.run, data, store)
        if problem is not None:
            if self._hold(f, pos, dend + 4 == n and at_end):
                return -1
            self._report(result, CorruptRecord(f.rel, f.offset + pos, f"undecodable: {problem}", length + 16))
        result.records += 1
        return dend + 4

    def _fast_key(
        self, run: str, buf: bytes, p: int, dend: int, by_key: dict[bytes, list[Any]]
    ) -> list[Any] | None:
        """Check SummaryWriter's layout from the Summary field on (p) once per tag; register its key."""
        tlen = dend - p - 11
        if not 0 < tlen < 0x80 or buf[p : p + 6] != bytes((0x2A, tlen + 9, 0x0A, tlen + 7, 0x0A, tlen)):
            return None
        if buf[dend - 5] != 0x15:
            return None
        ent = self._entry(run, buf[p + 6 : p + 6 + tlen])
        if len(by_key) < 1 << 16:
            by_key[buf[p : dend - 4]] = ent
        return ent

    def _hold(self, f: _File, pos: int, last_in_file: bool) -> bool:
        """Give a bad record that ends exactly at the end of the file one more poll."""
        if last_in_file and f.held_bad != f.offset + pos:
            f.held_bad = f.offset + pos
            return True
        return False

    def _decode(self, run: str, data: bytes, store: Callable[[bytes, int, float, float], None]) -> str | None:
        """Any Event through protobuf; scalars go to `store`. Returns why it could not be decoded, or None."""
        if self._event_cls is None:
            from tensorboard.compat.proto import event_pb2

            self._event_cls = event_pb2.Event
        try:
            ev = self._event_cls.FromString(data)
        except Exception as exc:  # protobuf's DecodeError, and whatever a broken message raises
            return type(exc).__name__
        if not ev.HasField("summary"):
            return None
        for v in ev.summary.value:
            tag = v.tag
            if v.HasField("metadata") and v.metadata.plugin_data.plugin_name:
                self._plugins[(run, tag)] = v.metadata.plugin_data.plugin_name
            kind = v.WhichOneof("value")
            if kind == "simple_value":
                value: float | None = v.simple_value
            elif kind == "tensor" and self._plugins.get((run, tag)) == "scalars":
                value = tensor_scalar(v.tensor)
            else:
                continue
            if value is not None:
                store(tag.encode(), ev.step, ev.wall_time, value)
        return None


# TensorFlow DataType numbers (tensorboard/compat/proto/types.proto) → struct format of tensor_content
_DTYPE_FORMAT = {1: "<f", 2: "<d", 3: "<i", 4: "<B", 5: "<h", 6: "<b", 9: "<q", 10: "<?", 19: "<e"}


def tensor_scalar(t: Any) -> float | None:
    """The value of a one-element numeric TensorProto (tf2-style scalar), else None."""
    if any(d.size != 1 for d in t.tensor_shape.dim):
        return None
    fmt = _DTYPE_FORMAT.get(t.dtype)
    if t.dtype == 14:  # bfloat16: the high half of a float32
        if t.tensor_content:
            return _F32.unpack(b"\x00\x00" + t.tensor_content[:2])[0]
        return _F32.unpack(struct.pack("<I", (t.half_val[0] & 0xFFFF) << 16))[0] if t.half_val else None
    if fmt is None:
        return None
    if t.tensor_content:
        size = struct.calcsize(fmt)
        if len(t.tensor_content) != size:
            return None
        return float(struct.unpack(fmt, t.tensor_content)[0])
    for vals in (t.float_val, t.double_val, t.int_val, t.int64_val, t.bool_val):
        if len(vals) == 1:
            return float(vals[0])
    if len(t.half_val) == 1:
        return float(struct.unpack("<e", struct.pack("<H", t.half_val[0] & 0xFFFF))[0])
    return None
