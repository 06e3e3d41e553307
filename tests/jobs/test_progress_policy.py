"""The no-progress policy as a table, and its facts read from a real ledger."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from justrl_hpc.core.ledger import Ledger
from justrl_hpc.jobs.train.progress_policy import ChunkEnd, chunks_since_progress, counts, decide

LIMIT_S, LEAD_S = 120.0, 20.0


def limit(trainer_s: float | None = 70.0) -> ChunkEnd:
    return ChunkEnd("time-limit", False, 100.0, trainer_s)


CRASH = ChunkEnd("crashed-other", False, 30.0, 20.0)
CRASH_AFTER_STEPS = ChunkEnd("crashed-oom", True, 90.0, 80.0)
PREEMPTED_EARLY = ChunkEnd("preempted", False, 40.0, 30.0)
SAVE_NOW_EARLY = ChunkEnd("save-now", False, 40.0, 30.0)
PREEMPTED_AFTER_STEPS = ChunkEnd("preempted", True, 90.0, 80.0)


@pytest.mark.parametrize(
    ("ends", "cap", "want"),
    [
        ([], 3, None),
        ([CRASH, CRASH], 3, None),
        ([CRASH, CRASH, CRASH], 3, "crash loop"),
        ([CRASH_AFTER_STEPS] * 3, 3, "crash loop"),
        # Preemptions and save-now before the first step are no crash: never counted, however many.
        ([PREEMPTED_EARLY] * 5, 3, None),
        ([CRASH, SAVE_NOW_EARLY, PREEMPTED_EARLY, CRASH], 3, None),
        ([CRASH, PREEMPTED_EARLY, CRASH, CRASH], 3, "crash loop"),
        # A preemption after steps that still saved nothing counts, as before.
        ([PREEMPTED_AFTER_STEPS] * 3, 3, "crash loop"),
        # Chunks too short for the start-up: told so, with the figures.
        ([limit(), limit(75.0), limit(80.0)], 3, "too short"),
        ([limit(None)] * 2, 2, "too short"),
        ([CRASH, limit(), limit()], 3, "crash loop"),
        ([CRASH, limit(), limit(), limit()], 3, "too short"),  # the last `cap` decide what is said
        ([limit(), limit()], 3, None),
    ],
)
def test_decide(ends: list[ChunkEnd], cap: int, want: str | None) -> None:
    got = decide(ends, cap, LIMIT_S, LEAD_S, "detail")
    if want is None:
        assert got is None
    elif want == "crash loop":
        assert got is not None and got.startswith(f"{cap} chunks in a row made no progress; last: ")
        assert "(detail)" in got and "--resume RUN" in got
    else:
        assert got is not None and "too short for the start-up" in got and "2 min" in got and "20 s" in got, got
        assert "run.time_limit_min" in got and "made no progress" not in got


def test_too_short_names_each_start_up() -> None:
    got = decide([limit(61.0), limit(74.4), limit(None)], 3, LIMIT_S, LEAD_S)
    assert got is not None and "trainer ran 61 s, 74 s, 100 s each without a step" in got


def test_counts() -> None:
    assert [counts(e) for e in (CRASH, PREEMPTED_EARLY, SAVE_NOW_EARLY, PREEMPTED_AFTER_STEPS, limit())] == [
        True, False, False, True, True]


def test_facts_come_from_the_ledger_since_the_last_save(tmp_path: Path) -> None:
    led = Ledger(tmp_path)
    led.append("submitted", job_id="1", chunk=None)
    led.append("started", job_id="1", chunk=1)
    led.append("trainer-started", job_id="1", chunk=1, step=0)
    led.append("step", job_id="1", chunk=1, step=1)
    led.append("saved", job_id="1", chunk=1, step=1)  # progress: nothing before this counts
    led.append("requeued", job_id="1", chunk=1, step=1, reason="time-limit")
    led.append("started", job_id="1", chunk=2)
    time.sleep(0.05)
    led.append("trainer-started", job_id="1", chunk=2, step=1)
    led.append("trainer-exited", job_id="1", chunk=2, reason="stopped-unsaved")
    led.append("requeued", job_id="1", chunk=2, reason="time-limit")
    led.append("started", job_id="1", chunk=3)
    led.append("chunk-failed", job_id="1", chunk=3, reason="crashed-node")
    led.append("requeued", job_id="1", chunk=3, reason="crashed-node")
    led.append("started", job_id="1", chunk=4)
    led.append("step", job_id="1", chunk=4, step=2)
    led.append("trainer-exited", job_id="1", chunk=4, reason="crashed-other")
    led.append("started", job_id="1", chunk=5)  # the deciding chunk: left out, it passes its own facts
    led.append("trainer-exited", job_id="1", chunk=5, reason="stopped-unsaved")
    ends = chunks_since_progress(led.read(), but=5)
    assert [(e.reason, e.stepped) for e in ends] == [
        ("time-limit", False), ("crashed-node", False), ("crashed-other", True)]
    assert ends[0].seconds is not None and ends[0].trainer_seconds is not None
    assert ends[0].seconds >= ends[0].trainer_seconds >= 0
    assert ends[1].trainer_seconds is None  # its trainer never started
    assert len(chunks_since_progress(led.read())) == 4
