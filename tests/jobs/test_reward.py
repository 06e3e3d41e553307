"""The strict boxed DAPO reward, on real solution strings, through verl's own scorer."""

from __future__ import annotations

import importlib.util

import pytest

from justrl_hpc.jobs.train.in_worker.reward import compute_score


@pytest.mark.parametrize(
    "solution,truth,score",
    [
        ("We add them. So the answer is \\boxed{42}.", "42", 1.0),
        ("We add them. So the answer is \\boxed{41}.", "42", -1.0),
        ("First \\boxed{7}, no wait, it is \\boxed{42}", "42", 1.0),  # the last box counts
        ("It is \\boxed{42}, no: \\boxed{7}", "42", -1.0),
        ("The answer is 42.", "42", -1.0),  # no box
        ("Answer: 42", "42", -1.0),  # DAPO's "Answer:" form is not accepted in strict-box mode
        ("\\boxed{42}" + " and then some more reasoning" * 20, "42", -1.0),  # box outside the last 300 chars
        ("x" * 1000 + " so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),
        ("\\boxed{ 34 }", "34", -1.0),  # an exact string compare, as DAPO's strict mode does
    ],
)
def test_strict_box(solution, truth, score):
    result = compute_score("math_dapo", solution, truth)
    assert result["score"] == score
    assert result["acc"] is (score > 0)


def test_loads_by_path_like_verl(tmp_path):
    """verl imports the file by path (reward.custom_reward_function.path): it must stand alone."""
    import justrl_hpc.jobs.train.in_worker.reward as mod

    spec = importlib.util.spec_from_file_location("custom_module", mod.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.compute_score("math_dapo", "\\boxed{3}", "3", extra_info={"index": 1})["score"] == 1.0


def test_verl_reward_loader_accepts_it():
    """verl's own loader for custom reward functions resolves our path/name."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    import justrl_hpc.jobs.train.in_worker.reward as mod

    cfg = OmegaConf.create(
        {"reward": {"custom_reward_function": {"path": mod.__file__, "name": "compute_score"}}}
    )
    fn = get_custom_reward_fn(cfg)
    assert fn(data_source="math_dapo", solution_str="so \\boxed{9}", ground_truth="9")["score"] == 1.0
