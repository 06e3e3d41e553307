"""The Event records of a TensorBoard event file, walked into per-tag series: `EventScanner`, the part of
`TBTail` that turns the bytes of one read into points (tensorboard.py decides which files and bytes).

- The framing is TFRecord's (tfrecord.py). The length CRC is always checked; the expected CRC per length is
  cached, so it costs a dict lookup. The data CRC is checked when a CRC function is given (google-crc32c).
- A bad length CRC loses the framing: the scanner searches forward for the next offset whose 12 header
  bytes carry a valid length CRC and reports the bytes skipped. A bad data CRC or an undecodable Event
  skips exactly that record. Either is reported once in `PollResult.corrupt` (file, offset) and logged;
  nothing is fatal and every step of the walk moves forward. A bad record that ends exactly at the end of
  the file is given one more poll before it is reported (a network filesystem can show the new size before
  the new bytes), and a zero-filled tail is treated as not yet written.
- The common record (one simple_value, tag < 128 bytes: what SummaryWriter writes) is decoded by a
  hand-written fast path over the wire format; anything else goes to the protobuf Event class
  (`tensorboard.compat.proto.event_pb2`, imported only then). benchmarks/bench_tbreader.py measures both.
  tf2-style scalars (a scalar-shaped `tensor` whose tag carries plugin "scalars") go through protobuf too.
- Replacement: a point at a step <= the newest stored for its tag drops the stored points at steps >= it
  (see tensorboard.py for why this is RustBoard's rule).
"""

from __future__ import annotations

import bisect
import logging
import struct
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from justrl_hpc.monitor.sources.tfrecord import (
    HEADER,
    MAX_RECORD,
    RESYNC_CANDIDATE,
    U32,
    crc32c_py,
    fast_crc,
    masked,
)

log = logging.getLogger("justrl_hpc.monitor.sources.tfevents")

ROOT_RUN = "."

Point = tuple[int, float, float]  # (step, wall_time, value)
SeriesKey = tuple[str, str]  # (run, tag)

_HEAD = struct.Struct("<QIBdB")  # TFRecord header + the first 10 bytes of a SummaryWriter Event
_TAIL = struct.Struct("<fI")  # its value (the record's last 4 data bytes) + the data CRC
_F32 = struct.Struct("<f")


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
    _tail: EventScanner | None = field(default=None, repr=False, compare=False)

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
class FileCursor:
    """Where the reading of one event file stands (TBTail moves it; the walk reports against it)."""

    rel: str
    run: str
    path: Path
    inode: int = 0
    offset: int = 0
    head: bytes = b""
    held_bad: int = -1  # offset of a bad record at the end of the file given one more poll
    tail_reported: int = -1  # offset of an unfinished tail already reported as truncated
    size: int = 0  # the size read up to in the last poll


# -- the walk ------------------------------------------------------------------------------------------------


class EventScanner:
    """Walks TFRecord-framed Event records into per-run, per-tag series (the state TBTail's queries read).
    `tags=None` keeps every scalar tag; `check_data_crc=None` checks data CRCs when google-crc32c is
    importable; `fast_path=False` decodes every record with protobuf."""

    def __init__(
        self, tags: Iterable[str] | None = None, check_data_crc: bool | None = None, fast_path: bool = True
    ) -> None:
        self.wanted: frozenset[str] | None = None if tags is None else frozenset(tags)
        crc = fast_crc()
        if check_data_crc is None:
            check_data_crc = crc is not None
        self._data_crc: Callable[[bytes], int] | None = (crc or crc32c_py) if check_data_crc else None
        self._len_crc: Callable[[bytes], int] = crc or crc32c_py
        self._fast = fast_path
        self._series: dict[str, dict[str, _Series]] = {}
        # per run: raw tag bytes -> series, or None for a tag not kept
        self._by_raw: dict[str, dict[bytes, list[Any]]] = {}
        self._by_key: dict[str, dict[bytes, list[Any]]] = {}
        self._plugins: dict[SeriesKey, str] = {}
        self._lencrc: dict[int, int] = {}
        self._event_cls: Any = None

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
        for m in RESYNC_CANDIDATE.finditer(buf, start):
            p = m.start()
            if p + 12 > n:
                return None
            length, lcrc = HEADER.unpack_from(buf, p)
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

    def _scan(self, f: FileCursor, buf: bytes, at_end: bool, result: PollResult) -> tuple[int, int, bool]:
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
        f: FileCursor,
        buf: bytes,
        pos: int,
        at_end: bool,
        result: PollResult,
        store: Callable[[bytes, int, float, float], None],
    ) -> int:
        """The last record of a read shorter than 22 bytes (a tiny Event); -1 means stop for this poll."""
        n = len(buf)
        length, lcrc = HEADER.unpack_from(buf, pos)
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
        if self._data_crc is not None and masked(self._data_crc(data)) != U32.unpack_from(buf, dend)[0]:
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

    def _hold(self, f: FileCursor, pos: int, last_in_file: bool) -> bool:
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
