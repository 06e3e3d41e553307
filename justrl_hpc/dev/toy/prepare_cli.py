"""`justrl-hpc prepare-data --rehearsal`: the rehearsal's toy task parquets and tiny base model (the real data is
justrl_hpc/jobs/prepare_data/job.py; the verb table in cli.py picks this module for the flag)."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="justrl-hpc prepare-data --rehearsal",
        description="Write the rehearsal's toy task parquets and tiny base model.",
    )
    p.add_argument("--rehearsal", action="store_true", required=True)
    p.add_argument("--out", default="data/rehearsal", help="output folder (default data/rehearsal)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from justrl_hpc.dev.toy.prepare import prepare

    info = prepare(Path(args.out), seed=args.seed)
    print(f"rehearsal data and base model written to {args.out}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return 0
