"""Clusters that forbid requeue (`requeue_allowed: false`): the run goes on as a chain of dependent jobs.

Each chunk submits its successor (afterany) when it starts, so even a chunk killed outright is followed; the
chunk that finishes the run cancels the successor it armed. On the dev cluster's real Slurm.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO, assert_each_step_once, events, final_state, launch_args, ledger, wait_for_event

from justrl_hpc.core import slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.mark.timeout(480)
def test_without_requeue_each_chunk_is_a_new_dependent_job(devcluster, rehearsal_data, tmp_path):
    """Also the resubmission a preflight's refusal asks for, `launch --resume RUN --exclude NODE`: no job of the
    chain, the first or a chained one, is given the node."""
    run_dir = tmp_path / "chain"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    made = subprocess.run(launch_args(rehearsal_data, run_dir, "--create-only", "--set", "cluster.requeue_allowed=false",
                                      steps=8, time_limit=5), capture_output=True, text=True, timeout=120, env=env)
    assert made.returncode == 0, made.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir), "--exclude", "n1", "--wait"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    wait_for_event(run_dir, "step", timeout=240, step=4)
    first_job = events(run_dir, "submitted")[0]["job_id"]
    chained = wait_for_event(run_dir, "chained", timeout=30)
    assert chained["after"] == first_job and chained["job_id"] != first_job
    st = slurm.job_state(chained["job_id"])
    assert st is not None and st.state == "PENDING" and st.reason == "Dependency", st
    shown = subprocess.run(["scontrol", "show", "job", "-o", chained["job_id"]], capture_output=True, text=True,
                           timeout=30).stdout
    assert "ExcNodeList=n1 " in shown and chained["exclude"] == "n1", shown  # the launch's --exclude holds on
    out = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "save-now", str(run_dir)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    # The chunk that handed the run over did its part: COMPLETED, not submitit's FAILED (2026-12-07).
    assert final_state(first_job, timeout=180) == "COMPLETED"
    stdout, _ = proc.communicate(timeout=360)
    assert proc.returncode == 0, stdout[-3000:]

    started = events(run_dir, "started")
    jobs = [e["job_id"] for e in started]
    assert len(jobs) >= 2 and len(set(jobs)) == len(jobs), jobs  # a new job per chunk, none requeued
    assert jobs[1] == chained["job_id"]
    assert all(e["restart"] == 0 for e in started)
    requeued = events(run_dir, "requeued")[0]
    assert requeued["chained_to"] == jobs[1] and requeued["reason"] == "save-now"
    exited = events(run_dir, "trainer-exited")[0]
    assert events(run_dir, "trainer-started")[1]["step"] == exited["last_saved"] == exited["step"]
    assert_each_step_once(run_dir, 8)
    (sub,) = events(run_dir, "submitted")
    assert sub["exclude"] == "n1"
    hosts = [e["hosts"] for e in started]
    assert all("n1" not in h.split(",") for h in hosts), hosts
    assert {e["node"] for e in events(run_dir, "preflight")} == {n for h in hosts for n in h.split(",")}
    # The last chunk armed a successor too; finishing cancelled it, so nothing of the run is left queued.
    cancelled = events(run_dir, "chain-cancelled")
    assert len(cancelled) == 1 and cancelled[0]["ok"], [e["event"] for e in ledger(run_dir)]
    last = slurm.job_state(cancelled[0]["job_id"])
    assert last is None or not last.active, last
    sbatch = (run_dir / "logs" / "submitit").rglob("*_submission.sh")
    assert not any("--requeue" in p.read_text() for p in sbatch)
