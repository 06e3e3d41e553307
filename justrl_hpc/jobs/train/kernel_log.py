"""XIDs in the kernel log that the preflight has not judged yet.

The kernel log (/dev/kmsg) keeps a GPU's XIDs until the node reboots, but a GPU that logged XID 79 or 119
and was reset since is fit again: counting every XID since boot would refuse it in every later chunk. So the
preflight counts only the XIDs after the NVIDIA driver's last load line and after the last record this run's
previous preflight on the node read (its mark, kept in that node's `preflight` ledger event).

/dev/kmsg gives one record per read, `prio,seq,usec_since_boot,flags;message` then optional continuation
lines that start with a space (` SUBSYSTEM=pci`); seq counts records since boot, so a mark holds only
within one boot (the boot id says which).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KMSG = Path("/dev/kmsg")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_RECORD = re.compile(r"^(\d+),(\d+),(\d+),[^;]*;(.*)$")
_XID = re.compile(r"NVRM: Xid \(PCI:([0-9A-Fa-f:.]+)\): (\d+)")
# "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.183.01 ..." and, for the open modules, "NVRM: loading
# NVIDIA UNIX Open Kernel Module for x86_64  550.54.15 ...": the driver logs it each time it is loaded.
_DRIVER_LOAD = re.compile(r"NVRM: loading NVIDIA UNIX")


@dataclass(frozen=True)
class Record:
    seq: int
    usec: int
    message: str


@dataclass
class KernelXids:
    """The (PCI bus id, XID) pairs to judge, which part of the log they come from, the sequence number of the
    last record read (the next preflight's mark), and why the log could not be read (or None)."""

    xids: list[tuple[str, int]] = field(default_factory=list)
    since: str = "since boot"
    last_seq: int | None = None
    error: str | None = None


def parse_records(text: str) -> list[Record]:
    """Every record's header and message; continuation lines (they start with a space) do not match."""
    out = []
    for line in text.splitlines():
        m = _RECORD.match(line)
        if m:
            out.append(Record(int(m.group(2)), int(m.group(3)), m.group(4)))
    return out


def parse_xids(text: str) -> list[tuple[str, int]]:
    return [(m.group(1).lower(), int(m.group(2))) for m in _XID.finditer(text)]


def xids_since(records: list[Record], mark: int | None = None) -> KernelXids:
    """The XIDs after the driver's last load and after `mark` (the last record the previous preflight of this
    run on this node read), whichever is later."""
    start, since = -1, "since boot"
    loads = [r for r in records if _DRIVER_LOAD.search(r.message)]
    if loads:
        start, since = loads[-1].seq, f"since the driver loaded ({loads[-1].usec / 1e6:.0f} s after boot)"
    elif records and records[0].seq > 0:
        # The ring buffer has overwritten the driver's load line: count from the oldest record left.
        since = f"since the kernel log's oldest record ({records[0].usec / 1e6:.0f} s after boot)"
    if mark is not None and mark >= start:
        start, since = mark, "since this run's previous preflight on this node"
    xids = [x for r in records if r.seq > start for x in parse_xids(r.message)]
    return KernelXids(xids, since, records[-1].seq if records else mark)


def read_kmsg(path: Path) -> tuple[str, str | None]:
    """The kernel log's text, and why it could not be read (or None)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return "", f"{path}: {exc.strerror}"
    chunks: list[bytes] = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break  # the end of the ring buffer
            except OSError:  # EPIPE: a record was overwritten while reading; the next read goes on
                continue
            if not record:
                break
            chunks.append(record)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace"), None


def kernel_xids(path: Path | None = None, mark: int | None = None) -> KernelXids:
    text, why = read_kmsg(path or KMSG)
    if why:
        return KernelXids(since="", last_seq=mark, error=why)
    return xids_since(parse_records(text), mark)


def boot_id(path: Path = BOOT_ID) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def previous_mark(events: list[dict[str, Any]], node: str, boot: str | None) -> int | None:
    """The last kernel log record this run's previous preflight on `node` read in this boot, or None.

    Kept in the node's `preflight` ledger event (kmsg_seq, kmsg_boot) rather than a file per node under the
    run's control folder: every node already writes that event at every chunk, it belongs to this run (a new
    run starts without one), and it tells a reader which part of the kernel log each preflight judged."""
    if boot is None:
        return None
    for e in reversed(events):
        if e.get("event") == "preflight" and e.get("node") == node and e.get("kmsg_boot") == boot:
            seq = e.get("kmsg_seq")
            if isinstance(seq, int):
                return seq
    return None
