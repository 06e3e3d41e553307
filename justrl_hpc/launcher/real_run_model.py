"""The real 4,380-step run modelled, the suite's way and the published (naive) way, from the overheads a
rehearsal measured (benchmarks/bench_lifecycle.py prints it into BENCHMARKS.md)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from justrl_hpc.core.goodput import RunReport

# -- the real run, modelled ---------------------------------------------------------------------------------


@dataclass
class RealRunModel:
    """The real run's figures. Sources: justrl-recipe.md (4,380 steps, ~296 s/step, ~21 GB checkpoints, saves
    every 50 steps), cluster-facts.md (Slurm's ~120 s BeginTime hold after a requeue), config defaults
    (24 h chunks, 900 s signal lead)."""

    target_steps: int = 4380
    step_s: float = 296.0
    chunk_s: float = 24 * 3600.0
    signal_lead_s: float = 900.0
    save_freq: int = 50
    checkpoint_gb: float = 21.0
    # 1/3 GB/s effective to a parallel filesystem (plan.py's ~3 s per GB): a 21 GB save takes ~63 s, and the
    # load at start-up is taken at the same rate (a conservative choice: reads are usually faster).
    fs_gb_per_s: float = 1 / 3
    # Actor/ref FSDP init (~60 s for 1.5B on 32 ranks) + vLLM engine start: a vLLM 1B model measured 43 s of
    # CUDA-graph capture and ~132 s until ready (Nemotron-3-Embed-1B model card, vLLM 0.25). 60 + 132.
    init_s: float = 192.0
    suite_startup_s: float = 12.5  # chunk start → trainer start (Ray up + resume check), measured
    stop_tail_s: float = 2.0  # last save landed → allocation handed back, measured
    requeue_gap_s: float = 11.8  # requeued → next chunk started with the suite's release, measured
    naive_hold_s: float = 120.0  # plain --requeue: Slurm's BeginTime hold, measured on the dev cluster
    naive_signal_lead_s: float = 90.0  # a fixed --signal=USR2@90 (submitit's default slurm_signal_delay_s)

    @property
    def save_s(self) -> float:
        return self.checkpoint_gb / self.fs_gb_per_s

    def startup_s(self, first: bool) -> float:
        return self.suite_startup_s + self.init_s + (0.0 if first else self.save_s)


def _simulate(m: RealRunModel, suite: bool) -> dict[str, Any]:
    """Chunk by chunk to the target step.

    Suite: the step in flight when the pre-limit signal comes completes, is saved, and the allocation is
    handed back; the release makes the requeued job eligible at once. Naive (the published way): periodic
    saves only; a fixed --signal requeues the job as it comes, so the step in flight and every step since the
    last periodic save are lost (a save the signal interrupts is torn); then Slurm's BeginTime hold."""
    step, chunks, allocated, gaps, lost_steps, saves = 0, 0, 0.0, 0.0, 0, 0
    lead = m.signal_lead_s if suite else m.naive_signal_lead_s
    signal_at = m.chunk_s - lead
    while step < m.target_steps:
        chunks += 1
        resumed = saved = step
        t = m.startup_s(first=chunks == 1)
        while step < m.target_steps and t < signal_at:
            if not suite and t + m.step_s > signal_at:
                break  # this step would be cut by the signal
            t += m.step_s
            step += 1
            if step % m.save_freq == 0 or step == m.target_steps:
                if not suite and t + m.save_s > signal_at and step < m.target_steps:
                    break  # the signal lands during this save: torn, resumed from the one before
                t += m.save_s
                saves += 1
                saved = step
        if step == resumed:
            raise ValueError("a chunk trains no step: its start-up does not fit in the chunk")
        if suite:
            if saved != step:
                t += m.save_s  # the deadline save
                saves += 1
                saved = step
            t += m.stop_tail_s
        elif step < m.target_steps:
            t = signal_at
        lost_steps += step - saved
        step = saved
        allocated += t
        if step < m.target_steps:
            gaps += m.requeue_gap_s if suite else m.naive_hold_s
    useful = m.target_steps * m.step_s
    return {
        "chunks": chunks,
        "allocated_h": round(allocated / 3600, 2),
        "wall_h": round((allocated + gaps) / 3600, 2),
        "steps_lost": lost_steps,
        "saves": saves,
        "goodput": round(useful / allocated, 4),
        "wall_goodput": round(useful / (allocated + gaps), 4),
    }


def model_real_run(
    requeue_gap_s: float | None = None,
    suite_startup_s: float | None = None,
    stop_tail_s: float | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Modelled goodput of the 4,380-step run, the suite's way and the naive way; measured overheads (from a
    rehearsal's report) replace the defaults when given."""
    m = RealRunModel(**overrides)
    if requeue_gap_s is not None:
        m.requeue_gap_s = requeue_gap_s
    if suite_startup_s is not None:
        m.suite_startup_s = suite_startup_s
    if stop_tail_s is not None:
        m.stop_tail_s = stop_tail_s
    return {
        "inputs": {**asdict(m), "save_s": round(m.save_s, 1), "checkpoint_load_s": round(m.save_s, 1)},
        "suite": _simulate(m, suite=True),
        "naive": _simulate(m, suite=False),
    }


def measured_overheads(r: RunReport) -> dict[str, float]:
    """A rehearsal's per-chunk overheads the model takes: median start-up, stop tail and requeue gap."""
    startup = [
        c.trainer_started - c.start for c in r.chunks if c.trainer_started is not None and c.start is not None
    ]
    tails = [c.tail_s for c in r.chunks if c.tail_s is not None and c.reason not in ("running", "vanished")]
    gaps = [c.requeue_gap_s for c in r.chunks if c.requeue_gap_s is not None]
    out: dict[str, float] = {}
    if startup:
        out["suite_startup_s"] = round(statistics.median(startup), 2)
    if tails:
        out["stop_tail_s"] = round(statistics.median(tails), 2)
    if gaps:
        out["requeue_gap_s"] = round(statistics.median(gaps), 2)
    return out


