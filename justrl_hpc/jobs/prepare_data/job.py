"""`justrl-hpc prepare-data`: DAPO-Math-17k and the validation sets → verl's RL parquet, JustRL's suffix baked in.

verl's RL schema: `data_source`, `prompt` (chat messages), `ability`, `reward_model: {ground_truth, style}`,
`extra_info`. The published DAPO file wraps each problem in DAPO's own instruction ("Solve the following math
problem step by step. The last line of your response should be of the form Answer: $Answer …" … "Remember to put
your answer on its own line after \"Answer:\"."); JustRL trains on the bare problem + its `\\boxed{}` suffix, so
the wrapper is removed and the suffix appended once. The published file repeats 17,917 prompts 100 times: that is
detected and reported; the rows are kept as published (the step count and order depend on them) unless
`--dedupe`. Every output gets `<out>.meta.json` with its fingerprint. Writes go to a temp file, renamed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from justrl_hpc.core.data_files import bare_problem, read_table
from justrl_hpc.core.errors import UserError, cli_entry
from justrl_hpc.core.recipe import PROMPT_SUFFIX

VAL_SETS = ("aime24", "aime25", "amc23")


def rl_row(source: str, problem: str, answer: str, index: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "data_source": source,
        "prompt": [{"role": "user", "content": problem + PROMPT_SUFFIX}],
        "ability": "math",
        "reward_model": {"ground_truth": str(answer), "style": "rule"},
        "extra_info": {"index": index, **(extra or {})},
    }


def convert_dapo(rows: list[dict[str, Any]], dedupe: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    out, seen = [], set()
    for i, row in enumerate(rows):
        try:
            content = row["prompt"][-1]["content"]
            answer = row["reward_model"]["ground_truth"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"row {i} lacks prompt[-1].content or reward_model.ground_truth (the DAPO-Math-17k "
                            "schema)", "--dapo") from None
        problem = bare_problem(content)
        key = (problem, str(answer))
        if dedupe and key in seen:
            continue
        seen.add(key)
        extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
        out.append(rl_row("math_dapo", problem, answer, len(out), {"source_index": extra.get("index", i)}))
    unique = len(seen)
    stats = {"rows_in": len(rows), "rows_out": len(out), "unique_prompts": unique,
             "repeat_factor": round(len(rows) / unique, 2) if unique else 0.0, "deduplicated": dedupe}
    return out, stats


def convert_val(rows: list[dict[str, Any]], source: str, field: str) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(rows):
        problem = row.get("problem") or row.get("question") or row.get("Problem")
        answer = row.get("answer") if row.get("answer") is not None else row.get("Answer")
        if problem is None or answer is None:
            raise UserError(f"row {i} needs a problem (or question) and an answer column", field)
        out.append(rl_row(source, bare_problem(str(problem)), str(answer), i))
    return out


def write_parquet(rows: list[dict[str, Any]], out: Path, stats: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    meta = {**stats, "rows": len(rows), "sha256": digest, "prompt_suffix": PROMPT_SUFFIX}
    meta_tmp = out.with_name(f".{out.name}.meta.tmp")
    meta_tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out)
    os.replace(meta_tmp, out.with_name(out.name + ".meta.json"))
    return meta


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="justrl-hpc prepare-data", description=__doc__.splitlines()[0],
        epilog="Also: `--eval-from JUSTRL_CHECKOUT [--eval-out data/eval]` copies the authors' nine evaluation "
               "sets (jobs/evaluate/eval_sets.py); `--rehearsal` makes the rehearsal's toy data.")
    p.add_argument("--dapo", type=Path, help="DAPO-Math-17k parquet (dapo-math-17k.parquet)")
    for name in VAL_SETS:
        p.add_argument(f"--{name}", type=Path, help=f"{name.upper()} problems (parquet/JSONL: problem, answer)")
    p.add_argument("--out", type=Path, default=Path("data"), help="output folder (default data/)")
    p.add_argument("--dedupe", action="store_true", help="keep each DAPO prompt once (changes the step count!)")
    p.add_argument("--download", action="store_true",
                   help="fetch DAPO-Math-17k with `datasets` first (needs a network; compute nodes have none)")
    args = p.parse_args(argv)
    if args.download:
        from datasets import load_dataset  # lazily: only machines with a network get here

        path = args.out / "dapo-math-17k.parquet"
        load_dataset("BytedTsinghua-SIA/DAPO-Math-17k", split="train").to_parquet(str(path))
        args.dapo = path
    if not args.dapo and not any(getattr(args, n) for n in VAL_SETS):
        raise UserError("nothing to prepare: give --dapo and/or --aime24/--aime25/--amc23, --eval-from (or "
                        "--rehearsal)", "prepare-data")
    # Read and convert everything first: a bad input writes nothing.
    jobs: list[tuple[Path, list[dict[str, Any]], dict[str, Any]]] = []
    if args.dapo:
        rows, stats = convert_dapo(read_table(args.dapo, "--dapo"), args.dedupe)
        jobs.append((args.out / "dapo-math-17k.verl.parquet", rows, stats))
    for name in VAL_SETS:
        path = getattr(args, name)
        if path:
            # data_source as the authors' preprocess.py names the set: the reward grades these with Math-Verify.
            jobs.append((args.out / f"{name}.verl.parquet", convert_val(read_table(path, f"--{name}"),
                                                                       name.upper(), f"--{name}"), {}))
    for out, rows, stats in jobs:
        meta = write_parquet(rows, out, stats)
        extra = ""
        if "repeat_factor" in stats:
            extra = (f"; {stats['unique_prompts']} unique prompts, each {stats['repeat_factor']}x"
                     + (" (deduplicated)" if args.dedupe else " (kept as published)"))
        print(f"wrote {out}: {meta['rows']} rows, sha256 {meta['sha256'][:16]}{extra}")
    return 0
