"""The monitor beside real runs on the dev cluster: `justrl-hpc rehearse` starts the daemon on its run and the
daemon ends with it; `justrl-hpc monitor-job` keeps the daemon alive as a chain of 1-CPU singleton Slurm jobs
across their own time limits while a rehearsal trains, resuming from monitor.db with no alert repeated or
missed, and the chain ends when the run does (that rehearsal also logs to W&B offline: one run across its
≥ 3 chunks).

Both take minutes, so they run with the fault suite (`long`; scripts/faults.sh), not in the test command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest
from helpers import (
    REPO,
    assert_one_wandb_run,
    events,
    final_state,
    launch_args,
    stop_each_chunk_after,
    wait_for_event,
)

from justrl_hpc.core import slurm
from justrl_hpc.core.recipe import tracker_run_id
from justrl_hpc.launcher.monitor_job import chain_name

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.long]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLURM_JOB_ID")}
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.timeout(600)
def test_rehearse_watches_its_run_with_the_daemon_and_stops_it_at_the_end(devcluster, rehearsal_data, tmp_path):
    """Also a run that finishes close to its chunk's limit (one run for the two; the second had a run of its own,
    ~2.5 min of the fault suite): Slurm's pre-limit USR2 lands while the chunk tears Ray down. It is ignored; the
    teardown completes (no Ray left behind) and the job ends COMPLETED."""
    run_dir = tmp_path / "runs" / "watched"
    said_file = tmp_path / "rehearse.out"  # a file, not a pipe nobody reads while the run trains
    with open(said_file, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "justrl_hpc.cli", "rehearse", "--name", "watched", "--data",
                                 str(rehearsal_data), "--set", "recipe.total_training_steps=3"], cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        wait_for_event(run_dir, "finished", timeout=540)
        job = str(events(run_dir, "submitted")[0]["job_id"])
        subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what the limit's --signal delivers
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    said = said_file.read_text()
    assert proc.returncode == 0, said[-6000:]
    assert final_state(job, timeout=60) == "COMPLETED"
    log = "\n".join(p.read_text() for p in (run_dir / "logs" / "submitit").rglob("*_log.*"))
    assert "SIGUSR2 is ignored from now on" in log and "UncompletedJobError" not in log
    left = subprocess.run(["pgrep", "-f", f"justrl-ray-{job}-"], capture_output=True, text=True).stdout.split()
    assert left == [], f"Ray processes left behind: {left}"
    assert "monitor: daemon pid" in said and "monitor: stopped with the run (exit 0)" in said, said[-3000:]
    pid = int(said.split("monitor: daemon pid ", 1)[1].split()[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # It watched while the run trained: its heartbeat reached the last step, and it judged every step.
    beat = json.loads((run_dir / "monitor.heartbeat").read_text())
    assert beat["step"] == 3 and beat["run"] == "watched" and beat["ended"] == "finished"
    frame = subprocess.run([sys.executable, "-m", "justrl_hpc.monitor.cli", "--once", str(run_dir)],
                           capture_output=True, text=True, timeout=120, env=dict(_env(), COLUMNS="120", LINES="30"))
    assert "monitor done: stopped with the run (finished)" in frame.stdout and "blind" not in frame.stdout, frame.stdout
    log = (run_dir / "logs" / "monitor.log").read_text()
    assert "leading as" in log and "finished: the monitor's work on it is done" in log
    assert "ledger trainer-started" in log  # it was up before the trainer started, not started afterwards
    # A healthy rehearsal raises nothing about its training (a small disk can still be said, truly).
    alerts = [json.loads(line) for line in (run_dir / "alerts.jsonl").read_text().splitlines()] if (
        run_dir / "alerts.jsonl").exists() else []
    assert not [a for a in alerts if a["rule"][:1] == "T"], alerts
    assert events(run_dir, "finished")


# ~5 minutes: run by hand (`pytest -m manual`) since the strict cluster's slower chunks pushed CI toward its
# time limit (2026-12-07); back into the fault suite once it shares a run with another test.
@pytest.mark.manual
@pytest.mark.timeout(1200)
def test_the_daemon_as_a_slurm_chain_outlives_its_time_limits_and_ends_with_the_run(devcluster, rehearsal_data,
                                                                                    tmp_path):
    run_dir = tmp_path / "chained"
    # With W&B too: 16 steps in 3 chunks, the first two ended by the pre-limit signal after 4 steps each (a stop
    # saves within 3 steps of the step recorded with the request, so the third chunk always has steps left).
    made = subprocess.run(launch_args(rehearsal_data, run_dir, "--create-only", "--set", "recipe.trackers=[wandb]",
                                      steps=16, time_limit=5), capture_output=True, text=True, timeout=120,
                          env=_env())
    assert made.returncode == 0, made.stderr
    # Rules tuned so that this healthy run's step times raise and resolve alerts over its whole length.
    rules = tmp_path / "rules.yaml"
    rules.write_text("training:\n  min_samples: 3\n  step_time_window: 6\n  step_time_ratio: 1.05\n"
                     "  step_time_steps: 1\ndaemon:\n  cooldown_s: 0\n")
    name = chain_name(run_dir)
    bad = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "monitor-job", str(run_dir), "--time-limit", "0"],
                         capture_output=True, text=True, timeout=60, env=_env())
    assert bad.returncode == 2 and bad.stderr.startswith("error: --time-limit"), bad.stderr
    assert not slurm.job_ids_named(name) and not (run_dir / "logs" / "monitor-job.log").exists()
    sub = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "monitor-job", str(run_dir), "--time-limit", "1",
                          "--interval", "2", "--config", str(rules)], capture_output=True, text=True, timeout=60,
                         env=_env())
    assert sub.returncode == 0 and "submitted monitor job" in sub.stdout, sub.stdout + sub.stderr
    again = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "monitor-job", str(run_dir)],
                           capture_output=True, text=True, timeout=60, env=_env())
    assert again.returncode == 2 and "already queued or running" in again.stderr, again.stderr
    try:
        # The rehearsal itself, long enough for the monitor's links to hit their 1-minute limits.
        train = subprocess.Popen([sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir), "--wait"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
        said = stop_each_chunk_after(run_dir, train, 4, ["signal", "signal"], timeout=800)
        assert train.returncode == 0, said[-3000:]
        deadline = time.monotonic() + 240
        while slurm.job_ids_named(name) and time.monotonic() < deadline:
            time.sleep(2)
        assert not slurm.job_ids_named(name), "the chain outlived the run"
    finally:
        subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30, check=False)
    # (The dev cluster keeps no accounting: the links' own log says what happened to each.) At least two links
    # were ended by their time limit while the run trained, each resumed by the next; the last saw the run end.
    log = (run_dir / "logs" / "monitor-job.log").read_text()
    assert log.count("DUE TO TIME LIMIT") >= 2 and log.count("SIGTERM received") >= 2, log[-3000:]
    assert log.count("next link") >= 2 and "has finished: the chain ends here" in log, log[-3000:]
    assert log.count("leading as") >= 3 and "Traceback" not in log, log[-3000:]
    # Across the restarts no transition was written twice, and none was lost: a scan of a copy of the run
    # (fresh state, the same rules) raises the same training alerts at the same steps.
    lines = [json.loads(x) for x in (run_dir / "alerts.jsonl").read_text().splitlines() if x.strip()]
    written = [(a["alert_id"], a["state"]) for a in lines]
    assert len(written) == len(set(written)), Counter(written).most_common(3)
    chain = sorted((a["key"], a["step"]) for a in lines if a["state"] == "firing" and a["rule"].startswith(("T", "S3")))
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("monitor.*", "alerts.jsonl", "checkpoints"))
    scan = subprocess.run([sys.executable, "-m", "justrl_hpc.monitor.cli", "scan", str(copy), "--config", str(rules)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert scan.returncode == 0, scan.stderr[-2000:]
    fresh = sorted((a["key"], a["step"]) for a in map(json.loads, scan.stdout.splitlines())
                   if a["state"] == "firing" and a["rule"].startswith(("T", "S3")))
    assert chain and chain == fresh, (chain, fresh)
    assert_one_wandb_run(run_dir, tracker_run_id("chained", run_dir), 16, min_chunks=3)
