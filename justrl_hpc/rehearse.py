"""`justrl-hpc rehearse`: the whole lifecycle on this machine, on the built-in defaults.

Starts the dev cluster (a real Slurm, 4 fake nodes), prepares the rehearsal's toy data and tiny base model,
and launches the rehearsal recipe on 2 nodes with short chunks, following it until it finishes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from justrl_hpc.errors import UserError


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="justrl-hpc rehearse", description=__doc__.splitlines()[0])
    p.add_argument("--name", help="run name (default rehearsal-<date>-<time>: a fresh run each time)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument(
        "--time-limit", type=int, default=2, metavar="MINUTES", help="wall clock per chunk (default 2)"
    )
    p.add_argument("--data", default="data/rehearsal", help="where the toy data and base model go")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.nodes > 4:
        raise UserError(f"the dev cluster has 4 nodes; got {args.nodes}", "--nodes")

    from justrl_hpc import devcluster

    devcluster.up()
    data = Path(args.data)
    if not (data / "model" / "config.json").is_file() or not (data / "train.parquet").is_file():
        from justrl_hpc.rehearsal.prepare import prepare

        info = prepare(data)
        print(f"prepared {data}: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    name = args.name or time.strftime("rehearsal-%Y%m%d-%H%M%S")
    from justrl_hpc import launch

    launch_args = [
        "--recipe",
        "rehearsal",
        "--cluster",
        "dev",
        "--nodes",
        str(args.nodes),
        "--name",
        name,
        "--time-limit",
        str(args.time_limit),
        "--set",
        f"recipe.model_path={(data / 'model').resolve()}",
        "--set",
        f"recipe.train_files=[{(data / 'train.parquet').resolve()}]",
        "--set",
        f"recipe.val_files=[{(data / 'val.parquet').resolve()}]",
    ]
    for s in args.sets:
        launch_args += ["--set", s]
    if not args.no_wait:
        launch_args.append("--wait")
    return launch.main(launch_args)
