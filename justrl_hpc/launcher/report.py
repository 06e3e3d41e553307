"""`justrl-hpc report RUN`: where a run's allocated time went, per chunk and overall (core/goodput.py derives
it from the ledger; this module prints it)."""

from __future__ import annotations

import argparse
import json

from justrl_hpc.core.goodput import RunReport, report_run
from justrl_hpc.core.runs import find_run

# -- the text table -----------------------------------------------------------------------------------------


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 3600:
        return f"{x / 3600:.1f}h"
    if x >= 100:
        return f"{x / 60:.1f}m"
    return f"{x:.1f}s"


def format_report(r: RunReport) -> str:
    state = "finished" if r.finished else (f"failed: {r.failed}" if r.failed is not None else "not finished")
    good = "-" if r.goodput is None else f"{100 * r.goodput:.1f}%"
    lines = [
        f"run {r.name}: {state}; step {r.last_step if r.last_step is not None else '-'}"
        f" of {r.target_step if r.target_step is not None else '?'}, last checkpoint "
        f"{r.saved_step if r.saved_step is not None else '-'}; {len(r.chunks)} chunks",
        f"goodput {good} (useful {_s(r.useful_s)} of {_s(r.allocated_s)} allocated); wall {_s(r.wall_s)}; "
        f"steps lost {r.steps_lost}",
        f"time: queue wait {_s(r.queue_wait_s)}, start-up {_s(r.startup_s)}, tail {_s(r.tail_s)}, "
        f"requeue gaps {_s(r.requeue_gap_s)}"
        + (f", in-job restarts {r.restarts_in_job} ({_s(r.restart_s)} from crash to the next step)"
           if r.restarts_in_job else "")
        + (f", hangs {r.hangs} ({_s(r.hang_s)} from the last step to the stacks taken)" if r.hangs else ""),
        "",
    ]
    head = (
        "chunk",
        "job",
        "ended",
        "steps",
        "lost",
        "alloc",
        "queue",
        "ray",
        "resume",
        "init",
        "train",
        "tail",
        "gap",
        "good",
    )
    rows = [head]
    for c in r.chunks:
        alloc = c.allocated_s
        good_c = f"{100 * c.useful_s / alloc:.0f}%" if alloc else "-"
        steps = "-" if c.last_step is None else f"{c.first_step}-{c.last_step}"
        rows.append(
            (
                str(c.chunk),
                c.job_id or "-",
                c.reason[:24],
                steps,
                str(c.steps_lost),
                _s(alloc),
                _s(c.queue_wait_s),
                _s(c.ray_up_s),
                _s(c.resume_check_s),
                _s(c.trainer_init_s),
                _s(c.training_s),
                _s(c.tail_s),
                _s(c.requeue_gap_s),
                good_c,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(w) if i < 3 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    lines.append("")
    lines.append(
        "queue: submitted/requeued → started; ray: started → Ray saw every node; resume: checkpoint check; "
        "init: trainer start → first step began (model/vLLM init + checkpoint load); "
        "tail: last step → allocation handed back; gap: requeued → next chunk started"
    )
    return "\n".join(lines)


# -- the verb -----------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="justrl-hpc report",
        description="Where a run's allocated time went: goodput per chunk and overall.",
    )
    p.add_argument("run", help="run name under runs/ or a run folder")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = p.parse_args(argv)
    report = report_run(find_run(args.run, need="ledger"))
    if args.json:
        print(json.dumps(report.to_dict(), separators=(",", ":")))
    else:
        print(format_report(report))
    return 0
