"""The monitor's settings: one file (monitor/rules.yaml in the checkout, or `--config FILE`), one loader.

Sections: `training:` and `progress:` (the rules over verl's metrics and the ledger), `gpu:` (the rules over
the node agents' telemetry, host rules included), `daemon:` (the service's cycle, cool-down, lease). Each
section's dataclass lives next to the code it tunes; this module only reads the file and builds them with
the suite's one validator, so every bad value is one `error:` line naming the section and field.

`python -m justrl_hpc.monitor.settings FILE` checks a file and prints what it resolves to.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from justrl_hpc.core.config import PACKAGE_ROOT
from justrl_hpc.core.errors import UserError, cli_entry
from justrl_hpc.core.settings import build, read_yaml, setting
from justrl_hpc.monitor.rules.gpu_settings import GpuRuleSettings
from justrl_hpc.monitor.rules.progress import ProgressSettings
from justrl_hpc.monitor.rules.training import TrainRuleSettings

DEFAULT_RULES = PACKAGE_ROOT.parent / "monitor" / "rules.yaml"


@dataclass
class DaemonSettings:
    """The `daemon:` section."""

    interval_s: float = setting(30.0, lo=0.1)  # one cycle this often
    cooldown_s: float = setting(300.0, lo=0)  # a finding must be gone this long before its alert resolves
    refire_s: float = setting(3600.0, lo=0)  # a finding still holding is sent again this often
    heartbeat: bool = True  # write RUN/monitor.heartbeat every cycle
    slurm_every_s: float = setting(30.0, lo=0)  # ask scontrol about the newest job at most this often
    lease_s: float = setting(300.0, lo=0)  # a lease renewed by another host this recently blocks leadership
    warm_bytes_per_host: int = setting(32 << 20, lo=0)  # how far back a restart re-reads telemetry


SECTIONS: dict[str, type] = {
    "training": TrainRuleSettings,
    "progress": ProgressSettings,
    "gpu": GpuRuleSettings,
    "daemon": DaemonSettings,
}


@dataclass
class MonitorSettings:
    training: TrainRuleSettings = field(default_factory=TrainRuleSettings)
    progress: ProgressSettings = field(default_factory=ProgressSettings)
    gpu: GpuRuleSettings = field(default_factory=GpuRuleSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    path: Path | None = None  # the file they came from (None: the built-in defaults)


def load(path: str | Path | None = None, interval_s: float | None = None) -> MonitorSettings:
    """The rules file (default: monitor/rules.yaml, or the built-in defaults if the checkout has none)."""
    explicit = path is not None
    file = Path(path) if path is not None else DEFAULT_RULES
    data: dict[str, Any] = {}
    if file.is_file():
        data = read_yaml(file, str(file))
    elif explicit:
        raise UserError(f"no such file: {file}", "--config")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise UserError(f"unknown section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}", str(file))
    try:
        built = {name: build(cls, data.get(name), name) for name, cls in SECTIONS.items()}
    except UserError as exc:
        # The field is the message's subject; a file given on the command line is worth naming too.
        if not explicit:
            raise
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise UserError(f"{message} (in {file})", exc.field) from None
    settings = MonitorSettings(**built, path=file if file.is_file() else None)
    if interval_s is not None:
        if not (interval_s >= 0.1):
            raise UserError(f"must be at least 0.1 seconds, got {interval_s:g}", "--interval")
        settings.daemon.interval_s = interval_s
    return settings


@cli_entry
def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m justrl_hpc.monitor.settings",
        description="Check a monitor rules file and print the settings it resolves to.",
    )
    parser.add_argument("config", nargs="?", help=f"the rules file (default {DEFAULT_RULES})")
    args = parser.parse_args(argv)
    settings = load(args.config)
    print(json.dumps({k: asdict(getattr(settings, k)) for k in SECTIONS}, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
