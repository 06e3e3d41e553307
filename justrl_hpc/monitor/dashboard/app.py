"""`justrl-monitor [RUN …]`: the terminal dashboard of one or more runs (rich `Live`, refreshed every few s).

    justrl-monitor                       every run under ./runs/
    justrl-monitor RUN [RUN …]           runs by folder or by name under ./runs/; any folder verl wrote, or
                                         its console log file
    justrl-monitor --once RUN            print one frame and exit (scripts, tests, the README)
    python -m justrl_hpc.monitor.dashboard.app …    the same program

Keys: q quits; tab / arrows switch runs; r reloads now. It only reads the run folder, so it is safe to leave
open on a login node for the whole run. This module holds the command line and the loop: the data comes from
`snapshot.load_view`, the frame from `screen.render_screen` (which places the `panels`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from justrl_hpc.core import runs as run_finder
from justrl_hpc.core.errors import UserError, cli_entry
from justrl_hpc.monitor.dashboard import screen
from justrl_hpc.monitor.dashboard.snapshot import RunView, ViewCache, load_view

DEFAULT_INTERVAL_S = 5.0
MIN_INTERVAL_S = 0.5


class KeyReader:
    """Reads keys from the terminal in cbreak mode on a thread; the terminal's settings are restored on
    exit, whatever ends the dashboard."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.keys: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._saved: Any = None
        self._thread = threading.Thread(target=self._loop, name="keys", daemon=True)

    def __enter__(self) -> KeyReader:
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)  # ISIG stays on: ctrl-c still interrupts
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import termios

        self._stop.set()
        self._thread.join(timeout=1.0)
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 64)
            except OSError:
                return
            if not data:
                return
            for key in screen.parse_keys(data):
                self.keys.put(key)


def _raise_exit(signum: int, _frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Readers log corrupt lines as warnings; on a full-screen display they would tear the frame."""
    logger = logging.getLogger("justrl_hpc")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    before = logger.propagate
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = before


def _live(runs: list[tuple[Path, Path | None]], interval: float) -> int:
    from rich.live import Live

    wake: queue.Queue[str] = queue.Queue()
    cache = ViewCache(slurm_in_background=True, on_update=lambda: wake.put("reload"))
    console = Console()
    selected = 0
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    signal.signal(signal.SIGTERM, _raise_exit)
    with contextlib.suppress(AttributeError, ValueError):  # SIGWINCH: redraw at the new size at once
        # only a flag: a handler that took the queue's lock could deadlock the thread it interrupts
        signal.signal(signal.SIGWINCH, lambda *_: _RESIZED.append(True))
    keys = KeyReader(fd) if fd is not None else contextlib.nullcontext()
    with _quiet_logs(), Live(console=console, screen=True, auto_refresh=False) as live, keys as reader:
        source = reader.keys if isinstance(reader, KeyReader) else wake
        views: list[RunView] = []
        next_load = 0.0
        while True:
            if time.monotonic() >= next_load:
                views = [load_view(r, cache, console_log=log_file) for r, log_file in runs]
                next_load = time.monotonic() + interval
            width, height = console.size
            live.update(screen.render_screen(views, selected, width, height, interval), refresh=True)
            key = _next_key(source, wake, next_load)
            if key == "quit":
                return 0
            if key == "reload":
                next_load = 0.0
            selected = screen.select_run(selected, key, len(runs))


_RESIZED: list[bool] = []  # SIGWINCH arrived since the last frame


def _next_key(source: queue.Queue[str], wake: queue.Queue[str], until: float) -> str | None:
    """The next key (or resize, or Slurm's answer) before `until` (monotonic), else None."""
    while True:
        if _RESIZED:
            _RESIZED.clear()
            return "resize"
        with contextlib.suppress(queue.Empty):
            return wake.get_nowait()
        left = until - time.monotonic()
        if left <= 0:
            return None
        try:
            return source.get(timeout=min(left, 0.25))
        except queue.Empty:
            continue


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see `justrl-monitor --help`", "justrl-monitor")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(
        prog="justrl-monitor",
        description="The terminal dashboard of one or more runs; it only reads the run folders.",
        epilog=(
            "keys: q quits · tab / arrows switch runs · r reloads now\n\n"
            "also: justrl-monitor daemon RUN [RUN …]   the alerting service (never touches the job)\n"
            "      justrl-monitor scan RUN             one pass over what is new; alerts as JSON lines"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folder or name under ./runs/, a folder verl wrote, or a console log (default: all runs)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between reads (default {DEFAULT_INTERVAL_S:g})",
    )
    return p.parse_args(list(argv) if argv is not None else None)


def resolve_runs(names: Sequence[str], root: Path = run_finder.DEFAULT_ROOT) -> list[tuple[Path, Path | None]]:
    """(folder, console log or None) of each RUN named: a suite run folder (or its name under `root`), any
    folder verl wrote (sources.locate finds its metrics), or a console log file; or every run under `root`."""
    from justrl_hpc.monitor.sources.locate import locate, split_run_arg

    if not names:
        found = run_finder.find_runs(root, need="ledger")
        if not found:
            raise UserError(f"no run folders under {root.resolve()}; pass a run folder", "RUN")
        return [(p, None) for p in found]
    out = []
    for name in names:
        path = Path(name).expanduser()
        if path.exists() and not run_finder.is_run(split_run_arg(path)[0], "ledger"):
            folder, log_file = split_run_arg(path.resolve())
            if locate(folder, log_file) is None:
                raise UserError(
                    f"{name}: no run here (no run.yaml or ledger.jsonl, no TensorBoard events, verl's "
                    "tensorboard_log/ or a verl console log)", "RUN")
            out.append((folder, log_file))
        else:
            out.append((run_finder.find_run(name, "RUN", need="ledger", root=root), None))
    return out


@cli_entry
def run_tui(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.interval >= MIN_INTERVAL_S):
        raise UserError(f"must be at least {MIN_INTERVAL_S:g} seconds, got {args.interval:g}", "--interval")
    runs = resolve_runs(args.runs)
    if args.once:
        console = Console()
        cache = ViewCache()
        with _quiet_logs():
            views = [load_view(r, cache, console_log=log_file) for r, log_file in runs]
        width, height = console.size
        for i in range(len(views)):
            console.print(screen.render_screen(views, i, width, height))
        return 0
    try:
        return _live(runs, args.interval)
    except KeyboardInterrupt:
        return 0  # ctrl-c is a normal way to leave a dashboard


if __name__ == "__main__":
    sys.exit(run_tui())
