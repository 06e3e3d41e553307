"""Per-sample results (an append-only JSONL that survives preemption), the avg@N table, and its outputs.

    RUN/eval/<label>/samples.jsonl   one line per finished sample, appended and flushed as batches finish;
                                     keyed by (benchmark, problem, sample): a restart skips finished keys, and
                                     a line torn by a kill is ignored on reading
    RUN/eval/<label>/results.md      the table beside the published rows for the same base model
    RUN/eval/<label>/results.csv     one row per benchmark, then the average
    RUN/eval/<label>/summary.json    the same figures, machine-readable
    RUN/tensorboard/eval/            scalars at the checkpoint's step (its own folder: TensorBoard reads one
                                     event file per folder at a time)

avg@N is Pass@1 averaged over N samples: per problem the fraction of its samples graded correct, averaged
over problems, in percent. The average is over the benchmarks evaluated (all nine for the published figure).
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from justrl_hpc.core.paths import RunPaths
from justrl_hpc.jobs.evaluate.benchmarks import BENCHMARKS, BY_KEY

SAMPLES = "samples.jsonl"
Key = tuple[str, str, int]

PUBLISHED_COLUMNS = (
    "aime24",
    "aime25",
    "amc23",
    "math500",
    "minerva",
    "olympiadbench",
    "hmmt25",
    "brumo25",
    "cmimc25",
)
# The JustRL paper's table (avg@N Pass@1, %), per base model: the base, the strongest baseline, JustRL.
PUBLISHED: dict[str, list[tuple[str, tuple[float, ...], float]]] = {
    "DeepSeek-R1-Distill-Qwen-1.5B": [
        (
            "DeepSeek-R1-Distill-Qwen-1.5B",
            (29.90, 22.40, 63.82, 84.90, 34.65, 45.95, 13.44, 30.94, 12.89),
            37.65,
        ),
        ("ProRL-V2", (51.87, 35.73, 88.75, 92.00, 49.03, 67.84, 19.38, 47.29, 25.86), 53.08),
        (
            "JustRL-DeepSeek-1.5B (step 4380)",
            (52.60, 38.75, 91.02, 91.65, 51.47, 67.99, 21.98, 52.71, 25.63),
            54.87,
        ),
    ],
    "OpenMath-Nemotron-1.5B": [
        ("OpenMath-Nemotron-1.5B", (58.75, 48.44, 90.55, 92.40, 26.93, 71.70, 30.10, 61.67, 30.08), 56.74),
        ("QuestA-Nemotron-1.5B", (71.56, 62.08, 93.44, 92.95, 32.08, 72.28, 40.94, 67.50, 41.48), 63.81),
        (
            "JustRL-Nemotron-1.5B (step 3440)",
            (69.69, 62.92, 96.02, 94.15, 30.24, 76.59, 40.63, 66.88, 41.72),
            64.32,
        ),
    ],
}


@dataclass
class SampleResult:
    benchmark: str
    problem: str
    sample: int
    seed: int
    correct: bool
    rule: str
    pred: str | None
    answer: str
    tokens: int
    truncated: bool
    tail: str  # the response's last 300 characters (where the strict reward looks); full text with keep_text
    text: str | None = None

    @property
    def key(self) -> Key:
        return (self.benchmark, self.problem, self.sample)


class SampleLog:
    """The append-only JSONL of finished samples."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / SAMPLES

    def read(self) -> dict[Key, SampleResult]:
        out: dict[Key, SampleResult] = {}
        if not self.path.is_file():
            return out
        with open(self.path) as fh:
            for line in fh:
                try:
                    r = SampleResult(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # the line a kill cut short
                out.setdefault(r.key, r)
        return out

    def append(self, results: Iterable[SampleResult]) -> None:
        append_jsonl(self.path, (asdict(r) for r in results))


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows as JSON lines, flushed and fsynced (samples.jsonl, judged.jsonl). A kill mid-line leaves no
    newline at the end: the next line starts on its own, and readers skip the torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
    with open(path, "a") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@dataclass
class BenchmarkScore:
    benchmark: str
    label: str
    n: int
    problems: int
    samples: int
    avg_at_n: float  # percent
    mean_tokens: float
    truncated_pct: float


@dataclass
class Table:
    label: str
    step: int | None
    model: str
    scores: list[BenchmarkScore]
    average: float
    mean_tokens: float
    complete: bool  # every benchmark evaluated, with its published N
    # {"rules": [...], "judge": {model, asked, accepted, ...} | None}; empty when not recorded
    grading: dict[str, Any] = field(default_factory=dict)
    generator: dict[str, Any] = field(default_factory=dict)  # {"backend": ..., "version": ...}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def score(
    results: dict[Key, SampleResult],
    plan: dict[str, tuple[list[str], int]],
    label: str,
    step: int | None,
    model: str,
) -> Table:
    """plan: benchmark → (problem ids, N). Only samples of the plan count."""
    scores = []
    all_tokens: list[int] = []
    for bench, (pids, n) in plan.items():
        per_problem, tokens, truncated = [], [], 0
        for pid in pids:
            got = [results[(bench, pid, k)] for k in range(n) if (bench, pid, k) in results]
            if not got:
                continue
            per_problem.append(sum(r.correct for r in got) / len(got))
            tokens += [r.tokens for r in got]
            truncated += sum(r.truncated for r in got)
        all_tokens += tokens
        scores.append(
            BenchmarkScore(
                benchmark=bench,
                label=BY_KEY[bench].label,
                n=n,
                problems=len(per_problem),
                samples=len(tokens),
                avg_at_n=100 * statistics.fmean(per_problem) if per_problem else 0.0,
                mean_tokens=statistics.fmean(tokens) if tokens else 0.0,
                truncated_pct=100 * truncated / len(tokens) if tokens else 0.0,
            )
        )
    complete = len(plan) == len(BENCHMARKS) and all(
        plan[b.key][1] == b.n and len(plan[b.key][0]) == b.size for b in BENCHMARKS if b.key in plan
    )
    return Table(
        label=label,
        step=step,
        model=model,
        scores=scores,
        average=statistics.fmean(s.avg_at_n for s in scores) if scores else 0.0,
        mean_tokens=statistics.fmean(all_tokens) if all_tokens else 0.0,
        complete=complete,
    )


def published_rows(base_model: str) -> tuple[str | None, list[tuple[str, tuple[float, ...], float]]]:
    for name, rows in PUBLISHED.items():
        if name.lower() in base_model.lower():
            return name, rows
    return None, []


RULES = ("verl-math", "math-verify")
DAGGER = "†"


def grading_lines(table: Table) -> tuple[list[str], bool]:
    """How the figures were graded, for results.md's first lines; and whether this run's row is graded
    otherwise than the published rows (judge-graded, with the empty question of the authors' script)."""
    grading = table.grading or {}
    judge = grading.get("judge")
    rules = ", ".join(grading.get("rules") or RULES)
    gen = table.generator or {}
    made = f"Generated with {gen['backend']} {gen.get('version') or ''}".rstrip() + ". " if gen.get("backend") else ""
    if not grading:
        return [f"{made}Grading not recorded (an evaluation from before 2026-12-07)."], True
    if judge is None:
        return [
            f"{made}Graded by the rules alone ({rules}; `--judge none`). The published rows are judge-graded "
            f"(CompassVerifier-3B on what the rules reject): expect the row marked {DAGGER} lower, most on "
            "Minerva and OlympiadBench."
        ], True
    differs = judge.get("question") == "real"
    line = (
        f"{made}Graded as the authors' evals/grade.py: the rules ({rules}) first, then the judge {judge['model']} "
        f"on the {judge['asked']} responses they rejected, {judge['accepted']} accepted (greedy, a judgement "
        "starting with \"A\" is correct), "
    )
    line += (
        f"with the real question (theirs passed an empty one): the row marked {DAGGER} is graded differently."
        if differs
        else "with an empty question as theirs, like the published rows."
    )
    return [line], differs


def markdown(table: Table, base_model: str) -> str:
    evaluated = {s.benchmark: s for s in table.scores}
    cols = [b for b in BENCHMARKS if b.key in evaluated]
    head = ["model", *[f"{b.label}@{evaluated[b.key].n}" for b in cols], "Avg", "mean tokens"]
    graded, differs = grading_lines(table)
    lines = [*graded, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    this = f"this run: {table.label}" + (f" ({table.model})" if table.model else "") + (DAGGER if differs else "")
    lines.append(
        "| "
        + " | ".join(
            [
                this,
                *[f"{evaluated[b.key].avg_at_n:.2f}" for b in cols],
                f"{table.average:.2f}",
                f"{table.mean_tokens:.0f}",
            ]
        )
        + " |"
    )
    name, rows = published_rows(base_model)
    for model, values, avg in rows:
        by_key = dict(zip(PUBLISHED_COLUMNS, values, strict=True))
        # The published average is over all nine; over a subset it is recomputed so the columns compare.
        shown_avg = avg if len(cols) == len(BENCHMARKS) else statistics.fmean(by_key[b.key] for b in cols)
        lines.append(
            "| "
            + " | ".join(
                [f"published: {model}", *[f"{by_key[b.key]:.2f}" for b in cols], f"{shown_avg:.2f}", ""]
            )
            + " |"
        )
    notes = []
    if not rows:
        notes.append(f"No published rows for base model {base_model or '(unknown)'}.")
    if not table.complete:
        notes.append(
            "Not the published protocol (a subset of the benchmarks or of their problems, other sets, or a "
            "different N): compare with care."
        )
    missing = [s for s in table.scores if s.samples < s.n * s.problems or s.problems == 0]
    for s in missing:
        notes.append(f"{s.label}: {s.samples} samples over {s.problems} problems.")
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def csv_text(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["benchmark", "n", "problems", "samples", "avg_at_n", "mean_tokens", "truncated_pct"])
    for s in table.scores:
        w.writerow(
            [
                s.benchmark,
                s.n,
                s.problems,
                s.samples,
                f"{s.avg_at_n:.4f}",
                f"{s.mean_tokens:.1f}",
                f"{s.truncated_pct:.2f}",
            ]
        )
    w.writerow(
        [
            "average",
            "",
            "",
            sum(s.samples for s in table.scores),
            f"{table.average:.4f}",
            f"{table.mean_tokens:.1f}",
            "",
        ]
    )
    return buf.getvalue()


def published_endpoint(table: Table, base_model: str) -> dict[str, Any] | None:
    """The paper's JustRL row for this base model, when the table covers its nine benchmarks (a subset's
    average is another number): what the dashboard puts beside the run's evaluations, as context."""
    _, rows = published_rows(base_model)
    if not rows or {s.benchmark for s in table.scores} != set(PUBLISHED_COLUMNS):
        return None
    name, _, average = rows[-1]
    return {"row": name, "average": average}


def write_outputs(table: Table, folder: Path, base_model: str) -> None:
    """summary.json names the evaluated model and the base model whose published rows it sits beside as two
    fields (`model` stays, the evaluated one): a --model folder once read as the run's base model there."""
    from justrl_hpc.core.run_folder import atomic_write

    atomic_write(folder / "results.md", markdown(table, base_model))
    atomic_write(folder / "results.csv", csv_text(table))
    summary = {**table.to_json(), "evaluated_model": table.model, "base_model": base_model,
               "published": published_endpoint(table, base_model)}
    atomic_write(folder / "summary.json", json.dumps(summary, indent=2))


def tensorboard_scalars(table: Table) -> dict[str, float]:
    out = {f"eval/{s.benchmark}/avg@{s.n}": s.avg_at_n for s in table.scores}
    out.update({f"eval/{s.benchmark}/mean_response_tokens": s.mean_tokens for s in table.scores})
    out["eval/average"] = table.average
    out["eval/mean_response_tokens"] = table.mean_tokens
    return out


def write_tensorboard(table: Table, run_dir: Path) -> Path:
    """Scalars at the checkpoint's step (0 for a model without a step), written by tensorboard's own writer."""
    import time

    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    logdir = RunPaths(run_dir).tensorboard / "eval"
    logdir.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(logdir))
    values = tensorboard_scalars(table)
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values.items()]
    )
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=table.step or 0, summary=summary))
    writer.close()
    return logdir
