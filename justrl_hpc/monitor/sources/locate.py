"""Where a folder's training metrics are: the one answer the daemon, `scan` and the dashboard share.

The monitor watches runs this suite launched and runs it did not: a folder verl wrote by hand
(`trainer.logger=[console,tensorboard]` puts events under `tensorboard_log/<project>/<experiment>/`, or wherever
TENSORBOARD_DIR says), verl's event folder itself, or only a console log. In order:

  1. a console log named explicitly (`--console-log FILE`, or a file given as RUN)
  2. RUN/tensorboard/         the suite's run folder (verl's TENSORBOARD_DIR), even before its first event;
                              in a folder the suite did not make, only with event files directly in it
  3. RUN itself               event files directly in it (verl's experiment folder)
  4. RUN/tensorboard_log/*/*  verl's default, the experiment folder with the newest event file
  5. a console log in RUN     logs/trainer.log (the suite's), else the newest *.log / *.out / *.txt whose first
                              megabyte holds a verl step line
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from justrl_hpc.core.paths import RunPaths
from justrl_hpc.monitor.sources.console_log import looks_like_console_log
from justrl_hpc.monitor.sources.tensorboard import is_event_file

LOG_SUFFIXES = (".log", ".out", ".txt")


@dataclass(frozen=True)
class MetricsSource:
    kind: str  # "tensorboard" (an event folder) or "console" (a console log file)
    path: Path
    how: str  # for people: where it was found

    @property
    def label(self) -> str:
        return f"{'TensorBoard events' if self.kind == 'tensorboard' else 'console log'} {self.path} ({self.how})"

    def short(self, run_dir: Path) -> str:
        """For a narrow screen: the kind and the path inside the run folder."""
        try:
            where = str(self.path.relative_to(run_dir)) or "."
        except ValueError:
            where = str(self.path)
        return f"{'TensorBoard' if self.kind == 'tensorboard' else 'console log'} {where}"


def _has_events(folder: Path) -> float | None:
    """The newest mtime of an event file directly in `folder`, or None."""
    try:
        times = [p.stat().st_mtime for p in folder.iterdir() if is_event_file(p.name) and p.is_file()]
    except OSError:
        return None
    return max(times) if times else None


def locate(run_dir: Path, console_log: Path | None = None) -> MetricsSource | None:
    run_dir = Path(run_dir)
    if console_log is not None:
        return MetricsSource("console", Path(console_log), "named")
    paths = RunPaths(run_dir)
    suite_run = paths.run_yaml.is_file() or paths.ledger.is_file()
    # A bare folder's tensorboard/ may hold only the monitor's own scalars (tensorboard/monitor/): not verl's.
    if paths.tensorboard.is_dir() and (suite_run or _has_events(paths.tensorboard) is not None):
        return MetricsSource("tensorboard", paths.tensorboard, "the run folder's tensorboard/")
    if _has_events(run_dir) is not None:
        return MetricsSource("tensorboard", run_dir, "event files in the folder")
    experiments = [(t, d) for d in sorted(run_dir.glob("tensorboard_log/*/*")) if (t := _has_events(d)) is not None]
    if experiments:
        _, newest = max(experiments)
        more = f"; {len(experiments) - 1} other experiment(s) there" if len(experiments) > 1 else ""
        return MetricsSource("tensorboard", newest, f"verl's tensorboard_log/<project>/<experiment>{more}")
    if paths.trainer_log.is_file():
        return MetricsSource("console", paths.trainer_log, "the run folder's trainer log")
    try:
        logs = [p for p in run_dir.iterdir() if p.suffix in LOG_SUFFIXES and p.is_file()]
    except OSError:
        logs = []
    for path in sorted(logs, key=lambda p: p.stat().st_mtime, reverse=True):
        if looks_like_console_log(path):
            return MetricsSource("console", path, "a verl console log in the folder")
    return None


def split_run_arg(arg: Path) -> tuple[Path, Path | None]:
    """(run folder, console log) of what a user typed: a file is a console log, its folder the run's."""
    if arg.is_file():
        return arg.parent, arg
    return arg, None
