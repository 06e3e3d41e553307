"""The run's data files: is a file a verl RL parquet (cheap: the schema and the first rows, with pyarrow
only), reading a table of problems (parquet, JSON, JSONL), and a problem without DAPO's wording around it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from justrl_hpc.core.errors import UserError
from justrl_hpc.core.recipe import PROMPT_SUFFIX

REQUIRED = ("data_source", "prompt", "reward_model")


def check_rl_parquet(path: Path, rows: int = 8) -> list[str]:
    """Problems found (empty list = usable by verl's RLHFDataset and the strict reward)."""
    if not path.exists():
        return ["no such file"]
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a non-parquet file
        return [f"not a parquet file ({type(exc).__name__})"]
    names = set(pf.schema_arrow.names)
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        return [f"missing column {missing[0]!r} (verl's RL schema needs {', '.join(REQUIRED)})"]
    if pf.metadata.num_rows == 0:
        return ["holds no rows"]
    first = next(pf.iter_batches(batch_size=rows, columns=list(REQUIRED))).to_pylist()
    for i, row in enumerate(first):
        prompt = row["prompt"]
        if (
            not isinstance(prompt, list)
            or not prompt
            or not all(isinstance(m, dict) and "content" in m for m in prompt)
        ):
            return [f"row {i}: prompt must be a list of chat messages with role and content"]
        rm = row["reward_model"]
        if not isinstance(rm, dict) or rm.get("ground_truth") in (None, ""):
            return [f"row {i}: reward_model.ground_truth is missing"]
    return []


# DAPO-Math-17k's own wording around each problem: prepare-data strips it (JustRL adds its own suffix),
# and the evaluation strips it from benchmark files that carry it.
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

def bare_problem(content: str) -> str:
    text = content
    if text.startswith(DAPO_PREFIX):
        text = text[len(DAPO_PREFIX):]
    if text.endswith(DAPO_SUFFIX):
        text = text[: -len(DAPO_SUFFIX)]
    if text.endswith(PROMPT_SUFFIX):  # already prepared once: never bake the suffix in twice
        text = text[: -len(PROMPT_SUFFIX)]
    return text.strip()


def read_table(path: Path, field: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"no such file {path}", field)
    try:
        if path.suffix in (".jsonl", ".json"):
            text = path.read_text()
            if path.suffix == ".json":
                data = json.loads(text)
                return data if isinstance(data, list) else list(data.values())[0]
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} is not a readable parquet/JSON file ({type(exc).__name__})", field) from None
