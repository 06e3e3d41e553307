"""Progress rules over the run's ledger (monitor-facts.md section (b): S1, S4, and checkpoint/step checks of
our own, S6, S7).

    evaluate_progress(events, last_step, last_step_time, step_times, job_running, now, settings, save_freq=…)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from justrl_hpc.core import stall
from justrl_hpc.core.goodput import event_time
from justrl_hpc.core.settings import setting
from justrl_hpc.monitor.findings import Finding, Severity


@dataclass
class ProgressSettings:
    """Thresholds of the progress rules (the `progress:` section of monitor/rules.yaml)."""

    # S1: no new step for this × the p95 step time, and at least this long → warn (core/stall.py: the chunk
    # takes a hung trainer's stacks at the same figure)
    stall_warn_factor: float = setting(stall.WARN_FACTOR, lo=1)
    stall_warn_min_s: float = setting(stall.WARN_MIN_S, lo=0)
    stall_critical_factor: float = setting(5.0, lo=1)
    stall_critical_min_s: float = setting(3600.0, lo=0)
    stall_default_step_s: float = setting(stall.DEFAULT_STEP_S, lo=1)  # before any step time is known
    # extra time for a chunk's first step (model load, validation)
    startup_grace_s: float = setting(stall.STARTUP_GRACE_S, lo=0)
    no_progress_critical: int = setting(3, lo=1)  # S4: chunks in a row that ended without a new checkpoint
    restart_storm_count: int = setting(5, lo=1)  # S4: this many chunk starts …
    restart_storm_window_s: float = setting(1800.0, lo=1)  # … within this long → warn
    # S6: the newest save older than this × save_freq × step time
    checkpoint_age_factor: float | None = setting(1.5, lo=1)
    checkpoint_age_slack_s: float = setting(1800.0, lo=0)
    # S6: steps past a save_freq multiple with no save
    checkpoint_overdue_steps: int | None = setting(2, lo=0)


PLANNED_REQUEUES = ("time-limit", "save-now")  # the driver's own stop reasons that requeue by plan


_p = stall.quantile


def _pfinding(
    rule: str,
    severity: Severity,
    subject: str,
    metric: str,
    value: Any,
    threshold: Any,
    msg: str,
    step: int | None,
) -> Finding:
    return Finding.of(rule, severity, subject, metric, value, threshold, msg, step=step)


def evaluate_progress(
    events: Sequence[Mapping[str, Any]],
    last_step: int | None,
    last_step_time: float | None,
    step_times: Sequence[float],
    job_running: bool,
    now: float,
    settings: ProgressSettings | None = None,
    save_freq: int | None = None,
) -> list[Finding]:
    """Progress findings that hold at `now`, from the run's ledger events (oldest first, as Ledger.read()
    gives them), the newest TensorBoard step and its wall time, recent step durations (timing_s/step) and
    whether the Slurm job is RUNNING. Pure.

    - S1-stall: no new step for max(factor × p95 step time, floor) while the job runs; a chunk still waiting
      for its first step gets startup_grace_s more (model load, vLLM start, validation before training).
    - S4-no-progress: chunks that ended (trainer-exited progress=false, or chunk-failed before the trainer)
      since the newest verified save; S4-restart-storm: many chunk starts in a short window;
      S4-run-failed: the chain stopped with `failed` and was not resubmitted.
    - S6-checkpoint-overdue: steps past a save_freq multiple with no `saved` event (needs save_freq), or the
      newest save older than factor × save_freq × median step time (+ slack) while the job runs.
    - S7-step-repeated: two `step` events of one step in one chunk (the trainer restarted inside a chunk);
      S7-resume-behind: the newest chunk's trainer started behind the newest verified save (a verified
      checkpoint was lost); S7-steps-retrained (info): it re-trains steps an earlier chunk had logged but not
      saved (normal after a kill or SIGTERM-only preemption; counted as lost work). Only the newest chunk is
      judged, so these resolve when the next chunk starts. Duplicate TensorBoard points of one step are not
      judged here: the tail reader's preemption rule replaces them, and the ledger sees every step.
    """
    st = settings or ProgressSettings()
    out: list[Finding] = []
    evs = [e for e in events if isinstance(e, Mapping)]

    starts = [i for i, e in enumerate(evs) if e.get("event") == "trainer-started"]
    last_start = evs[starts[-1]] if starts else None
    last_start_t = event_time(last_start) if last_start else None
    # The newest chunk start (`started` comes before Ray bring-up, `trainer-started` after it).
    chunk_starts = [e for e in evs if e.get("event") in ("started", "trainer-started")]
    chunk_start_t = event_time(chunk_starts[-1]) if chunk_starts else None
    saved = [e for e in evs if e.get("event") == "saved" and isinstance(e.get("step"), int)]
    last_saved = saved[-1] if saved else None
    durations = [t for t in step_times if isinstance(t, int | float) and math.isfinite(t) and t > 0]
    median_step = statistics.median(durations) if durations else None

    # S1 stall
    if job_running and (last_step_time is not None or chunk_start_t is not None):
        p95 = _p(step_times, 0.95) or st.stall_default_step_s
        ref = max(t for t in (last_step_time, chunk_start_t) if t is not None)
        waiting_first = chunk_start_t is not None and (
            last_step_time is None or chunk_start_t >= last_step_time
        )
        age = now - ref
        warn_s = stall.limit_s(step_times, waiting_first, st.stall_warn_factor, st.stall_warn_min_s,
                               st.stall_default_step_s, st.startup_grace_s)
        crit_s = stall.limit_s(step_times, waiting_first, st.stall_critical_factor, st.stall_critical_min_s,
                               st.stall_default_step_s, st.startup_grace_s)
        if age > warn_s:
            sev: Severity = "critical" if age > crit_s else "warn"
            line = crit_s if sev == "critical" else warn_s
            what = (
                f"no first step {age / 60:.0f} min after the chunk's {chunk_starts[-1].get('event')} event "
                f"(job {chunk_starts[-1].get('job_id')} chunk {chunk_starts[-1].get('chunk')})"
                if waiting_first
                else f"no new step for {age / 60:.0f} min after step {last_step}"
            )
            out.append(
                _pfinding(
                    "S1-stall",
                    sev,
                    "run",
                    "step_age_s",
                    round(age),
                    round(line),
                    f"{what}; the job is running (limit {line / 60:.0f} min: p95 step {p95:,.0f} s)",
                    last_step,
                )
            )

    # S4 no progress / failed / restart storm
    streak: list[Mapping[str, Any]] = []
    counted: set[tuple[Any, Any]] = set()  # one per chunk, however many exit lines it wrote
    for e in reversed(evs):
        name = e.get("event")
        if name in ("saved", "submitted"):
            break
        if name == "chunk-failed" or (name == "trainer-exited" and e.get("progress") is False):
            if (e.get("job_id"), e.get("chunk")) not in counted:
                counted.add((e.get("job_id"), e.get("chunk")))
                streak.append(e)
    if streak:
        newest = streak[0]
        sev = "critical" if len(streak) >= st.no_progress_critical else "warn"
        out.append(
            _pfinding(
                "S4-no-progress",
                sev,
                "chunks",
                "chunks_without_progress",
                len(streak),
                st.no_progress_critical,
                f"{len(streak)} chunk(s) in a row ended without a new checkpoint; the newest, job "
                f"{newest.get('job_id')} chunk {newest.get('chunk')}: {newest.get('event')} "
                f"reason={newest.get('reason')}",
                newest.get("step") if isinstance(newest.get("step"), int) else None,
            )
        )
    terminal = [e for e in evs if e.get("event") in ("failed", "finished", "submitted")]
    if terminal and terminal[-1].get("event") == "failed":
        e = terminal[-1]
        out.append(
            _pfinding(
                "S4-run-failed",
                "critical",
                "run",
                "ledger",
                "failed",
                None,
                f"the chain stopped: job {e.get('job_id')} chunk {e.get('chunk')} failed at step {e.get('step')}: "
                f"{e.get('reason')}",
                e.get("step") if isinstance(e.get("step"), int) else None,
            )
        )
    # A storm is restarts nobody planned: a start after a chunk's own time-limit or save-now requeue is the
    # chain working (the rehearsal's 2-minute chunks start 5 times in 10 minutes by design).
    unplanned: list[float | None] = []
    planned = False
    for e in evs:
        ev = e.get("event")
        if ev == "requeued":
            planned = e.get("reason") in PLANNED_REQUEUES
        elif ev in ("chunk-failed", "failed", "submitted"):
            planned = False
        elif ev == "started":
            if not planned:
                unplanned.append(event_time(e))
            planned = False
    recent_starts = [t for t in unplanned if t is not None and now - t <= st.restart_storm_window_s]
    if len(recent_starts) >= st.restart_storm_count:
        out.append(
            _pfinding(
                "S4-restart-storm",
                "warn",
                "chunks",
                "chunk_starts",
                len(recent_starts),
                st.restart_storm_count,
                f"{len(recent_starts)} unplanned chunk starts in the last {st.restart_storm_window_s / 60:.0f} min "
                "(planned time-limit and save-now requeues not counted)",
                last_step,
            )
        )

    # S6 checkpoint overdue
    saved_step = last_saved["step"] if last_saved else None
    base_step = max(
        [s for s in (saved_step, last_start.get("step") if last_start else None) if isinstance(s, int)] or [0]
    )
    if save_freq and st.checkpoint_overdue_steps is not None and last_step is not None:
        due = (base_step // save_freq + 1) * save_freq
        if last_step >= due + st.checkpoint_overdue_steps:
            out.append(
                _pfinding(
                    "S6-checkpoint-overdue",
                    "warn",
                    "steps",
                    "steps_since_save",
                    last_step - base_step,
                    save_freq + st.checkpoint_overdue_steps,
                    f"step {last_step} but no verified checkpoint since step {base_step}; one was due at step "
                    f"{due} (save_freq {save_freq})",
                    last_step,
                )
            )
    if save_freq and st.checkpoint_age_factor is not None and job_running and median_step:
        since = [t for t in (event_time(last_saved) if last_saved else None, last_start_t) if t is not None]
        if since:
            age = now - max(since)
            limit = st.checkpoint_age_factor * save_freq * median_step + st.checkpoint_age_slack_s
            if age > limit:
                out.append(
                    _pfinding(
                        "S6-checkpoint-overdue",
                        "warn",
                        "age",
                        "checkpoint_age_s",
                        round(age),
                        round(limit),
                        f"newest checkpoint (step {saved_step}) or chunk start is {age / 3600:.1f} h old; "
                        f"expected one every ~{save_freq * median_step / 3600:.1f} h (save_freq {save_freq} × "
                        f"median step {median_step:,.0f} s)",
                        last_step,
                    )
                )

    # S7 the same step trained twice
    if last_start is not None:
        i0 = starts[-1]
        job, chunk = last_start.get("job_id"), last_start.get("chunk")
        seen: dict[int, int] = {}
        for e in evs[i0:]:
            if e.get("event") == "step" and e.get("job_id") == job and e.get("chunk") == chunk:
                s = e.get("step")
                if isinstance(s, int):
                    seen[s] = seen.get(s, 0) + 1
        repeated = sorted(s for s, n in seen.items() if n > 1)
        if repeated:
            out.append(
                _pfinding(
                    "S7-step-repeated",
                    "warn",
                    f"{job}:{chunk}",
                    "step",
                    repeated[0],
                    None,
                    f"job {job} chunk {chunk} logged step {repeated[0]} more than once"
                    + (f" ({len(repeated)} steps repeated)" if len(repeated) > 1 else "")
                    + ": the trainer restarted inside the chunk",
                    repeated[0],
                )
            )
        before = evs[:i0]
        # A save whose step was never logged is set aside by design (the chunk retrains that step rather than
        # leave it out of TensorBoard): resuming behind it loses nothing, and S7-steps-retrained says so.
        unlogged = {e.get("step") for e in evs if e.get("event") == "checkpoint-skipped"
                    and "never logged" in str(e.get("reason", ""))}
        prev_saved = max(
            (e["step"] for e in before if e.get("event") == "saved" and isinstance(e.get("step"), int)
             and e["step"] not in unlogged),
            default=None,
        )
        prev_logged = max(
            (e["step"] for e in before if e.get("event") == "step" and isinstance(e.get("step"), int)),
            default=None,
        )
        r = last_start.get("step")
        if isinstance(r, int) and prev_saved is not None and r < prev_saved:
            skipped = [e.get("step") for e in evs if e.get("event") == "checkpoint-skipped"]
            out.append(
                _pfinding(
                    "S7-resume-behind",
                    "critical" if r == 0 else "warn",
                    f"{job}:{chunk}",
                    "resume_step",
                    r,
                    prev_saved,
                    f"job {job} chunk {chunk} resumed from step {r}, behind the newest verified checkpoint "
                    f"{prev_saved}"
                    + (f" (checkpoint-skipped: {skipped})" if skipped else "")
                    + ("; it started over" if r == 0 else ""),
                    r,
                )
            )
        elif isinstance(r, int) and prev_logged is not None and r < prev_logged:
            out.append(
                _pfinding(
                    "S7-steps-retrained",
                    "info",
                    f"{job}:{chunk}",
                    "steps_retrained",
                    prev_logged - r,
                    None,
                    f"job {job} chunk {chunk} resumed from step {r}: steps {r + 1}–{prev_logged} are trained "
                    "again (logged by an earlier chunk after its last checkpoint)",
                    r,
                )
            )
    return out


HANG_HOLD_S = 6 * 3600.0  # a hang's finding stays this long: the alert goes out once, the UI shows it for a while
_AFTER_HANG = {"restarted-in-job": "restarted the trainer in the job", "requeued": "requeued itself",
               "failed": "stopped the chain", "finished": "finished"}


def evaluate_hangs(events: Sequence[Mapping[str, Any]], now: float, hold_s: float = HANG_HOLD_S) -> list[Finding]:
    """S1-hang-stacks (warn), one per `hang` ledger event of the last `hold_s`: the chunk found the trainer's
    steps stopped past the S1 limit and took every process's stacks before it killed anything. The message
    names the folder and what the chunk did next (run.on_hang); the monitor only says so. Pure."""
    evs = [e for e in events if isinstance(e, Mapping)]
    out = []
    for i, e in enumerate(evs):
        t = event_time(e)
        if e.get("event") != "hang" or t is None or now - t > hold_s:
            continue
        then = next((_AFTER_HANG[x["event"]] for x in evs[i + 1:] if x.get("event") in _AFTER_HANG),
                    "waits (run.on_hang: wait)" if e.get("on_hang") == "wait" else "is acting on it")
        silent = e.get("silent")
        out.append(_pfinding(
            "S1-hang-stacks", "warn", str(e.get("stacks") or "stacks").rsplit("/", 1)[-1], "stalled_s",
            e.get("stalled_s"), e.get("limit_s"),
            f"job {e.get('job_id')} chunk {e.get('chunk')}: no step for {e.get('stalled_s')} s after step "
            f"{e.get('step')} (limit {e.get('limit_s')} s); stacks of every process in {e.get('stacks')} "
            f"({e.get('stack_files')} files, {e.get('nodes_answered')} nodes"
            + (f"; no answer from {', '.join(silent)}" if silent else "") + f"); the chunk then {then}",
            e.get("step") if isinstance(e.get("step"), int) else None,
        ))
    return out
