"""`justrl-monitor`: the dashboard, plus `daemon` (the alerting service) and `scan` (one cycle, JSON lines).

    justrl-monitor [RUN …]                                   the dashboard (monitor.tui)
    justrl-monitor daemon RUN [RUN …] [--interval S] [--config PATH] [--max-response-length N]
    justrl-monitor scan RUN [--config PATH] [--max-response-length N]

Imports stay inside the functions so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from justrl_hpc.errors import UserError, cli_entry

SUBCOMMANDS = ("daemon", "scan")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message)


def _parser(cmd: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=f"justrl-monitor {cmd}",
        description=(
            "Watch run folders and alert (log, RUN/alerts.jsonl, webhook, e-mail); never touches the job."
            if cmd == "daemon"
            else "One monitor cycle over everything new in RUN; prints each alert raised as a JSON line."
        ),
    )
    p.add_argument("runs", nargs="+" if cmd == "daemon" else 1, metavar="RUN", help="run folder(s)")
    p.add_argument("--config", type=Path, default=None, help="monitor rules (default configs/monitor.yaml)")
    p.add_argument(
        "--max-response-length",
        type=int,
        default=None,
        help="data.max_response_length when the folder has no run.yaml (for the truncation rule)",
    )
    if cmd == "daemon":
        p.add_argument("--interval", type=float, default=None, help="seconds between cycles (default 30)")
    return p


def _run_dirs(raw: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for r in raw:
        p = Path(r).expanduser().resolve()
        if not p.is_dir():
            raise UserError(f"{r}: no such folder", "RUN")
        if not any((p / n).exists() for n in ("tensorboard", "ledger.jsonl", "telemetry", "run.yaml")):
            raise UserError(
                f"{r}: not a run folder (no tensorboard/, ledger.jsonl, telemetry/ or run.yaml)", "RUN"
            )
        if p not in out:
            out.append(p)
    return out


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        from justrl_hpc.monitor.tui import run_tui

        return run_tui(argv)
    cmd, rest = argv[0], argv[1:]
    args = _parser(cmd).parse_args(rest)
    if args.max_response_length is not None and args.max_response_length <= 0:
        raise UserError(
            f"must be a positive number of tokens, got {args.max_response_length}", "--max-response-length"
        )
    runs = _run_dirs(args.runs)
    from justrl_hpc.monitor import daemon

    config = daemon.load_config(args.config, getattr(args, "interval", None))
    _setup_logging()
    if cmd == "scan":

        def emit(alert: daemon.BookAlert) -> None:
            sys.stdout.write(alert.to_json() + "\n")
            sys.stdout.flush()

        return daemon.scan(runs[0], config, emit, max_response_length=args.max_response_length)
    monitors = [daemon.RunMonitor(r, config, max_response_length=args.max_response_length) for r in runs]
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("justrl_hpc.monitor.daemon").info(
            "monitor: %s received, stopping after this cycle", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return daemon.run_daemon(monitors, config.daemon.interval_s, stop)


if __name__ == "__main__":
    sys.exit(main())
