"""What an evaluation will cost, printed by `--dry-run` before anything runs: samples, output tokens, minutes.

The protocol's nine benchmarks are 12,184 samples; at up to 31,744 new tokens each the output is ~80–130 M
tokens (a mean of 6.5–10.7k). Time is that over the node's GPUs at a decode rate per GPU. Neither figure can be
measured on these CPU machines, so both are stated as what they are: the mean is this run's own (the newest
earlier evaluation's summary.json) when there is one, else `expected_mean_tokens`; the rate is
`decode_tokens_per_gpu_s` (jobs/evaluate.yaml), an assumption to replace with the figure a first evaluation
on the reader's GPUs logs. The target is ≤ 60 minutes per checkpoint on one 8-GPU node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from justrl_hpc.jobs.evaluate import benchmarks as bm

TARGET_MIN = 60.0


@dataclass(frozen=True)
class Estimate:
    rows: list[tuple[str, int, int, int]]  # label, problems, N, samples
    samples: int
    done: int
    mean_tokens: float
    mean_from: str
    max_new_tokens: int
    gpus: int
    rate: float  # decode tokens / s / GPU

    @property
    def todo(self) -> int:
        return self.samples - self.done

    @property
    def tokens(self) -> float:
        return self.todo * self.mean_tokens

    @property
    def minutes(self) -> float:
        return self.tokens / (self.gpus * self.rate) / 60 if self.gpus and self.rate else float("inf")

    @property
    def worst_minutes(self) -> float:
        """Every sample to the token limit."""
        return self.todo * self.max_new_tokens / (self.gpus * self.rate) / 60 if self.gpus and self.rate else float("inf")


def measured_mean(eval_dir: Path, max_new_tokens: int) -> tuple[float, str] | None:
    """The mean response tokens of the newest earlier evaluation of this run made with the same token limit
    (its summary.json; a smoke test's short limit says nothing of the protocol's lengths)."""
    found = []
    for summary in eval_dir.glob("*/summary.json"):
        try:
            made = json.loads((summary.parent / "settings.json").read_text())
            mean = float(json.loads(summary.read_text())["mean_tokens"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if made.get("max_new_tokens") != max_new_tokens:
            continue
        if mean > 0:
            found.append((summary.stat().st_mtime, mean, summary.parent.name))
    if not found:
        return None
    _, mean, label = max(found)
    return mean, f"measured by this run's {label} evaluation"


def estimate(problems: dict[str, list[bm.Problem]], n_for: dict[str, int], done: int, max_new_tokens: int,
             expected_mean: float, eval_dir: Path, gpus: int, rate: float) -> Estimate:
    rows = [(bm.BY_KEY[k].label, len(ps), n_for[k], len(ps) * n_for[k]) for k, ps in problems.items()]
    measured = measured_mean(eval_dir, max_new_tokens)
    mean, source = measured if measured else (float(expected_mean), "assumed: expected_mean_tokens")
    mean = min(mean, float(max_new_tokens))
    return Estimate(rows, sum(r[3] for r in rows), done, mean, source, max_new_tokens, gpus, rate)


def render(e: Estimate) -> str:
    lines = [f"  {label:<14} {problems:>4} problems x {n:>2} = {samples:>6,} samples" for label, problems, n, samples
             in e.rows]
    lines.append(f"  {'total':<14} {e.samples:>6,} samples ({e.done:,} already done, {e.todo:,} to generate)")
    lines.append(f"  tokens         {e.tokens / 1e6:.1f} M at a mean of {e.mean_tokens:,.0f} per sample ({e.mean_from}); "
                 f"at most {e.todo * e.max_new_tokens / 1e6:.1f} M (every sample to {e.max_new_tokens:,})")
    verdict = "within" if e.minutes <= TARGET_MIN else "over"
    lines.append(f"  time           ~{e.minutes:.0f} min on {e.gpus} GPU(s) at {e.rate:,.0f} tokens/s each (an assumption: "
                 f"decode_tokens_per_gpu_s), {verdict} the {TARGET_MIN:.0f}-minute target; "
                 f"{e.worst_minutes:.0f} min if every sample runs to the limit")
    return "\n".join(lines)
