"""`justrl-hpc prepare-data` on small files in the published schemas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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
