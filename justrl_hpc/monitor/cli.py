"""`justrl-monitor`: the dashboard, plus `daemon` (the alerting service) and `scan` (one cycle, JSON lines).

    justrl-monitor [RUN …]                                   the dashboard (monitor.dashboard)
    justrl-monitor daemon RUN [RUN …] [--interval S] [--config PATH] [--max-response-length N] [--console-log F]
                          [--until-ended]
    justrl-monitor scan RUN [--config PATH] [--max-response-length N] [--console-log FILE]

RUN is a suite run folder, any folder of verl's output (sources.locate says where its metrics are) or a
console log file.

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

from justrl_hpc.core.errors import UserError, cli_entry
from justrl_hpc.core.runs import is_run

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
    p.add_argument("runs", nargs="+" if cmd == "daemon" else 1, metavar="RUN", help="run folder(s), verl output folder(s) or a console log")
    p.add_argument("--config", type=Path, default=None, help="monitor rules (default monitor/rules.yaml)")
    p.add_argument(
        "--max-response-length",
        type=int,
        default=None,
        help="data.max_response_length when the folder has no run.yaml (for the truncation rule)",
    )
    p.add_argument(
        "--console-log",
        type=Path,
        default=None,
        help="read verl's metrics from this console log (a run whose TensorBoard folder is elsewhere)",
    )
    if cmd == "daemon":
        p.add_argument("--interval", type=float, default=None, help="seconds between cycles (default 30)")
        p.add_argument(
            "--until-ended",
            action="store_true",
            help="stop once every RUN has finished or failed (after a last cycle); exit status 0",
        )
    return p


def _run_dirs(raw: Sequence[str], console_log: Path | None = None) -> list[tuple[Path, Path | None]]:
    """(folder, console log or None) per RUN: a suite run folder, any folder of verl's output, or a console
    log file (its folder holds the monitor's state)."""
    from justrl_hpc.monitor.sources.locate import locate, split_run_arg

    if console_log is not None:
        if len(raw) != 1:
            raise UserError("names the console log of one RUN; give one RUN with it", "--console-log")
        if not console_log.is_file():
            raise UserError(f"{console_log}: no such file", "--console-log")
    out: list[tuple[Path, Path | None]] = []
    for r in raw:
        p = Path(r).expanduser().resolve()
        if not p.exists():
            raise UserError(f"{r}: no such folder or file", "RUN")
        folder, log_file = split_run_arg(p)
        log_file = console_log.resolve() if console_log is not None else log_file
        if not is_run(folder, "any") and locate(folder, log_file) is None:
            raise UserError(
                f"{r}: no run here (no run.yaml, ledger.jsonl, telemetry/, TensorBoard events, verl's "
                "tensorboard_log/ or a verl console log); pass the folder verl wrote, or --console-log FILE",
                "RUN",
            )
        if all(folder != f for f, _ in out):
            out.append((folder, log_file))
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
        from justrl_hpc.monitor.dashboard.app import run_tui

        return run_tui(argv)
    cmd, rest = argv[0], argv[1:]
    args = _parser(cmd).parse_args(rest)
    if args.max_response_length is not None and args.max_response_length <= 0:
        raise UserError(
            f"must be a positive number of tokens, got {args.max_response_length}", "--max-response-length"
        )
    runs = _run_dirs(args.runs, args.console_log)
    from justrl_hpc.monitor import settings as monitor_settings
    from justrl_hpc.monitor.daemon.cycle import RunMonitor
    from justrl_hpc.monitor.daemon.service import run_daemon, scan
    from justrl_hpc.monitor.daemon.store import BookAlert

    config = monitor_settings.load(args.config, getattr(args, "interval", None))
    _setup_logging()
    if cmd == "scan":

        def emit(alert: BookAlert) -> None:
            sys.stdout.write(alert.to_json() + "\n")
            sys.stdout.flush()

        folder, log_file = runs[0]
        return scan(folder, config, emit, max_response_length=args.max_response_length, console_log=log_file)
    monitors = [
        RunMonitor(folder, config, max_response_length=args.max_response_length, console_log=log_file)
        for folder, log_file in runs
    ]
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("justrl_hpc.monitor.daemon.service").info(
            "monitor: %s received, stopping after this cycle", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run_daemon(monitors, config.daemon.interval_s, stop, until_ended=args.until_ended)


if __name__ == "__main__":
    sys.exit(main())
