"""The rehearsal's verifiable toy task: "What is the largest of a, b and c?" over three distinct digits.

Small arithmetic that a ~0.15 M-parameter model can learn by RL in a minute on one core: the answer is
always one of the numbers in the question, so a base model that has learnt only the answer FORMAT (box
one of the numbers) is right about a third of the time, and GRPO has signal from the first step: the
score climbs from ≈ −0.3 towards +1 while the entropy of the answer token falls. Answers are checked
with the strict boxed DAPO reward (`justrl_hpc.jobs.train.in_worker.reward.compute_score`), exactly as in JustRL.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

from justrl_hpc.core.recipe import PROMPT_SUFFIX

DATA_SOURCE = "toy_max3"
ABILITY = "math"


@dataclass(frozen=True)
class Problem:
    numbers: tuple[int, int, int]

    @property
    def question(self) -> str:
        a, b, c = self.numbers
        return f"What is the largest of {a}, {b} and {c}?"

    @property
    def answer(self) -> str:
        return str(max(self.numbers))

    def user_message(self) -> str:
        # JustRL appends the same instruction to every DAPO-Math-17k question.
        return self.question + PROMPT_SUFFIX

    def format_target(self, rng: random.Random) -> str:
        """A base-model response: the right format, a number from the question chosen at random.

        Supervising on this teaches the format and the candidate set, never which candidate is right.
        """
        return f"\\boxed{{{rng.choice(self.numbers)}}}"


def all_problems() -> list[Problem]:
    return [Problem(t) for t in itertools.permutations(range(10), 3)]


def split(seed: int, n_val: int) -> tuple[list[Problem], list[Problem]]:
    """Disjoint train/val problems (720 in all), shuffled with `seed`."""
    problems = all_problems()
    random.Random(seed).shuffle(problems)
    return problems[n_val:], problems[:n_val]


def row(problem: Problem, split_name: str, index: int) -> dict[str, Any]:
    """One row in verl's RL parquet schema (the one DAPO-Math-17k is converted to)."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": problem.user_message()}],
        "ability": ABILITY,
        "reward_model": {"ground_truth": problem.answer, "style": "rule"},
        "extra_info": {"split": split_name, "index": index},
    }
