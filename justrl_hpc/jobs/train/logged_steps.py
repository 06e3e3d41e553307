"""The steps verl logged to TensorBoard, read back from its event files where a chunk's trainer ends.

The chunk learns of a step from verl's console line, which Ray forwards from the TaskRunner to the trainer's
stdout through its log monitor (it polls the worker's log file), so the line can trail by a second or more.
verl's TensorBoard writer appends each record to the event file as it logs (tensorboard's local filesystem
appends per write). A trainer stopped just after logging a step can therefore leave the step in TensorBoard but
not in the console log. Taken from the console alone, the ledger would miss the step, the next chunk would set
its checkpoint aside as never logged and retrain it, and TensorBoard would show the step twice (CI saw step 8
twice in the save-now test). So where a trainer ends, and again before a chunk picks its checkpoint (a
TaskRunner may outlive the trainer's driver by a moment), the steps in TensorBoard count as logged too.

Only the event files verl writes are read (the TensorBoard folder's own files, not monitor/ or eval/ below it),
and only those written since the trainer in question started, so the cost stays one chunk's worth of records.
TensorBoard's own reader reads them; a record cut by a kill ends the read of its file, and a step only partly
written counts as not logged (see tensorboard_steps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EVENTS_GLOB = "events.out.tfevents.*"
# Tags verl logs only at some steps: validation (every test_freq steps, and alone at the step a trainer starts
# from) and the timings of a save or a validation. A step's completeness is judged without them.
OCCASIONAL_PREFIXES = ("val-", "val/", "timing_s/save_checkpoint", "timing_s/testing")


def _training_tags(tags: set[str]) -> frozenset[str]:
    return frozenset(t for t in tags if not t.startswith(OCCASIONAL_PREFIXES))


def _file_steps(path: Path) -> list[tuple[int, frozenset[str]]]:
    """The steps of one event file in the order written, each with its training tags (validation-only records,
    such as step 0's, left out)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    order: list[int] = []
    tags: dict[int, set[str]] = {}
    try:
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("summary") and event.summary.value:
                step = int(event.step)
                if step not in tags:
                    order.append(step)
                    tags[step] = set()
                tags[step].update(v.tag for v in event.summary.value)
    except (OSError, ValueError):
        pass  # a record cut by a kill ends the read; what came before it stands
    return [(step, _training_tags(tags[step])) for step in order if _training_tags(tags[step])]


def _event_files(tb_dir: Path) -> list[tuple[float, Path]]:
    out = []
    for path in tb_dir.glob(EVENTS_GLOB) if tb_dir.is_dir() else []:
        try:
            if path.is_file():
                out.append((path.stat().st_mtime, path))
        except OSError:
            continue  # removed between the listing and the look
    return sorted(out)


def tensorboard_steps(tb_dir: Path, since: float = 0.0) -> set[int]:
    """Every step verl logged completely in the event files directly in tb_dir modified at or after `since`.

    verl logs a step as one scalar per metric, in a row, and the writer flushes as its queue fills, so a trainer
    stopped in the middle of a step leaves part of it (the soak's seed 2, 2026-12-07: 8 of step 74's 101 tags,
    no critic/score/mean; counted as logged, the next chunk resumed from save 74 and the step's curves were never
    written). A step followed by another in its file is complete; a file's last step is complete when it has
    every training tag that all the complete steps read have (the files since, else the newest file before them
    as the reference, newest first). With no reference at all, a last step does not count: retraining one step costs less than
    a step missing from the curves."""
    files = _event_files(tb_dir)
    read = [(path, _file_steps(path)) for mtime, path in files if mtime >= since]
    if not read:
        return set()
    steps: set[int] = set()
    reference: frozenset[str] | None = None
    for _, file_steps in read:
        for step, tags in file_steps[:-1]:
            steps.add(step)
            reference = tags if reference is None else reference & tags
    for path in reversed([path for mtime, path in files if mtime < since]):
        if reference is not None:
            break
        for _, tags in _file_steps(path)[:-1]:
            reference = tags if reference is None else reference & tags
    for _, file_steps in read:
        if file_steps and reference is not None and file_steps[-1][1] >= reference:
            steps.add(file_steps[-1][0])
    return steps


def record_unseen(ledger: Any, tb_dir: Path, since: float, known: int, job_id: str | None,
                  chunk: int | None, run: str = "") -> list[int]:
    """A `step` event (source tensorboard) and a log line for each step newer than `known` that TensorBoard
    holds from files written since `since` (less a second: mtimes are coarse on some filesystems). Returns
    those steps."""
    from justrl_hpc.jobs.train.environment import log

    new = sorted(s for s in tensorboard_steps(tb_dir, since - 1) if s > known)
    for step in new:
        ledger.append("step", job_id=job_id, chunk=chunk, step=step, source="tensorboard")
        log(f"{run} job {job_id} chunk {chunk}: step {step} source=tensorboard (its console line never reached "
            "the trainer log)".lstrip())
    return new


def previous_trainer(events: list[dict[str, Any]]) -> tuple[float | None, str | None, int | None]:
    """When the run's latest trainer started, its job and chunk (from the ledger); None before the first."""
    from justrl_hpc.core.ledger import parse_time

    starts = [e for e in events if e.get("event") == "trainer-started" and e.get("time")]
    if not starts:
        return None, None, None
    return parse_time(starts[-1]["time"]), starts[-1].get("job_id"), starts[-1].get("chunk")


def latest_trainer_logged(events: list[dict[str, Any]]) -> int:
    """The newest step the run's latest trainer is known to have logged: its `step` events since it started, or
    the step it started from. Not the run's newest logged step: after a retrain from an earlier save the new
    trajectory logs steps the old one logged too (the soak's seed 2, 2026-12-07: a stop's last step, in TensorBoard
    only, was ignored as "known" from the crashed trajectory, and the next chunk retrained it)."""
    start = max((i for i, e in enumerate(events) if e.get("event") == "trainer-started"), default=None)
    if start is None:
        return 0
    own = [e["step"] for e in events[start:] if e.get("event") == "step" and isinstance(e.get("step"), int)]
    return max([events[start].get("step") or 0, *own])

