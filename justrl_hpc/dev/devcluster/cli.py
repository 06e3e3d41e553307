"""`justrl-hpc devcluster up|down|status` (also `python -m justrl_hpc.dev.devcluster.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
import typing

from justrl_hpc.core.errors import UserError, cli_entry
from justrl_hpc.dev.devcluster.cluster import down, up
from justrl_hpc.dev.devcluster.layout import (
    DEFAULT_SCRATCH,
    NODES,
    SCRATCH_ENV,
    DevClusterError,
    resolve_scratch,
)
from justrl_hpc.dev.devcluster.status import ClusterStatus, status


def _print_status(st: ClusterStatus) -> None:
    print(
        f"devcluster: {'up' if st.up else 'not up'} (scratch {st.scratch}, partition {st.partition}, "
        f"conf {st.conf}{', /etc/slurm/slurm.conf points here' if st.etc_conf else ''})"
    )
    print(f"devcluster: jobs {st.confinement.line() if st.confinement else 'unknown (no slurm.conf yet)'}")
    print(f"devcluster: keeper {'pid ' + str(st.keeper) if st.keeper else 'not running'}")
    for d, pid in st.daemons.items():
        print(f"devcluster: {d} {'pid ' + str(pid) if pid else 'not running'}")
    for n in NODES:
        print(f"devcluster: node {n} {st.nodes.get(n, 'unknown')}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        # One `error:` line (house rule) instead of argparse's usage block.
        raise UserError(f"{message}; see `justrl-hpc devcluster --help`", "devcluster")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _Parser(
        prog="justrl-hpc devcluster",
        description="A real Slurm on this machine: munged, slurmctld and 4 slurmd as nodes n1..n4 (partition dev).",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--scratch",
        metavar="DIR",
        help=f"state, logs and slurm.conf (default ${SCRATCH_ENV} or {DEFAULT_SCRATCH})",
    )
    p.add_argument("--json", action="store_true", help="print the cluster's status as JSON on stdout")
    p.add_argument(
        "--timeout", type=float, default=60, metavar="SECONDS", help="how long `up` waits (default 60)"
    )
    args = p.parse_args(argv)
    if args.timeout <= 0:
        raise UserError(f"must be positive seconds, got {args.timeout}", "--timeout")
    scratch = resolve_scratch(args.scratch)
    try:
        if args.action == "up":
            st = up(scratch, timeout_s=args.timeout)
        elif args.action == "down":
            down(scratch)
            st = status(scratch)
        else:
            st = status(scratch)
            if not args.json:
                _print_status(st)
    except DevClusterError as exc:
        print(f"devcluster: failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st.to_dict(), indent=2))
    if args.action == "status":
        return 0 if st.up else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
