"""Whether a run that makes no progress stops, and what it is told: facts from the ledger, one pure decision.

The no-progress cap (`run.max_no_progress_chunks`) is for crash loops. A chunk that a preemption or save-now
ended before verl's first step is no crash: it does not count. One that its own time limit ended before the
first step counts, but a run whose chunks all end that way is not crash-looping: its chunks are too short for
verl's start-up, and it is told so with the figures (start-up seconds, chunk length) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from justrl_hpc.core.ledger import parse_time

# Endings a person or the scheduler chose, not the trainer: never a sign of a crash loop on their own.
NOT_CRASHES = frozenset({"preempted", "sigterm", "save-now"})
TIME_LIMIT = "time-limit"


@dataclass(frozen=True)
class ChunkEnd:
    """One chunk since the last verified save: why it ended, whether verl logged a step in it, and how long it
    had run from its start (and from its trainer's start) when it ended."""

    reason: str
    stepped: bool
    seconds: float | None = None
    trainer_seconds: float | None = None  # from the trainer's start to the chunk's end (None: never started)


def chunks_since_progress(events: list[dict[str, Any]], but: int | None = None) -> list[ChunkEnd]:
    """The ended chunks after the run's last verified save (or last submission), oldest first, from the
    ledger, leaving out chunk `but` (the one deciding, which passes its own facts). A chunk's reason is its
    `requeued` reason, else its trainer's exit reason, else its `chunk-failed`, else its `chunk-lost` (written by
    the next chunk from Slurm's lines, slurm_log.lost_chunk)."""
    tail: list[dict[str, Any]] = []
    for e in reversed(events):
        if e.get("event") in ("saved", "submitted"):
            break
        tail.append(e)
    tail.reverse()
    groups: list[list[dict[str, Any]]] = []
    for e in tail:
        if e.get("event") == "started":
            groups.append([e])
        elif groups:
            groups[-1].append(e)
    ends = []
    for g in groups:
        if but is not None and g[0].get("chunk") == but:
            continue
        reason = ""
        for name in ("chunk-lost", "chunk-failed", "trainer-exited", "requeued"):
            reason = next((str(e.get("reason")) for e in g if e.get("event") == name), reason)
        if not reason:
            continue  # a chunk still running, or killed outright before it wrote an ending
        ends.append(_chunk_end(g, reason))
    return ends


def _chunk_end(g: list[dict[str, Any]], reason: str) -> ChunkEnd:
    def at(name: str) -> float | None:
        e = next((e for e in g if e.get("event") == name and e.get("time")), None)
        return parse_time(e["time"]) if e else None

    start, trainer = at("started"), at("trainer-started")
    end = max((parse_time(e["time"]) for e in g if e.get("time")), default=None)
    return ChunkEnd(
        reason=reason,
        stepped=any(e.get("event") == "step" for e in g),
        seconds=None if start is None or end is None else end - start,
        trainer_seconds=None if trainer is None or end is None else end - trainer,
    )


def counts(end: ChunkEnd) -> bool:
    """Whether a chunk without a new save counts toward the cap: all but a preemption or a save-now that came
    before the trainer's first step."""
    return end.stepped or end.reason not in NOT_CRASHES


def decide(ends: list[ChunkEnd], cap: int, chunk_limit_s: float, signal_lead_s: float, detail: str = "") -> str | None:
    """None: requeue. Else the `failed` reason: the cap reached by counted chunks; when every counted chunk was
    ended by its time limit before verl's first step, the chunks are too short for the start-up."""
    counted = [e for e in ends if counts(e)]
    if len(counted) < cap:
        return None
    last = counted[-cap:]
    if all(e.reason == TIME_LIMIT and not e.stepped for e in last):
        startups = [e.trainer_seconds if e.trainer_seconds is not None else e.seconds for e in last]
        seen = ", ".join(f"{s:.0f} s" for s in startups if s is not None) or "unknown"
        return (
            f"{cap} chunks in a row reached their time limit before verl's first step: the chunks are too short "
            f"for the start-up (trainer ran {seen} each without a step; a chunk is {chunk_limit_s / 60:g} min "
            f"and the pre-limit signal comes {signal_lead_s:g} s before its end); lengthen the chunks "
            "(`--set run.time_limit_min=N`, or the cluster file's time_limit_min), then "
            "`python -m justrl_hpc.launch --resume RUN`"
        )
    e = last[-1]
    return (f"{cap} chunks in a row made no progress; last: {e.reason}{f' ({detail})' if detail else ''}; resubmit with "
            "`python -m justrl_hpc.launch --resume RUN` after fixing it")
