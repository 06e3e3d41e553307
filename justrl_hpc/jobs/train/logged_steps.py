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
TensorBoard's own reader reads them; a record cut by a kill ends the read of its file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EVENTS_GLOB = "events.out.tfevents.*"


def tensorboard_steps(tb_dir: Path, since: float = 0.0) -> set[int]:
    """Every step with a scalar in the event files directly in tb_dir modified at or after `since`."""
    files = []
    for path in tb_dir.glob(EVENTS_GLOB) if tb_dir.is_dir() else []:
        try:
            if path.is_file() and path.stat().st_mtime >= since:
                files.append(path)
        except OSError:
            continue  # removed between the listing and the look
    if not files:
        return set()
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: set[int] = set()
    for path in files:
        try:
            for event in EventFileLoader(str(path)).Load():
                if event.HasField("summary") and event.summary.value:
                    steps.add(int(event.step))
        except (OSError, ValueError):
            continue  # unreadable: the console's steps stand for this file
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
