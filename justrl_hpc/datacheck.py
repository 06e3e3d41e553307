"""Is a file a verl RL parquet? Cheap: the schema and the first rows, read with pyarrow only."""

from __future__ import annotations

from pathlib import Path

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
