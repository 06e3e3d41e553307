"""verl's console log as a metric source, read incrementally, for runs whose TensorBoard folder is elsewhere.

verl's console logger prints one line per step, `step:N - key:value - key:value …` (verl 0.9.1's
utils/logger/aggregate_logger.concat_dict_to_str; values through pprint, so numpy scalars read
`np.float64(0.35)`). Ray puts `(TaskRunner pid=…)` (older verl: `(main_task pid=…)`) and colour codes in front
of lines from its actors; W&B's console capture cuts lines at 4,096 characters. All of these are read here:

    tail = ConsoleLogTail.from_state(path, saved)   # or ConsoleLogTail(path)
    result = tail.poll()          # result.new[(".", tag)] = [(step, wall_time, value), …]; result.replaced_from
    tail.state()                  # JSON: where to go on from (inode, offset, the file's head)

A step at or below the newest one read is a resume's re-logged step: like TensorBoard's rule, the history from
there on is replaced (`replaced_from`). The lines carry no time: a step's wall time is the file's mtime when the
line was read (for a live run, within a poll of when verl printed it; a log read after the fact has one time).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from justrl_hpc.monitor.sources.tfevents import ROOT_RUN

HEAD_BYTES = 256  # a rewritten file (same inode, new content) is told by its first bytes
CUT_AT = 4096  # W&B's console capture cuts a line here: its last field may be cut short, so it is dropped
READ_BYTES = 8 << 20  # per poll: a long log is read over several polls

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STEP = re.compile(r"(?:^|[\s)])step:(\d+)(?: - (.*))?$")
_WRAPPED = re.compile(r"^(?:np\.)?(?:float|int|uint|bool_)\d*\((.*)\)$|^tensor\(([^,()]*)(?:,.*)?\)$")


def parse_value(text: str) -> float | None:
    """A numeric value as verl prints it (0.35, 1e-05, nan, np.float64(0.35), tensor(0.35)), else None."""
    text = text.strip()
    m = _WRAPPED.match(text)
    if m:
        text = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
    if text in ("True", "False") or not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def parse_step_line(line: str) -> tuple[int, dict[str, float]] | None:
    """(step, {tag: value}) of one of verl's console step lines, or None for any other line."""
    line = _ANSI.sub("", line.rstrip("\r\n"))
    m = _STEP.search(line)
    if m is None:
        return None
    parts = (m.group(2) or "").split(" - ")
    if len(line) >= CUT_AT - 1 and parts:
        parts = parts[:-1]
    values: dict[str, float] = {}
    for part in parts:
        key, sep, raw = part.partition(":")
        if not sep or not key or " " in key.strip():
            continue
        value = parse_value(raw)
        if value is not None:
            values[key.strip()] = value
    return int(m.group(1)), values


def looks_like_console_log(path: Path, probe_bytes: int = 1 << 20) -> bool:
    """True when the file's first megabyte holds a verl step line with at least one metric."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(probe_bytes).decode("utf-8", "replace")
    except OSError:
        return False
    return any((p := parse_step_line(line)) is not None and p[1] for line in head.splitlines())


@dataclass
class ConsolePoll:
    new: dict[tuple[str, str], list[tuple[int, float, float]]] = field(default_factory=dict)
    replaced_from: dict[tuple[str, str], int] = field(default_factory=dict)
    lines: int = 0


class ConsoleLogTail:
    """Follows one console log. `tags`: keep a series of these (the dashboard); None keeps none (the daemon
    only needs what is new)."""

    def __init__(self, path: Path, tags: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.tags = set(tags) if tags is not None else None
        self.inode: int | None = None
        self.offset = 0
        self.head = ""
        self.last_step: int | None = None
        self._series: dict[str, list[tuple[int, float, float]]] = {}

    # -- persistence -----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"kind": "console", "path": str(self.path), "inode": self.inode, "offset": self.offset,
                "head": self.head, "last_step": self.last_step}

    @classmethod
    def from_state(cls, path: Path, state: dict[str, Any] | None, tags: Iterable[str] | None = None
                   ) -> ConsoleLogTail:
        tail = cls(path, tags)
        if state and state.get("kind") == "console" and state.get("path") == str(tail.path):
            tail.inode, tail.offset = state.get("inode"), int(state.get("offset") or 0)
            tail.head, tail.last_step = str(state.get("head") or ""), state.get("last_step")
        return tail

    # -- reading ---------------------------------------------------------------------------------------------
    def series(self, tag: str, run: str = ROOT_RUN) -> list[tuple[int, float, float]]:
        return self._series.get(tag, []) if run == ROOT_RUN else []

    def poll(self, max_bytes: int = READ_BYTES) -> ConsolePoll:
        result = ConsolePoll()
        try:
            fh = open(self.path, "rb")
        except OSError:
            return result
        with fh:
            st = os.fstat(fh.fileno())
            head = fh.read(HEAD_BYTES).decode("latin-1")
            if st.st_ino != self.inode or st.st_size < self.offset or not head.startswith(self.head[: len(head)]):
                # A new or rewritten file: read it from the start; its steps replace what was read before.
                self.inode, self.offset = st.st_ino, 0
            self.head = head
            fh.seek(self.offset)
            data = fh.read(max_bytes)
        end = data.rfind(b"\n")
        if end < 0:
            return result  # no complete line yet
        wall = st.st_mtime
        for raw in data[: end + 1].decode("utf-8", "replace").splitlines():
            result.lines += 1
            parsed = parse_step_line(raw)
            if parsed is None or not parsed[1]:
                continue
            step, values = parsed
            if self.last_step is not None and step <= self.last_step:
                self._replace_from(step, result)
            self.last_step = step
            for tag, value in values.items():
                result.new.setdefault((ROOT_RUN, tag), []).append((step, wall, value))
                if self.tags is not None and tag in self.tags and math.isfinite(value):
                    self._series.setdefault(tag, []).append((step, wall, value))
        self.offset += end + 1
        return result

    def _replace_from(self, step: int, result: ConsolePoll) -> None:
        for points in result.new.values():
            points[:] = [p for p in points if p[0] < step]
        # "*" stands for every tag: a replay may come before this poll has read any point of a tag.
        for tag in {t for _, t in result.new} | set(self._series) | {"*"}:
            key = (ROOT_RUN, tag)
            result.replaced_from[key] = min(step, result.replaced_from.get(key, step))
        for points in self._series.values():
            points[:] = [p for p in points if p[0] < step]
