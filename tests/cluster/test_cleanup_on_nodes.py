"""On the dev cluster's real Slurm: orphans of an earlier incarnation, re-parented to init on two nodes and
found by nothing on their command line, are ended by the next chunk on each node and named in the ledger;
nothing a chunk started outlives it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest
from helpers import REPO, events, launch_args

from justrl_hpc.core import slurm
from justrl_hpc.jobs.train import cleanup
from justrl_hpc.jobs.train.cleanup import MARK_ENV, Mark

# Planted orphans are a fault: run by scripts/faults.sh (keeps the test command inside its 25 minutes).
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.fault]


def plant(mark: Mark) -> psutil.Process:
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    env[MARK_ENV] = str(mark)
    # What vLLM's EngineCore looks like after its parent was SIGKILLed: no temp dir, no run folder named.
    out = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "import time; time.sleep(900)" VLLM::EngineCore '
                          ">/dev/null 2>&1 & echo $!"], capture_output=True, text=True, env=env,
                         start_new_session=True, check=True)
    proc = psutil.Process(int(out.stdout.strip()))
    time.sleep(0.2)
    assert proc.ppid() != os.getpid()
    return proc


@pytest.mark.timeout(900)
def test_orphans_on_two_nodes_are_ended_by_the_next_chunk_and_nothing_outlives_it(devcluster, rehearsal_data,
                                                                                 tmp_path):
    run_dir = tmp_path / "orphans"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLURM_JOB_ID")}
    env["PYTHONPATH"] = str(REPO)
    made = subprocess.run(launch_args(rehearsal_data, run_dir, "--create-only", steps=2), capture_output=True,
                          text=True, timeout=120, env=env)
    assert made.returncode == 0, made.stderr
    run = cleanup.run_id(run_dir)
    # An incarnation of a job Slurm no longer has, killed hard on every node (the chunk will get two of them).
    planted = {node: plant(Mark(run, "424242", 0, node)) for node in ("n1", "n2", "n3", "n4")}
    try:
        out = subprocess.run([sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir), "--wait"],
                             capture_output=True, text=True, timeout=700, env=env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        (hosts,) = {e["hosts"] for e in events(run_dir, "started")}
        nodes = sorted(hosts.split(","))
        for node, proc in planted.items():
            gone = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
            assert gone == (node in nodes), node  # each node ends its own, and only its own
        starts = [e for e in events(run_dir, "cleanup") if e["when"] == "start"]
        assert sorted(e["node"] for e in starts) == nodes
        for e in starts:
            # Ours, planted; the dev cluster may hold more left by earlier tests' killed jobs (ended here too).
            assert "424242/0" in e["incarnations"] and e["kinds"].get("vllm", 0) >= 1, e
        # Nothing of the finished chunk is left anywhere on the machine.
        (job,) = {e["job_id"] for e in events(run_dir, "started")}
        # `--wait` returns at `finished`; each node's teardown and end sweep (which writes its ledger line after
        # its processes are gone) follow while the job still runs: wait for Slurm to see the job end.
        deadline = time.monotonic() + 90
        while True:
            left = [p.pid for p, m in cleanup.marked() if m.run == run and m.job_id == job]
            running = job in slurm.active_job_ids()
            if (not left and not running) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not running, f"job {job} still in the queue 90 s after `finished`"
        assert not left, f"processes of job {job} outlived it: {left}"
        assert sorted(e["node"] for e in events(run_dir, "cleanup") if e["when"] == "end") == nodes
        assert not list((run_dir / "control").glob("shm-*.json"))
    finally:
        for proc in planted.values():
            if proc.is_running():
                proc.kill()
