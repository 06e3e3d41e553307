"""Runs created before the layout of 2026-12-02 keep resuming: the nodes build the chunk from the run's own
code snapshot by the entry point the run records (none recorded: the flat layout's names).

tests/data/layout-2026-12-01.tar.gz is the package as it stood before the move (`git archive f571d9e
justrl_hpc configs jobs`): the code such a run folder carries in its code/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from justrl_hpc.core.run_folder import LEGACY_ENTRY, TRAIN_ENTRY, entry_points

REPO = Path(__file__).resolve().parents[2]
OLD_CODE = REPO / "tests" / "data" / "layout-2026-12-01.tar.gz"


@pytest.fixture(scope="module")
def old_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("old-layout")
    with tarfile.open(OLD_CODE) as tar:
        tar.extractall(out, filter="data")
    checkout = out / "checkout"
    assert (checkout / "justrl_hpc" / "chunk.py").is_file() and not (checkout / "justrl_hpc" / "jobs").exists()
    return checkout


def _unpickled_on_a_node(pickle_path: Path, code: Path) -> dict[str, str]:
    """What submitit's node-side loader builds from the pickle, with `code` first on the path (as a chunk has)."""
    probe = (
        "import inspect, json, sys\n"
        "from submitit.core.utils import DelayedSubmission\n"
        "fn = DelayedSubmission.load(sys.argv[1]).function\n"
        "print(json.dumps({'cls': type(fn).__module__ + ':' + type(fn).__qualname__,"
        " 'file': inspect.getfile(type(fn)), 'run_dir': fn.run_dir,"
        " 'checkpointable': hasattr(fn, 'checkpoint')}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run([sys.executable, "-c", probe, str(pickle_path)], capture_output=True, text=True,
                         env=env, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", ["old", "new"])
def test_the_submitted_pickle_names_the_recorded_entry_and_nothing_of_the_launcher(
    layout: str, old_checkout: Path, tmp_path: Path
) -> None:
    from submitit.core.utils import DelayedSubmission

    from justrl_hpc.jobs.train.submission import RecordedEntry

    entry, code = (LEGACY_ENTRY, old_checkout) if layout == "old" else (TRAIN_ENTRY, REPO)
    run_dir = tmp_path / "run"
    pkl = tmp_path / "submitted.pkl"
    DelayedSubmission(RecordedEntry(entry.submitit, run_dir)).dump(pkl)
    assert b"justrl_hpc.jobs.train.submission" not in pkl.read_bytes()  # the launcher's own module is not needed
    got = _unpickled_on_a_node(pkl, code)
    assert got["cls"] == entry.submitit and got["run_dir"] == str(run_dir) and got["checkpointable"]
    assert Path(got["file"]).is_relative_to(code / "justrl_hpc")


def test_a_run_folder_records_its_entry_points_and_an_old_one_reads_as_the_flat_layout(tmp_path: Path) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    for d in (new, old):
        d.mkdir()
    (new / "run.yaml").write_text(yaml.safe_dump({"entry": asdict(TRAIN_ENTRY)}))
    (old / "run.yaml").write_text(yaml.safe_dump({"recipe": {"name": "x"}}))
    assert entry_points(new) == TRAIN_ENTRY and entry_points(old) == LEGACY_ENTRY


@pytest.mark.slurm
@pytest.mark.verl
@pytest.mark.slow
@pytest.mark.long  # a one-chunk rehearsal (~1.5 minutes): in the fault suite, to keep the test command short
def test_a_run_made_by_the_old_layout_resumes_under_the_new_launcher(
    devcluster, rehearsal_data: Path, old_checkout: Path, tmp_path: Path
) -> None:
    """The old code creates the run folder (its snapshot, a run.yaml without entry points); the new
    launcher resubmits it; verl trains it to its target on the dev cluster from the old snapshot."""
    from helpers import events, launch_args

    run_dir = tmp_path / "old-run"
    create = launch_args(rehearsal_data, run_dir, "--create-only", steps=2, time_limit=5)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLURM_JOB_ID")}
    made = subprocess.run(create, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=dict(env, PYTHONPATH=str(old_checkout)))
    assert made.returncode == 0, made.stderr[-2000:]
    assert (run_dir / "code" / "justrl_hpc" / "chunk.py").is_file()
    assert "entry" not in yaml.safe_load((run_dir / "run.yaml").read_text())

    resumed = subprocess.run(
        [sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir), "--wait"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=dict(env, PYTHONPATH=str(REPO)),
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert events(run_dir, "finished") and events(run_dir, "finished")[-1]["step"] == 2
    # The chunk really was the old package: its pickle builds justrl_hpc.chunk.TrainChunk from code/.
    (job,) = {e["job_id"] for e in events(run_dir, "submitted")}
    got = _unpickled_on_a_node(run_dir / "logs" / "submitit" / job / f"{job}_submitted.pkl", run_dir / "code")
    assert got["cls"] == "justrl_hpc.chunk:TrainChunk"
    assert Path(got["file"]).is_relative_to(run_dir / "code" / "justrl_hpc")
