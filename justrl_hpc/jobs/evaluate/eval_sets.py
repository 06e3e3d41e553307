"""`justrl-hpc prepare-data --eval-from PATH`: the authors' nine evaluation sets, copied where the evaluate job
reads them, with each file's sha256 and row count.

thunlp/JustRL ships the sets as `data/<NAME>/test.parquet`; a hub copy of a set can differ from theirs (other
rows, other answers), so the published table is only comparable on their files. PATH is a checkout of the
repository or its `data/` folder. Folder names are matched loosely (case, `-`, `_`, a year written out:
`MATH-500`, `math500`, `AIME2024`, `OlympiadBench`, `minerva_math`), since the names are theirs to change.
Each file is copied byte for byte to `<out>/<key>.parquet`, after the evaluate job's own loader has read every
row and the row count matches the protocol's; `<out>/sources.json` records where each came from. A set with the
wrong count, a file the loader cannot read, or none of the nine found: one error, nothing written.
It lives with the evaluation (whose loader and protocol it checks against); `justrl-hpc prepare-data
--eval-from` reaches it through the CLI's flagged verbs (justrl_hpc/cli.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from justrl_hpc.core.errors import UserError, cli_entry
from justrl_hpc.jobs.evaluate import benchmarks as bm

FIELD = "--eval-from"
SOURCES = "sources.json"
GRADER = Path("evals") / "grade.py"  # where the authors keep the judge's prompt (CV_PROMPT)
# Loose folder names → the benchmark key (after lower-casing and dropping everything but letters and digits).
ALIASES: dict[str, str] = {
    **{b.key: b.key for b in bm.BENCHMARKS},
    "aime2024": "aime24", "aime2025": "aime25", "amc2023": "amc23", "math": "math500", "minervamath": "minerva",
    "olympiad": "olympiadbench", "hmmt2025": "hmmt25", "hmmtfeb2025": "hmmt25", "hmmtfeb25": "hmmt25",
    "brumo2025": "brumo25", "cmimc2025": "cmimc25",
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def data_folder(path: Path) -> Path:
    if not path.is_dir():
        raise UserError(f"no such folder {path}: give a checkout of thunlp/JustRL or its data/ folder", FIELD)
    return path / "data" if (path / "data").is_dir() else path


def find(path: Path) -> tuple[dict[str, Path], list[str]]:
    """Benchmark key → its test.parquet, and the folders that name no benchmark (reported, not read)."""
    found: dict[str, Path] = {}
    other: list[str] = []
    for sub in sorted(p for p in data_folder(path).iterdir() if p.is_dir()):
        key = ALIASES.get(_norm(sub.name))
        test = sub / "test.parquet"
        if key is None or not test.is_file():
            other.append(sub.name)
        elif key in found:
            raise UserError(f"{found[key].parent.name} and {sub.name} in {data_folder(path)} are both "
                            f"{bm.BY_KEY[key].label}: keep one", FIELD)
        else:
            found[key] = test
    return found, other


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check(key: str, path: Path) -> dict[str, Any]:
    """Every row read by the evaluate job's own loader, and the protocol's row count; the record for it."""
    bench = bm.BY_KEY[key]
    problems = bm.load_file(path, bench, field=FIELD)
    if len(problems) != bench.size:
        raise UserError(f"{path} holds {len(problems)} problems; the protocol's {bench.label} has {bench.size} "
                        "(is it the authors' file?)", FIELD)
    return {"from": str(path.resolve()), "rows": len(problems), "sha256": sha256(path)}


def judge_prompt(path: Path) -> tuple[Path, str] | None:
    """The judge's prompt from the checkout's evals/grade.py (read, not run), if PATH is a checkout that has it."""
    from justrl_hpc.jobs.evaluate.judge import prompt_from_python

    for root in (path, path.parent):
        grader = root / GRADER
        if grader.is_file():
            return grader, prompt_from_python(grader.read_text(), str(grader), FIELD)
    return None


def prepare(path: Path, out: Path, found: dict[str, Path] | None = None) -> dict[str, dict[str, Any]]:
    """Check everything first, then copy; returns the sources record that was written (`found`: find()'s)."""
    from justrl_hpc.jobs.evaluate.judge import PROMPT_FILE

    found = found if found is not None else find(path)[0]
    if not found:
        raise UserError(f"none of the nine sets in {data_folder(path)} (looked for <NAME>/test.parquet, NAME one "
                        f"of {', '.join(b.label for b in bm.BENCHMARKS)})", FIELD)
    record = {key: check(key, test) for key, test in sorted(found.items())}
    prompt = judge_prompt(path)
    out.mkdir(parents=True, exist_ok=True)
    if prompt is not None:
        grader, text = prompt
        tmp = out / f".{PROMPT_FILE}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / PROMPT_FILE)
        record["judge_prompt"] = {"from": str(grader.resolve()), "variable": "CV_PROMPT",
                                  "sha256": hashlib.sha256(text.encode()).hexdigest()}
    for key, test in found.items():
        tmp = out / f".{key}.parquet.tmp"
        shutil.copyfile(test, tmp)
        os.replace(tmp, out / f"{key}.parquet")
    sources_path = out / SOURCES
    old = json.loads(sources_path.read_text()) if sources_path.is_file() else {}
    tmp = out / f".{SOURCES}.tmp"
    tmp.write_text(json.dumps({**old, **record}, indent=1) + "\n")
    os.replace(tmp, sources_path)
    return record


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="justrl-hpc prepare-data --eval-from",
                                description="the authors' nine evaluation sets, where the evaluate job reads them")
    p.add_argument("--eval-from", type=Path, required=True, metavar="PATH",
                   help="a checkout of thunlp/JustRL, or its data/ folder")
    p.add_argument("--eval-out", type=Path, default=Path("data/eval"),
                   help="where the evaluate job reads the sets (default data/eval, jobs/evaluate.yaml's data)")
    args, rest = p.parse_known_args(argv)
    if rest:
        raise UserError(f"prepares the evaluation sets alone, not {' '.join(rest)} (a bad file there must not "
                        "leave the training data half written): run prepare-data once for each", FIELD)
    found, other = find(args.eval_from)
    record = prepare(args.eval_from, args.eval_out, found)
    prompt = record.pop("judge_prompt", None)
    for key, r in record.items():
        print(f"wrote {args.eval_out / (key + '.parquet')}: {r['rows']} rows, sha256 {r['sha256'][:16]} "
              f"(from {r['from']})")
    if prompt:
        print(f"wrote {args.eval_out / 'judge_prompt.txt'}: the judge's prompt, sha256 {prompt['sha256'][:16]} "
              f"(CV_PROMPT of {prompt['from']})")
    else:
        print(f"no {GRADER} beside {data_folder(args.eval_from)}: the judge's prompt was not taken (give the "
              "evaluate job --judge-prompt FILE, or --judge none)")
    missing = [k for k in bm.BY_KEY if k not in found]
    if missing:
        print(f"not in {data_folder(args.eval_from)}: {', '.join(missing)}")
    if other:
        print(f"left out (no benchmark of the protocol, or no test.parquet): {', '.join(other)}")
    return 0
