"""Incremental reader of the TensorBoard event files in RUN/tensorboard/: `TBTail(logdir).poll()`.

verl 0.9.1 logs through `torch.utils.tensorboard.SummaryWriter.add_scalar` (verl/utils/tracking.py,
`_TensorboardAdapter`): one Event per scalar with a tf1-style `simple_value`, file version "brain.Event:2",
no `purge_step`, so no SessionLog.START. The rehearsal (verl on the CPU backend) uses the same class. tf2-style scalars (a
scalar-shaped `tensor` whose tag carries plugin "scalars", as `tensorboard.plugins.scalar.summary_v2` and
`add_scalar(new_style=True)` write them) are read too.

How it reads
- Per file a cursor (inode, offset, first bytes as identity); a poll reads only the bytes added since. A
  record whose bytes are not all there yet (a writer mid-record) is left for the next poll.
- The records of what was read are walked into series by tfevents.EventScanner, TBTail's base: TFRecord
  framing (tfrecord.py) with the length CRC always checked, the data CRC checked with `google-crc32c` when
  it is importable (without it data CRCs are skipped, since a pure-Python CRC would cost more than the
  whole rest of the read, unless `check_data_crc=True`), resync after corrupt bytes, a hand-written fast
  path for SummaryWriter's records and protobuf for the rest. Corrupt records are reported once in
  `PollResult.corrupt` and logged; nothing is fatal.
- Files are read in creation order: the timestamp in `events.out.tfevents.<time>.<host>...`, then name. An
  unfinished record at the end of a file that a newer file of the same run follows is reported as
  truncated (the writer died mid-record), once.

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

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from justrl_hpc.monitor.sources.tfevents import (
    ROOT_RUN,
    CorruptRecord,
    EventScanner,
    FileCursor,
    Point,
    PollResult,
)

log = logging.getLogger("justrl_hpc.monitor.sources.tensorboard")

STATE_VERSION = 1
READ_CHUNK = 8 << 20  # bytes per read: large enough to amortise the syscalls, small enough for memory
HEAD_BYTES = 32  # a file's first bytes (length, CRCs, wall time of its first event): its identity


def _sort_key(name: str) -> tuple[int, str]:
    """events.out.tfevents.<unix time>.<host>.<pid>.<n>: creation order is the time, then the name."""
    rest = name.split("tfevents.", 1)[-1]
    stamp = rest.split(".", 1)[0]
    return (int(stamp) if stamp.isdigit() else 0, name)


def is_event_file(name: str) -> bool:
    return "tfevents" in name  # TensorBoard's own test (io_wrapper.IsTensorFlowEventsFile)


# -- the reader ------------------------------------------------------------------------------------------------


class TBTail(EventScanner):
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
        super().__init__(tags, check_data_crc, fast_path)
        self.logdir = Path(logdir)
        self.recursive = recursive
        self._files: dict[str, FileCursor] = {}

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

    def _new_file(self, rel: str, path: Path | None = None, run: str | None = None) -> FileCursor:
        if run is None:
            run = rel.rsplit("/", 1)[0] if "/" in rel else ROOT_RUN
        f = FileCursor(rel=rel, run=run, path=path if path is not None else self.logdir / rel)
        self._files[rel] = f
        return f

    def _read_file(self, f: FileCursor, result: PollResult, limit: int | None) -> None:
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
