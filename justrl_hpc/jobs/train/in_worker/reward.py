"""JustRL's reward for verl's `custom_reward_function`: DAPO's rule-based verifier in strict-box mode.

The last `\\boxed{...}` within the last 300 characters must equal the ground truth exactly: +1, else −1.
verl loads this file by path (reward.custom_reward_function.path), so it imports nothing from the suite.
"""

from __future__ import annotations

from typing import Any


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    **_: Any,
) -> dict[str, Any]:
    # Imported here so that loading the file costs nothing until the first score.
    from verl.utils.reward_score import math_dapo

    result = math_dapo.compute_score(solution_str, str(ground_truth), strict_box_verify=True)
    return {"score": float(result["score"]), "acc": bool(result["acc"]), "pred": result.get("pred")}
