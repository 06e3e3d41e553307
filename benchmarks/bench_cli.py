"""Wall time of `launch --help` and `launch --dry-run` (the promise: < 1.5 s each), median of N runs.

    .venv/bin/python benchmarks/bench_cli.py [--runs 5]
Prints a Markdown table; benchmarks/run_all.sh appends it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "launch --help": ["-m", "justrl_hpc.launch", "--help"],
    "launch --nodes 4 --dry-run": ["-m", "justrl_hpc.launch", "--nodes", "4", "--dry-run"],
    "launch --nodes 4 --dry-run --json": ["-m", "justrl_hpc.launch", "--nodes", "4", "--dry-run", "--json"],
    "justrl-hpc --help": ["-m", "justrl_hpc.cli", "--help"],
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for name, argv in CASES.items():
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, *argv],
                    cwd=cwd,
                    capture_output=True,
                    check=False,
                    env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                )
                times.append(time.perf_counter() - t0)
            rows.append((name, statistics.median(times), max(times)))
    print("| command | median s | max s | target |")
    print("|---|---|---|---|")
    for name, med, mx in rows:
        verdict = "met" if med < 1.5 else "MISSED"
        print(f"| `{name}` | {med:.2f} | {mx:.2f} | < 1.5 s: {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
