"""`justrl-hpc prepare-data` on small files in the published schemas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from justrl_hpc.core.data_files import DAPO_PREFIX, DAPO_SUFFIX, check_rl_parquet
from justrl_hpc.core.recipe import PROMPT_SUFFIX
from justrl_hpc.jobs.train.in_worker.reward import compute_score

REPO = Path(__file__).resolve().parents[2]
PROBLEMS = [("What is 2+3?", "5"), ("Find x if 2x = 8.", "4"), ("How many primes are below 10?", "4")]


def dapo_file(path: Path, repeats: int = 100) -> Path:
    rows = [
        {"data_source": "math_dapo",
         "prompt": [{"role": "user", "content": DAPO_PREFIX + q + DAPO_SUFFIX}],
         "ability": "MATH", "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"},
         "extra_info": {"index": f"id-{i}"}}
        for _ in range(repeats) for i, (q, a) in enumerate(PROBLEMS)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def prepare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "prepare-data", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_dapo_becomes_verl_rl_parquet_with_the_suffix_once(tmp_path):
    src = dapo_file(tmp_path / "dapo-math-17k.parquet")
    val = tmp_path / "aime24.jsonl"
    val.write_text("\n".join(json.dumps({"problem": q, "answer": a}) for q, a in PROBLEMS))
    out = prepare("--dapo", str(src), "--aime24", str(val), "--out", str(tmp_path / "data"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "300 rows" in out.stdout and "3 unique prompts, each 100.0x (kept as published)" in out.stdout
    train = tmp_path / "data" / "dapo-math-17k.verl.parquet"
    assert check_rl_parquet(train) == [] and check_rl_parquet(tmp_path / "data" / "aime24.verl.parquet") == []
    rows = pq.read_table(train).to_pylist()
    first = rows[0]["prompt"][0]["content"]
    assert first == "What is 2+3?" + PROMPT_SUFFIX and first.count("boxed") == 1 and "Answer:" not in first
    assert rows[0]["reward_model"]["ground_truth"] == "5" and rows[0]["data_source"] == "math_dapo"
    # The prepared prompt and its ground truth work with the strict reward.
    assert compute_score("math_dapo", "... so \\boxed{5}", rows[0]["reward_model"]["ground_truth"])["score"] == 1.0
    meta = json.loads((tmp_path / "data" / "dapo-math-17k.verl.parquet.meta.json").read_text())
    assert meta["rows"] == 300 and meta["unique_prompts"] == 3 and len(meta["sha256"]) == 64


def test_dedupe_and_running_twice_keeps_one_suffix(tmp_path):
    src = dapo_file(tmp_path / "d.parquet", repeats=5)
    out = prepare("--dapo", str(src), "--dedupe", "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert out.returncode == 0 and "3 rows" in out.stdout
    again = prepare("--dapo", str(tmp_path / "a" / "dapo-math-17k.verl.parquet"), "--out", str(tmp_path / "b"),
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    content = pq.read_table(tmp_path / "b" / "dapo-math-17k.verl.parquet").to_pylist()[0]["prompt"][0]["content"]
    assert content.count(PROMPT_SUFFIX) == 1


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "x"}]), bad)
    for args, field in ((["--dapo", str(bad)], "--dapo"), (["--dapo", str(tmp_path / "missing.parquet")], "--dapo"),
                        ([], "prepare-data"), (["--aime24", str(bad)], "--aime24")):
        out = prepare(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert out.stderr.startswith(f"error: {field}:") and len(out.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


# The authors' layout (thunlp/JustRL data/<NAME>/test.parquet), made here at the protocol's sizes; the folder
# names vary as a checkout's might.
AUTHORS_NAMES = {"aime24": "AIME24", "aime25": "aime_2025", "amc23": "AMC23", "math500": "MATH-500",
                 "minerva": "minerva_math", "olympiadbench": "OlympiadBench", "hmmt25": "HMMT25",
                 "brumo25": "BRUMO25", "cmimc25": "CMIMC25"}


# A grade.py in the authors' shape: the judge's prompt assigned to CV_PROMPT beside code that must not run
# (the prompt text is made up here; the real one is the judge's and stays in the user's checkout).
GRADER = '''import vllm  # not installed here: the file is read, never run
raise SystemExit("ran")
CV_PROMPT = """
Judge the candidate (ignore \\\\boxed{{}}).
<Q>{question}</Q> <gold>{gold_answer}</gold> <cand>{llm_response}</cand>
Answer A, B or C:"""
'''


def authors_checkout(root: Path, sizes: dict[str, int] | None = None, grader: str | None = GRADER) -> Path:
    from justrl_hpc.jobs.evaluate.benchmarks import BY_KEY

    if grader is not None:
        (root / "evals").mkdir(parents=True)
        (root / "evals" / "grade.py").write_text(grader)

    for key, name in AUTHORS_NAMES.items():
        n = (sizes or {}).get(key, BY_KEY[key].size)
        rows = [{"problem": f"{key} problem {i}: what is {i}+1?", "answer": f"\\boxed{{{i + 1}}}", "id": f"{key}-{i}"}
                for i in range(n)]
        (root / "data" / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / name / "test.parquet")
    (root / "data" / "notes").mkdir()
    return root


def test_the_authors_sets_are_copied_with_their_sha256_and_row_counts(tmp_path):
    import hashlib

    from justrl_hpc.jobs.evaluate import benchmarks as bm

    checkout = authors_checkout(tmp_path / "JustRL")
    out = tmp_path / "eval"
    done = prepare("--eval-from", str(checkout), "--eval-out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    sources = json.loads((out / "sources.json").read_text())
    assert set(sources) == {*bm.BY_KEY, "judge_prompt"}
    assert "left out (no benchmark of the protocol, or no test.parquet): notes" in done.stdout
    # The judge's prompt, read from grade.py's syntax tree (the file exits if run), as Python reads the literal.
    prompt = (out / "judge_prompt.txt").read_text()
    assert prompt.startswith("\nJudge the candidate (ignore \\boxed{{}}).") and "{llm_response}" in prompt
    filled = prompt.format(question="q", gold_answer="g", llm_response="r")
    assert filled.startswith("\nJudge the candidate (ignore \\boxed{}).") and "<cand>r</cand>" in filled
    assert sources["judge_prompt"]["sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert "judge_prompt.txt: the judge's prompt" in done.stdout
    for key, name in AUTHORS_NAMES.items():
        original = checkout / "data" / name / "test.parquet"
        assert (out / f"{key}.parquet").read_bytes() == original.read_bytes()  # byte for byte
        assert sources[key]["sha256"] == hashlib.sha256(original.read_bytes()).hexdigest()
        assert sources[key]["rows"] == bm.BY_KEY[key].size
        # The evaluate job reads them as it reads any set, the boxed gold answer as given.
        problems = bm.load(out, bm.BY_KEY[key])
        assert len(problems) == bm.BY_KEY[key].size and problems[1].id == f"{key}-1"
    # Its data/ folder works as well as the checkout.
    again = prepare("--eval-from", str(checkout / "data"), "--eval-out", str(tmp_path / "eval2"), cwd=tmp_path)
    assert again.returncode == 0 and json.loads((tmp_path / "eval2" / "sources.json").read_text()) == sources


def test_a_set_with_the_wrong_row_count_is_refused_naming_the_file_and_nothing_is_written(tmp_path):
    checkout = authors_checkout(tmp_path / "JustRL", {"minerva": 271})
    out = tmp_path / "eval"
    bad = prepare("--eval-from", str(checkout), "--eval-out", str(out), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("error: --eval-from:") and "minerva_math/test.parquet holds 271 problems" in bad.stderr
    assert "has 272" in bad.stderr and not out.exists()
    none = prepare("--eval-from", str(tmp_path), "--eval-out", str(out), cwd=tmp_path)
    assert none.returncode == 2 and "none of the nine sets" in none.stderr and not out.exists()
    both = prepare("--eval-from", str(checkout), "--dapo", str(tmp_path / "x.parquet"), cwd=tmp_path)
    assert both.returncode == 2 and both.stderr.startswith("error: --eval-from:") and "alone" in both.stderr


@pytest.mark.parametrize(
    ("grader", "says"),
    [
        ("PROMPT = 'x'\n", "assigns no string to CV_PROMPT"),
        ("CV_PROMPT = '{question} {llm_response}'\n", "missing gold_answer"),
        ("CV_PROMPT = '{question} {gold_answer} {llm_response} {extra}'\n", "other extra"),
        ("CV_PROMPT = '\n", "is not Python"),
    ],
)
def test_a_grader_without_a_usable_judge_prompt_is_refused_and_nothing_is_written(tmp_path, grader, says):
    checkout = authors_checkout(tmp_path / "JustRL", grader=grader)
    out = tmp_path / "eval"
    bad = prepare("--eval-from", str(checkout), "--eval-out", str(out), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and says in bad.stderr, bad.stderr
    assert bad.stderr.startswith("error: --eval-from:") and "evals/grade.py" in bad.stderr and not out.exists()


def test_a_checkout_without_the_grader_copies_the_sets_and_says_the_prompt_was_not_taken(tmp_path):
    checkout = authors_checkout(tmp_path / "JustRL", grader=None)
    done = prepare("--eval-from", str(checkout), "--eval-out", str(tmp_path / "eval"), cwd=tmp_path)
    assert done.returncode == 0 and not (tmp_path / "eval" / "judge_prompt.txt").exists()
    assert "the judge's prompt was not taken" in done.stdout


def test_the_evaluate_job_refuses_a_set_of_another_size_unless_told(tmp_path):
    from justrl_hpc.core.errors import UserError
    from justrl_hpc.jobs.evaluate import job

    checkout = authors_checkout(tmp_path / "JustRL", {"aime24": 29})
    data = tmp_path / "eval"
    data.mkdir()
    for key, name in AUTHORS_NAMES.items():
        (data / f"{key}.parquet").write_bytes((checkout / "data" / name / "test.parquet").read_bytes())
    settings = job.EvalSettings(data=str(data), benchmarks=["aime24", "amc23"])
    try:
        job.load_problems(settings)
    except UserError as exc:
        assert exc.field == "--data" and "aime24.parquet holds 29 problems; the protocol's AIME24 has 30" in str(exc)
    else:
        raise AssertionError("a 29-problem AIME24 was accepted")
    got = job.load_problems(job.EvalSettings(data=str(data), benchmarks=["aime24", "amc23"], partial_sets=True,
                                             limit=5))
    assert [len(v) for v in got.values()] == [5, 5]
    assert len(job.load_problems(job.EvalSettings(data=str(data), benchmarks=["amc23"]))["amc23"]) == 40
