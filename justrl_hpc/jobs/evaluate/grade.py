"""Grading a response against a benchmark answer with the rule-based verifiers.

Two rules, either accepts: verl's MATH grader (`verl/utils/reward_score/math_reward.py`: the last `\\boxed{}`,
Hendrycks' string normalisation) and Math-Verify (`math_verify`, symbolic equivalence: `0.5` = `\\frac{1}{2}`,
`x=3` = `3`), called like verl's `math_verify.compute_score` but in-process (its process pool costs a spawn
for nothing here) and on the boxed answer only: the prompt asks for `\\boxed{}`, and letting Math-Verify pick
any trailing number of an unboxed response would count lucky digits as answers. Math-Verify's timeouts use SIGALRM, which only the main
thread may set: elsewhere it runs without one.

The authors then ask a judge model (CompassVerifier-3B) about what the rules reject: `judge.py`, a pass of its
own after generation, over the rejected responses this grade recorded.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
import types
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Grade:
    correct: bool
    rule: str  # which rule accepted: "verl-math", "math-verify" ("judge" after the judge pass); "" when rejected
    pred: str | None  # the last \boxed{} content, if any


@functools.cache
def verl_math() -> types.ModuleType:
    """verl's `utils/reward_score/math_reward.py`, loaded from its file: the module imports nothing, while
    `import verl…` first runs verl's package init (ray, torch, ~5 s of CPU per process)."""
    spec = importlib.util.find_spec("verl")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("verl is not installed (pip install -e '.[train]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "reward_score" / "math_reward.py"
    mod_spec = importlib.util.spec_from_file_location("justrl_hpc_verl_math_reward", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def last_boxed(response: str) -> str | None:
    math = verl_math()
    boxed = math.last_boxed_only_string(response)
    if boxed is None:
        return None
    try:
        return math.remove_boxed(boxed)
    except AssertionError:  # "\boxed 5" without braces at the very end, or a malformed tail
        return None


def verl_math_equal(pred: str | None, answer: str) -> bool:
    return pred is not None and bool(verl_math().is_equiv(pred, answer))


def math_verify_equal(pred: str | None, answer: str) -> bool:
    from math_verify import LatexExtractionConfig, parse, verify

    if pred is None or not pred.strip():
        return False

    in_main = threading.current_thread() is threading.main_thread()
    limit = 5 if in_main else None
    try:
        gold = parse("\\boxed{" + answer + "}", (LatexExtractionConfig(),), parsing_timeout=limit)
        parsed = parse("\\boxed{" + pred + "}", (LatexExtractionConfig(),), parsing_timeout=limit)
        if not gold or not parsed:
            return False
        return bool(verify(gold, parsed, timeout_seconds=limit))
    except Exception:  # a timeout or a sympy failure on odd input is a rejection, never a crash of the job
        return False


def grade(response: str, answer: str) -> Grade:
    pred = last_boxed(response)
    if verl_math_equal(pred, answer):
        return Grade(True, "verl-math", pred)
    if math_verify_equal(pred, answer):
        return Grade(True, "math-verify", pred)
    return Grade(False, "", pred)
