"""`justrl-hpc monitor-job`: what it would submit, and bad input as one error line that changes nothing.
The chain itself runs on the dev cluster in tests/cluster/test_monitor_on_the_cluster.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from justrl_hpc.core import run_folder
from justrl_hpc.core.config_files import resolve
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.launcher import monitor_job


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "runs" / "justrl-deepseek-1.5b"
    run_folder.create(resolve("justrl-deepseek-1.5b", "a800-4x8"), path)
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "monitor-job", *args], capture_output=True,
                          text=True, timeout=60, env=dict(env or os.environ, PYTHONPATH=str(REPO)))


def test_dry_run_shows_one_cpu_singleton_links_on_the_clusters_partition(run_dir: Path) -> None:
    out = cli(str(run_dir), "--dry-run", "--time-limit", "240")
    assert out.returncode == 0, out.stderr
    cmd = out.stdout.splitlines()[1].split()
    name = monitor_job.chain_name(run_dir)
    assert cmd[:2] == ["sbatch", "--parsable"] and f"--job-name={name}" in cmd
    assert {"--dependency=singleton", "--ntasks=1", "--cpus-per-task=1", "--time=240", "--partition=gpu"} <= set(cmd)
    assert cmd[-2:] == [str(REPO / "sbatch" / "monitor.sbatch"), str(run_dir)]
    assert not (run_dir / "control" / monitor_job.SETTINGS_FILE).exists()  # a dry run writes nothing
    # The cluster file's time limit when no flag says otherwise; two folders of one name are two chains.
    assert "--time=1440" in cli(str(run_dir), "--dry-run").stdout
    assert name != monitor_job.chain_name(run_dir.parent / "elsewhere" / run_dir.name)


def test_bad_input_is_one_error_line_and_nothing_is_written(run_dir: Path, tmp_path: Path) -> None:
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    rules = tmp_path / "rules.yaml"
    rules.write_text("training:\n  entropy_bands: [1, 2]\n")
    for args, where in (
        ([str(run_dir), "--time-limit", "0"], "--time-limit"),
        ([str(run_dir), "--interval", "-1"], "--interval"),
        ([str(run_dir), "--config", str(tmp_path / "none.yaml")], "--config"),
        ([str(run_dir), "--config", str(rules)], "training.entropy_bands"),
        ([str(tmp_path / "not-a-run")], "RUN"),
    ):
        out = cli(*args)
        assert out.returncode == 2 and out.stderr.startswith(f"error: {where}"), (args, out.stderr)
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before


def test_a_link_ends_the_chain_once_the_run_has_ended(run_dir: Path) -> None:
    """Inside a link: a finished run queues no successor (exit 3, which monitor.sbatch ends on); the settings
    file a link reads is what the submission recorded (no secret in it)."""
    Ledger(run_dir).append("finished", job_id="7", chunk=3, step=4380)
    env = dict(os.environ, SLURM_JOB_ID="8")
    out = subprocess.run([sys.executable, "-m", "justrl_hpc.launcher.monitor_job", "--link", str(run_dir)],
                         capture_output=True, text=True, timeout=60, env=dict(env, PYTHONPATH=str(REPO)))
    assert out.returncode == monitor_job.ENDED_EXIT, out.stderr
    assert "monitor job 8: run justrl-deepseek-1.5b has finished: the chain ends here" in out.stdout
    # A resubmission after `failed`/`finished` reopens the run: the link would go on (and needs the settings).
    Ledger(run_dir).append("submitted", job_id="9", chunk=None, nodes=4)
    out = subprocess.run([sys.executable, "-m", "justrl_hpc.launcher.monitor_job", "--link", str(run_dir)],
                         capture_output=True, text=True, timeout=60, env=dict(env, PYTHONPATH=str(REPO)))
    assert out.returncode == 2 and out.stderr.startswith("error: RUN: cannot read the chain's settings"), out.stderr
    st = monitor_job.settings_for(monitor_job.build_parser().parse_args([str(run_dir)]), run_dir)
    assert set(st) == {"name", "partition", "time_limit_min", "account", "qos", "config", "interval_s", "python",
                       "checkout"}
    assert "secret" not in json.dumps(st).lower()
