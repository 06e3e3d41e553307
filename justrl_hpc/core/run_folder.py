"""One run = one folder: created once, locked while launching, with its config and a snapshot of the code."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from justrl_hpc.core.config import PACKAGE_ROOT, Resolved
from justrl_hpc.core.errors import UserError
from justrl_hpc.core.paths import RunPaths


@dataclass(frozen=True)
class EntryPoints:
    """How a run's own code snapshot is entered, recorded in run.yaml when the run is created: the nodes run
    that snapshot, so a run keeps these names even after the suite's code moves (as on 2026-12-02)."""

    submitit: str  # module:Class, built on the node as Class(run_dir) (submission.RecordedEntry)
    srun: str  # module run as `python -m MODULE RUN_DIR` by sbatch/train.sbatch
    setup: str  # module:function(resolved, run_dir) -> the job's setup lines
    load: str  # module:function(run_dir) -> the run's Resolved config


TRAIN_ENTRY = EntryPoints(
    submitit="justrl_hpc.jobs.train.entry:TrainChunk",
    srun="justrl_hpc.jobs.train.entry",
    setup="justrl_hpc.jobs.train.submission:setup_lines",
    load="justrl_hpc.core.run_folder:load",
)
# Runs created before the layout of 2026-12-02 record no entry; their snapshot has the flat package.
# sbatch/train.sbatch repeats these four names (it runs under the old snapshot); tests/cluster/test_sbatch.py keeps them equal.
LEGACY_ENTRY = EntryPoints(
    submitit="justrl_hpc.chunk:TrainChunk",
    srun="justrl_hpc.chunk",
    setup="justrl_hpc.submission:setup_lines",
    load="justrl_hpc.rundir:load",
)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def launch_lock(run_dir: Path) -> Iterator[None]:
    """Held while a launch creates or resubmits the run, so two launches cannot both write it."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir.parent / f".{run_dir.name}.launch.lock"
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another launch of {run_dir.name} is running right now", "run") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load(run_dir: Path) -> Resolved:
    path = RunPaths(run_dir).run_yaml
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no run.yaml)", "RUN")
    data = yaml.safe_load(path.read_text())
    return Resolved.from_dict(data)


def entry_points(run_dir: Path) -> EntryPoints:
    data = yaml.safe_load(RunPaths(run_dir).run_yaml.read_text()) or {}
    recorded = data.get("entry")
    if not recorded:
        return LEGACY_ENTRY
    try:
        return EntryPoints(**recorded)
    except TypeError:
        raise UserError(f"run.yaml's entry is not one this suite knows: {recorded!r}", "entry") from None


def stored_fingerprint(run_dir: Path) -> str | None:
    data = yaml.safe_load(RunPaths(run_dir).run_yaml.read_text()) or {}
    return data.get("recipe_fingerprint")


def snapshot_code(dest: Path) -> None:
    """Copy the package the chunks will import: edits to a checkout never leak into a 15-day run."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(PACKAGE_ROOT, tmp / "justrl_hpc", ignore=ignore)
    checkout = PACKAGE_ROOT.parent
    for extra in ("configs", "jobs"):
        if (checkout / extra).is_dir():
            shutil.copytree(checkout / extra, tmp / extra, ignore=ignore)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def create(resolved: Resolved, run_dir: Path, plan: dict[str, Any] | None = None) -> None:
    """Make the run folder. Refuses an existing one: that is what --resume is for."""
    paths = RunPaths(run_dir)
    if paths.run_yaml.exists():
        raise UserError(
            f"{run_dir} already holds a run; resubmit it with `python -m justrl_hpc.launch --resume {run_dir}`",
            "run",
        )
    for sub in paths.subdirs():
        sub.mkdir(parents=True, exist_ok=True)
    snapshot_code(paths.code)
    data = resolved.to_dict()
    data["entry"] = asdict(TRAIN_ENTRY)
    if plan is not None:
        data["plan"] = {k: plan[k] for k in ("resources", "plan", "verl_overrides") if k in plan}
    atomic_write(paths.run_yaml, yaml.safe_dump(data, sort_keys=False, width=120))
