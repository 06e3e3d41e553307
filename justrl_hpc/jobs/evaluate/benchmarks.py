"""The nine benchmarks of the JustRL evaluation, their published N and sizes, and loading them from local files.

Each benchmark is one file in a data folder, `<key>.parquet`, `<key>.jsonl` or `<key>.json` (or the
`<key>.verl.parquet` that `justrl-hpc prepare-data` writes). Field names differ between the published copies,
so the common ones are accepted: the question in `problem` / `question` / `Problem` / `prompt` (a string, or
verl's chat-message list whose last user message is used, JustRL's training suffix removed), the answer in
`answer` / `Answer` / `final_answer` (a list: its first item) / `reward_model.ground_truth` / the last
`\\boxed{}` of `solution` (verl's MATH preprocessing keeps only the solution). JustRL's own preprocessing
(thunlp/JustRL train/data/preprocess.py) reads `prompt` and `answer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from justrl_hpc.core.errors import UserError

# The evaluation prompt (a space, not the training suffix's blank line, between problem and instruction).
EVAL_SUFFIX = " Please reason step by step, and put your final answer within \\boxed{}."
SUFFIXES = (".parquet", ".verl.parquet", ".jsonl", ".json")


@dataclass(frozen=True)
class Benchmark:
    key: str  # file stem and tag name
    label: str  # column header in the published table
    n: int  # samples per problem (avg@N)
    size: int  # problems in the published set
    hub: str  # where `prepare` fetches it from (needs a network; not exercised here)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("aime24", "AIME24", 32, 30, "math-ai/aime24"),
    Benchmark("aime25", "AIME25", 32, 30, "math-ai/aime25"),
    Benchmark("amc23", "AMC23", 32, 40, "math-ai/amc23"),
    Benchmark("math500", "MATH500", 4, 500, "HuggingFaceH4/MATH-500"),
    Benchmark("minerva", "Minerva", 4, 272, "math-ai/minervamath"),
    Benchmark("olympiadbench", "Olympiad", 4, 674, "math-ai/olympiadbench"),
    Benchmark("hmmt25", "HMMT25", 32, 30, "MathArena/hmmt_feb_2025"),
    Benchmark("brumo25", "BRUMO25", 32, 30, "MathArena/brumo_2025"),
    Benchmark("cmimc25", "CMIMC25", 32, 40, "MathArena/cmimc_2025"),
)
BY_KEY = {b.key: b for b in BENCHMARKS}


@dataclass(frozen=True)
class Problem:
    benchmark: str
    id: str  # stable within the benchmark: the file's id column, else the row index
    question: str
    answer: str

    def prompt(self) -> str:
        return self.question + EVAL_SUFFIX


def select(names: list[str] | None) -> list[Benchmark]:
    if not names:
        return list(BENCHMARKS)
    unknown = [n for n in names if n not in BY_KEY]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; valid: {', '.join(BY_KEY)}", "--benchmarks")
    return [BY_KEY[n] for n in dict.fromkeys(names)]


def find_file(data_dir: Path, bench: Benchmark) -> Path | None:
    for suffix in SUFFIXES:
        path = data_dir / f"{bench.key}{suffix}"
        if path.is_file():
            return path
    return None


def bare_problem(text: str) -> str:
    from justrl_hpc.core.data_files import bare_problem as without_training_suffix

    text = without_training_suffix(text)
    return text[: -len(EVAL_SUFFIX)].strip() if text.endswith(EVAL_SUFFIX) else text


def _question(row: dict[str, Any]) -> str | None:

    for key in ("problem", "question", "Problem", "Question", "prompt", "input"):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return bare_problem(value)
        if isinstance(value, list) and value:  # verl's RL schema: chat messages
            users = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1].get("content"), str):
                return bare_problem(users[-1]["content"])
    return None


def _answer(row: dict[str, Any]) -> str | None:
    for key in ("answer", "Answer", "final_answer", "ground_truth"):
        value = row.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None and str(value).strip():
            return str(value).strip()
    rm = row.get("reward_model")
    if isinstance(rm, dict) and rm.get("ground_truth") is not None:
        return str(rm["ground_truth"]).strip()
    solution = row.get("solution")
    if isinstance(solution, str):
        from justrl_hpc.jobs.evaluate.grade import last_boxed

        boxed = last_boxed(solution)
        if boxed is not None:
            return boxed.strip()
    return None


def _row_id(row: dict[str, Any], index: int) -> str:
    for key in ("id", "unique_id", "ID", "idx", "problem_idx"):
        if row.get(key) is not None:
            return str(row[key])
    extra = row.get("extra_info")
    if isinstance(extra, dict) and extra.get("index") is not None:
        return str(extra["index"])
    return str(index)


def load(data_dir: Path, bench: Benchmark, limit: int | None = None) -> list[Problem]:
    """The problems of one benchmark (the first `limit` of them if given). Bad files are UserErrors."""
    path = find_file(data_dir, bench)
    if path is None:
        names = ", ".join(f"{bench.key}{s}" for s in SUFFIXES)
        raise UserError(f"no file for {bench.key} in {data_dir} (looked for {names})", "--data")
    return load_file(path, bench, limit)


def load_file(path: Path, bench: Benchmark, limit: int | None = None, field: str = "--data") -> list[Problem]:
    """The problems of one benchmark's file, wherever it lies (prepare-data --eval-from reads the authors')."""
    from justrl_hpc.core.data_files import read_table

    rows = read_table(path, field)
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{path} row {i} is not a record", field)
        question, answer = _question(row), _answer(row)
        if question is None or answer is None:
            raise UserError(
                f"{path} row {i} needs a question (problem/question/prompt) and an answer "
                "(answer/final_answer/reward_model.ground_truth/solution with \\boxed{})",
                field,
            )
        pid = _row_id(row, i)
        if pid in seen:  # ids key the results: a duplicate would merge two problems' samples
            pid = f"{pid}#{i}"
        seen.add(pid)
        problems.append(Problem(bench.key, pid, question, answer))
    if not problems:
        raise UserError(f"{path} holds no problems", field)
    return problems[:limit] if limit else problems


def prepare(out_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Fetch the benchmarks from the Hugging Face Hub into out_dir as JSONL (needs a network and `datasets`).

    Never run in the tests (no network here); the hub ids are the usual public copies, unchecked from here;
    their columns are read by the same loader.
    """
    import json

    from datasets import load_dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for bench in select(names):
        splits = load_dataset(bench.hub)
        # The hub copies differ in split names: the test split where there is one, else the only one.
        ds = splits["test"] if "test" in splits else splits[next(iter(splits))]
        path = out_dir / f"{bench.key}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as fh:
            for row in ds:
                fh.write(json.dumps(row, default=str) + "\n")
        tmp.rename(path)
        written.append(path)
    return written
