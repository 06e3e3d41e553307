"""`ledger.jsonl`: the run's append-only event log, the source of truth for status and goodput.

One JSON object per line, written with a single O_APPEND write + fsync, so writers on several nodes and
processes never interleave and a crash leaves at most a torn last line, which readers skip.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import UTC, datetime
from typing import Any

from justrl_hpc.core.paths import RunPaths

EVENTS = (
    "created",
    "submitted",
    "started",
    "preflight",
    "cleanup",
    "ray-ready",
    "trainer-started",
    "step",
    "saved",
    "checkpoint-skipped",
    "stop-requested",
    "trainer-exited",
    "requeued",
    "chunk-failed",
    "finished",
    "failed",
    "eval-submitted",  # evaluation along the run (core/eval_along.py)
    "eval-finished",
)

# Events that say nothing about where the run stands: a chunk's node clean-up at its end comes after its
# `finished` or `requeued`, and the last event that tells is the one before them; an evaluate job along the
# run may end, and submit the next, days after the run finished.
NOTES = frozenset({"step", "cleanup", "preflight", "eval-submitted", "eval-finished"})


def ended(events: list[dict[str, Any]]) -> str | None:
    """`finished` or `failed` when that is the ledger's last word (a resubmission after it reopens the run; the
    nodes' notes after it do not), else None."""
    last = next((e.get("event") for e in reversed(events) if e.get("event") not in NOTES), None)
    return str(last) if last in ("finished", "failed") else None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Ledger:
    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = RunPaths(run_dir).ledger
        self._warned: set[int] = set()

    def append(
        self, event: str, *, job_id: str | None, chunk: int | None, step: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"event": event, "time": now_iso(), "job_id": job_id, "chunk": chunk}
        if step is not None:
            record["step"] = step
        record.update({k: v for k, v in fields.items() if v is not None})
        record.setdefault("host", socket.gethostname())
        record.setdefault("pid", os.getpid())
        line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def _parse(self, data: bytes, base: int) -> tuple[list[dict[str, Any]], int]:
        """Whole lines only; returns events and how many bytes were consumed."""
        out: list[dict[str, Any]] = []
        consumed = 0
        for raw in data.split(b"\n")[:-1]:  # the part after the last newline is being written
            offset = base + consumed
            consumed += len(raw) + 1
            if not raw.strip():
                continue
            try:
                out.append(json.loads(raw))
            except ValueError:
                if offset not in self._warned:
                    self._warned.add(offset)
                    print(f"ledger: skipping a corrupt line at byte {offset} of {self.path}", file=sys.stderr)
        return out, consumed

    def read(self) -> list[dict[str, Any]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return self._parse(data, 0)[0]

    def tail(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Events after byte `offset`, and the offset to pass next time."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return [], offset
        events, consumed = self._parse(data, offset)
        return events, offset + consumed
