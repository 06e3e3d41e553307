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


# Responses the two graders disagree on: Math-Verify accepts an equivalent form and a box anywhere; DAPO's strict
# box wants the exact string in the last 300 characters.
DISAGREE = [
    ("So the answer is \\boxed{0.5}.", "\\frac{1}{2}"),
    ("\\boxed{ 34 }", "34"),
    ("\\boxed{42}" + " and then some more reasoning" * 20, "42"),
]


@pytest.mark.parametrize("source", ["AIME24", "AIME25", "AMC23"])
def test_validation_sets_are_graded_with_math_verify_as_in_the_authors_fork(source):
    for solution, truth in DISAGREE:
        assert compute_score(source, solution, truth) == {"score": 1.0, "acc": True, "pred": None}
        assert compute_score(source, "\\boxed{7}", truth)["score"] == 0.0  # Math-Verify's 1/0, not ±1


@pytest.mark.parametrize("source", ["math_dapo", "aime24", "amc23", "DAPO", None])
def test_the_training_reward_and_every_other_source_keep_dapo_strict(source):
    """The diff of the two: the same responses, strict DAPO for training (and for any other name: a lower-case
    aime24 went to math_dapo in their fork too), Math-Verify only for their three validation names."""
    for solution, truth in DISAGREE:
        assert compute_score(source, solution, truth)["score"] == -1.0
    assert compute_score(source, "so \\boxed{42}", "42")["score"] == 1.0


def test_prepare_data_names_the_validation_sets_as_the_authors_do(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow.parquet as pq

    val = tmp_path / "amc23.jsonl"
    val.write_text(json.dumps({"problem": "What is 1+1?", "answer": "2"}) + "\n")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "prepare-data", "--amc23", str(val), "--out",
                          str(tmp_path / "data")], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(repo)))
    assert out.returncode == 0, out.stderr
    (row,) = pq.read_table(tmp_path / "data" / "amc23.verl.parquet").to_pylist()
    assert row["data_source"] == "AMC23"
    assert compute_score(row["data_source"], "so \\boxed{2.0}", row["reward_model"]["ground_truth"])["score"] == 1.0
