"""JustRL's reward for verl's `custom_reward_function`: DAPO's rule-based verifier in strict-box mode.

The last `\\boxed{...}` within the last 300 characters must equal the ground truth exactly: +1, else −1.
verl loads this file by path (reward.custom_reward_function.path), so it imports nothing from the suite.

The validation sets are graded as the authors' verl fork grades them (thunlp/JustRL
`train/verl/utils/reward_score/__init__.py`): a `data_source` of AIME24, AIME25 or AMC23 (the names their
`train/data/preprocess.py` gives those sets, and `justrl-hpc prepare-data` too) goes to Math-Verify, 1 or 0;
their Figure 1's validation curves are graded that way. Every other source, DAPO-Math-17k's `math_dapo` (the
training reward), keeps DAPO's strict box.
"""

from __future__ import annotations

from typing import Any

# The authors' fork sends exactly these data_source values to Math-Verify (their names, upper case: a lower-case
# "aime24" there went to math_dapo by its startswith("aime") branch).
VALIDATION_MATH_VERIFY = ("AIME24", "AIME25", "AMC23")


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    **_: Any,
) -> dict[str, Any]:
    if data_source in VALIDATION_MATH_VERIFY:
        from verl.utils.reward_score import math_verify

        score = float(math_verify.compute_score(solution_str, str(ground_truth)))
        return {"score": score, "acc": score > 0, "pred": None}
    # Imported here so that loading the file costs nothing until the first score.
    from verl.utils.reward_score import math_dapo

    result = math_dapo.compute_score(solution_str, str(ground_truth), strict_box_verify=True)
    return {"score": float(result["score"]), "acc": bool(result["acc"]), "pred": result.get("pred")}
