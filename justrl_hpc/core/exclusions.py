"""Nodes a run's chunks left out of their own job (cluster.exclude_policy), from its ledger. Pure.

Slurm changes a job's ExcNodeList only while the job is pending ("Job is no longer pending execution"
otherwise, seen on the dev cluster), so a chunk that leaves a node out requeues itself first and sets the list
(slurm_act.set_excluded_when_pending) in the seconds between the requeue's SIGTERM and its SIGKILL, before
anyone releases the job from Slurm's hold. Each exclusion lasts `cluster.exclude_for_h`; whoever next sets the
list (the next exclusion, or `launch --wait` as it releases a held job) leaves expired ones out, so a repaired
node comes back (`readmitted`).
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


def readmission(events: list[Mapping[str, Any]], now: float) -> tuple[list[str], str] | None:
    """(nodes whose exclusion expired, the ExcNodeList without them), or None when nothing expired."""
    was = applied(events)
    if not was:
        return None
    keep = job_list(events, now)
    back = sorted(set(was.split(",")) - set(keep.split(",")))
    return (back, keep) if back else None
