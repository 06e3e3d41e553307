"""Nodes kept out of a run's jobs, from its ledger: the person's (`launch --exclude`) and those the chunks left
out on hard evidence (cluster.exclude_policy). Pure.

A chunk that leaves a node out hands the run to a chained job whose --exclude holds this list (a requeue
cannot: Slurm changes a job's ExcNodeList only while it is pending, docs/chunks.md). Each exclusion lasts
`cluster.exclude_for_h`; the next chained job's list leaves expired ones out, and `launch --wait` takes them out
of a held job's list before it releases it (`readmitted`), so a repaired node comes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def active(events: Iterable[Mapping[str, Any]], now: float) -> dict[str, float]:
    """Node → until (epoch seconds) for each exclusion still in force: recorded by an `excluded` event, not
    past its time, not `readmitted` since."""
    out: dict[str, float] = {}
    for e in events:
        if e.get("event") == "excluded":
            until = e.get("until")
            for node in str(e.get("nodes") or "").split(","):
                if node and isinstance(until, int | float):
                    out[node] = float(until)
        elif e.get("event") == "readmitted":
            for node in str(e.get("nodes") or "").split(","):
                out.pop(node, None)
    return {n: u for n, u in out.items() if u > now}


def applied(events: Iterable[Mapping[str, Any]]) -> str | None:
    """The ExcNodeList the run last set on its job (None: never set one)."""
    last = None
    for e in events:
        if e.get("event") in ("excluded", "readmitted") and e.get("exclude") is not None:
            last = str(e["exclude"])
    return last


def by_hand(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """The nodes the person left out at submission (`launch --exclude`): they stay out for good."""
    nodes = None
    for e in events:
        if e.get("event") == "submitted":
            nodes = e.get("exclude")
    return {n for n in str(nodes or "").split(",") if n}


def job_list(events: list[Mapping[str, Any]], now: float, also: Iterable[str] = ()) -> str:
    """The job's ExcNodeList: the person's nodes, those left out and still in force, and `also`."""
    return ",".join(sorted(by_hand(events) | set(active(events, now)) | set(also)))


def for_resubmission(events: list[Mapping[str, Any]], now: float, person: str | None) -> str | None:
    """A resubmitted run's ExcNodeList (`launch --resume`): the person's nodes given now, and those the chunks
    left out that are still in force. A broken chain resubmitted by hand must not bring a node back before its
    exclusion expires (the seed-1 soak of 2026-12-07 saw a resume run on the node left out minutes before)."""
    nodes = {n for n in str(person or "").split(",") if n} | set(active(events, now))
    return ",".join(sorted(nodes)) or None


def readmission(events: list[Mapping[str, Any]], now: float) -> tuple[list[str], str] | None:
    """(nodes whose exclusion expired, the ExcNodeList without them), or None when nothing expired."""
    was = applied(events)
    if not was:
        return None
    keep = job_list(events, now)
    back = sorted(set(was.split(",")) - set(keep.split(",")))
    return (back, keep) if back else None
