"""The one way a command finds a run folder from what a user typed: a path, or a name under runs/."""

from __future__ import annotations

from pathlib import Path

from justrl_hpc.core.errors import UserError
from justrl_hpc.core.paths import LEDGER, RUN_YAML

DEFAULT_ROOT = Path("runs")
# What marks a folder as a run, by how much of one a command needs: a launch or an evaluation needs the
# config; report and the dashboard read the ledger; the monitor can watch a folder of verl's own output.
NEEDS: dict[str, tuple[str, ...]] = {
    "config": (RUN_YAML,),
    "ledger": (RUN_YAML, LEDGER),
    "any": (RUN_YAML, LEDGER, "tensorboard", "telemetry"),
}


def is_run(path: Path, need: str = "ledger") -> bool:
    return any((path / name).exists() for name in NEEDS[need])


def find_run(name_or_path: str, flag: str = "RUN", need: str = "config", root: Path = DEFAULT_ROOT) -> Path:
    """The run folder `name_or_path` names (itself, or root/name), resolved; a UserError naming `flag`."""
    path = Path(name_or_path).expanduser()
    for candidate in (path, root / name_or_path):
        if candidate.is_dir() and is_run(candidate, need):
            return candidate.resolve()
    looked = " or ".join(NEEDS[need])
    raise UserError(f"no run folder {name_or_path!r} (looked for {looked} there and under {root}/)", flag)


def find_runs(root: Path = DEFAULT_ROOT, need: str = "ledger") -> list[Path]:
    """Run folders directly under `root`, by name."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_run(p, need))
