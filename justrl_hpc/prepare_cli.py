"""`justrl-hpc prepare-data`: the JustRL data (DAPO-Math-17k + validation sets), or the rehearsal's toy set."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str]) -> int:
    if "--rehearsal" in argv:
        p = argparse.ArgumentParser(
            prog="justrl-hpc prepare-data --rehearsal",
            description="Write the rehearsal's toy task parquets and tiny base model.",
        )
        p.add_argument("--rehearsal", action="store_true", required=True)
        p.add_argument("--out", default="data/rehearsal", help="output folder (default data/rehearsal)")
        p.add_argument("--seed", type=int, default=0)
        args = p.parse_args(argv)
        from justrl_hpc.rehearsal.prepare import prepare

        info = prepare(Path(args.out), seed=args.seed)
        print(
            f"rehearsal data and base model written to {args.out}: "
            + ", ".join(f"{k}={v}" for k, v in info.items())
        )
        return 0
    from justrl_hpc import prepare_data

    return prepare_data.main(argv)
