"""Faults a 15-day run meets, injected on the dev cluster: each ends with nothing lost.

They are the `fault` suite: `bash scripts/faults.sh` runs it (CI runs it after the test command, which leaves it out
to stay under 20 minutes); `JUSTRL_FAULT_SEEDS=1,2,3,4,5 bash scripts/faults.sh` repeats the random ones with more
seeds.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, events, launch_args, ledger, run_launch, tb_steps, wait_for, wait_for_event

from justrl_hpc.dev.soak.inject import job_processes as _job_processes

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.fault]
SEEDS = [int(s) for s in os.environ.get("JUSTRL_FAULT_SEEDS", "1").split(",")]


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))


def in_chunk(run_dir, name: str, chunk: int, at_least: int = 0) -> dict | None:
    return next((e for e in events(run_dir, name) if e.get("chunk") == chunk and e.get("step", 0) >= at_least), None)


@pytest.mark.timeout(900)
def test_an_outside_requeue_then_a_sigterm_only_preemption_each_resume_from_a_verified_save(
        devcluster, rehearsal_data, tmp_path):
    """Two preemptions of one run (each had a run of its own, ~4.5 min apiece of the fault suite).

    1. An outside `scontrol requeue` (an admin, a preemption by requeue): Slurm signals every process of the
       job and kills them KillWait later; the job comes back and resumes at or after the newest save of a
       logged step.
    2. Then a SIGTERM-only preemption (clusters that preempt with SIGTERM alone; submitit ignores it). The
       chunk asks for a save at once, but a Ray driver (verl's main_ppo) exits on SIGTERM through Ray's own
       handler, so the steps since the last save are usually retrained: the guarantee is that the next chunk
       resumes from a verified checkpoint, not that the grace always saves. Nobody requeues (a SIGTERM may be
       a cancel): `launch --resume` is the one command that continues the chain.
    """
    run_dir = tmp_path / "preempted"
    proc = start(launch_args(rehearsal_data, run_dir, "--wait", "--set", "recipe.save_freq=4", steps=20,
                             time_limit=5))
    try:
        wait_for_event(run_dir, "saved", timeout=240)
        job = str(events(run_dir, "submitted")[0]["job_id"])
        subprocess.run(["scontrol", "requeue", job], check=True)
        saved = wait_for(lambda: in_chunk(run_dir, "saved", 2), 300, "save in the requeued chunk", poll_s=0.5)
        # What a SIGTERM-only preemption delivers to the job's steps before its grace ends in SIGKILL.
        subprocess.run(["scancel", "--signal=TERM", job], check=True)
        stop = wait_for(lambda: in_chunk(run_dir, "stop-requested", 2), 60, "stop request", poll_s=0.5)
        assert stop["reason"] == "sigterm", stop
        exited = wait_for(lambda: in_chunk(run_dir, "trainer-exited", 2), 60, "trainer exit", poll_s=0.5)
        assert exited["reason"] in ("stopped", "stopped-unlogged", "stopped-unsaved"), exited
        assert exited["last_saved"] >= saved["step"], (exited, saved)
        subprocess.run(["scancel", job], check=False)
        wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip(),
                 60, "end of the cancelled job", poll_s=0.5)
    finally:
        proc.kill()  # the waiting launcher a person would interrupt
        proc.communicate(timeout=30)
    resume = run_launch([sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir), "--wait"], timeout=400)
    assert resume.returncode == 0, resume.stdout[-3000:] + resume.stderr[-2000:]
    led = ledger(run_dir)
    starts = events(run_dir, "started")
    assert len(starts) == 3 and starts[1]["restart"] >= 1, starts
    # The requeue signals every process of the job (cgroups) and kills them KillWait (5 s) later: the first
    # chunk writes its own ending if it can, else the next one says how it ended (`chunk-lost`).
    ended = [e for e in led if e.get("chunk") == 1 and e["event"] in ("trainer-exited", "chunk-lost")]
    assert ended, [e["event"] for e in led]
    # Nothing verified and logged is thrown away: the second chunk resumes at or after the first's newest
    # save of a logged step (a save the killed driver never saw can be newer, found on disk).
    logged = max(e["step"] for e in events(run_dir, "step") if e["chunk"] == 1)
    kept = max((e["step"] for e in events(run_dir, "saved") if e["chunk"] == 1 and e["step"] <= logged), default=0)
    second, third = events(run_dir, "trainer-started")[1:3]
    assert second["step"] >= kept, (second, kept)
    assert third["step"] == exited["last_saved"], (third, exited)
    assert events(run_dir, "finished")[0]["step"] == 20
    # Every step trained; one saved as a SIGTERM landed may miss its metrics: verl logs a step's metrics
    # after its save, and a Ray driver exits on SIGTERM.
    assert set(tb_steps(run_dir)) >= set(range(1, 21)) - {second["step"], third["step"]}


@pytest.mark.timeout(700)
def test_preemptions_in_ray_bring_up_and_at_the_limit_as_the_chunk_requeues_still_leave_the_next_chunk(
        devcluster, rehearsal_data, tmp_path):
    """Two preemptions of one run (each had a run of its own, ~2 and ~4 min of the fault suite).

    1. A USR2 preemption while the chunk brings Ray up: it requeues before training anything.
    2. Slurm ends a job at its limit with SIGTERM to every process of its steps, then SIGKILL KillWait later
       (5 s on the dev cluster, 30 s by default). Delivered the moment the chunk has stopped for its pre-limit
       signal (its `requeued` line), they find the requeue already issued, before the teardown: the next chunk
       runs and the run finishes. (With the teardown first, the SIGKILL ended the job before its requeue.)
    """
    run_dir = tmp_path / "preempted"
    proc = start(launch_args(rehearsal_data, run_dir, "--wait", steps=8, time_limit=5))
    first = wait_for_event(run_dir, "started", timeout=120)
    job = str(first["job_id"])
    os.kill(int(first["pid"]), signal.SIGUSR2)  # what a USR2 preemption delivers
    wait_for(lambda: in_chunk(run_dir, "requeued", 1), 120, "requeue of the first chunk", poll_s=0.5)
    wait_for(lambda: in_chunk(run_dir, "step", 2, at_least=3), 300, "third step in the second chunk", poll_s=0.5)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # the pre-limit signal
    wait_for(lambda: in_chunk(run_dir, "requeued", 2), 120, "requeue of the second chunk", poll_s=0.5)

    def limit(sig: str) -> None:
        # The limit ends only the incarnation it belongs to: once requeued again (Restarts=2), the job is another's.
        show = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        if " JobState=RUNNING " in f" {show} " and " Restarts=1 " in f" {show} ":
            subprocess.run(["scancel", "--full", f"--signal={sig}", job], check=False, timeout=10)

    limit("TERM")
    time.sleep(5)  # the dev cluster's KillWait
    limit("KILL")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    names = [e["event"] for e in ledger(run_dir)]
    assert names.index("requeued") < names.index("finished")
    assert job in out
    assert len(events(run_dir, "started")) >= 3
    assert events(run_dir, "finished")[0]["step"] == 8
    assert sorted(set(tb_steps(run_dir))) == list(range(1, 9))


PLUGINS = REPO / "tests" / "plugins"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", SEEDS)
def test_kills_during_checkpoint_writes_are_never_resumed_from(devcluster, rehearsal_data, tmp_path, seed):
    """verl's own checkpoint manager writes the files; the test's plugin (tests/plugins/justrl_fault_save.py,
    loaded by verl's VERL_USE_EXTERNAL_MODULES) SIGKILLs the trainer inside the saves of steps 4, 8 and 12, at
    a different point each time (the seed picks the order): a model shard half-written, verl's data.pt
    half-written, every file written but the tracker. One run for the three (each in its own run took ~4 min
    of the fault suite): whoever resumes (the chunk restarting its trainer, or the next chunk) sets the torn
    save aside and goes back to the newest good one."""
    phases = ["shard", "data-file", "tracker"]
    random.Random(seed).shuffle(phases)
    plan = dict(zip((4, 8, 12), phases, strict=True))
    run_dir = tmp_path / f"tornsave-{seed}"
    # Chunks import only the run's code snapshot: the test's module goes there, between create and submit.
    created = run_launch(launch_args(rehearsal_data, run_dir, "--create-only", "--set", "recipe.save_freq=2",
                                     steps=14, time_limit=3), timeout=120)
    assert created.returncode == 0, created.stderr
    shutil.copy(PLUGINS / "justrl_fault_save.py", run_dir / "code" / "justrl_fault_save.py")
    env = dict(os.environ, PYTHONPATH=str(REPO), VERL_USE_EXTERNAL_MODULES="justrl_fault_save",
               JUSTRL_FAULT_SAVES=",".join(f"{step}:{phase}" for step, phase in plan.items()))
    out = subprocess.run([sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir), "--wait"],
                         capture_output=True, text=True, timeout=840, env=env)
    assert out.returncode == 0, out.stdout[-3000:]
    led = ledger(run_dir)
    kills = [i for i, e in enumerate(led) if e["event"] == "trainer-exited" and e.get("exit_code") == -9]
    skipped = [e for e in led if e["event"] == "checkpoint-skipped"]
    # A planned stop at a chunk's limit may leave a whole save ahead of the log, set aside as never logged.
    assert all(e["step"] in plan or "never logged" in e["reason"] for e in skipped), skipped
    torn = [next((e for e in skipped if e["step"] == step), None) for step in plan]
    assert len(kills) == 3 and None not in torn, ([e["event"] for e in led], skipped)
    for (step, phase), skip, kill in zip(plan.items(), torn, kills, strict=True):
        if phase == "tracker":
            # Every file was written, only the tracker lags, and the step was never logged (verl logs a step
            # after saving it): resuming from it would leave its metrics out of TensorBoard for good.
            assert "never logged" in skip["reason"], skip
        else:
            assert skip["reason"].startswith("truncated data.pt" if phase == "data-file" else ("missing", "truncated")), skip
        # The newest save before the torn one: save_freq's two steps back, or a later one the deadline hook
        # made as a 3-minute chunk neared its end (seen 2026-12-07: step 5 saved, then a crash in step 6's).
        before = [e["step"] for e in led[:kill] if e["event"] == "saved" and e["step"] < step]
        resumed = next(e for e in led[kill:] if e["event"] == "trainer-started")["step"]
        assert resumed == max(before) >= step - 2, (phase, resumed, before)
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "14"
    # Every step trained and logged once at least (the retrained ones replace nothing: they never got logged).
    assert sorted(set(tb_steps(run_dir))) == list(range(1, 15))


@pytest.mark.timeout(420)
def test_checkpoint_disk_filling_up_during_a_save(devcluster, rehearsal_data, tmp_path):
    """The checkpoints' filesystem fills up in the middle of a save (a real 5 MiB tmpfs: two rehearsal
    checkpoints fit, the third does not). The torn save is never resumed from, the verified ones stay intact,
    and the chain stops with one line saying how much room the next checkpoint needs."""
    from justrl_hpc.core import checkpoints

    run_dir = tmp_path / "diskfull"
    out = run_launch(launch_args(rehearsal_data, run_dir, "--create-only", "--set", "cluster.min_free_disk_gb=0",
                                 "--set", "recipe.save_freq=3", steps=12, time_limit=5), timeout=120)
    assert out.returncode == 0, out.stderr
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(ckpt)], check=True)
    try:
        resume = run_launch([sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir), "--wait"],
                            timeout=380)
        assert resume.returncode == 1, resume.stdout[-3000:] + resume.stderr[-2000:]
        saved = [e["step"] for e in events(run_dir, "saved")]
        assert saved[:2] == [3, 6] and 12 not in saved, saved
        crashed = events(run_dir, "trainer-exited")[0]
        assert crashed["reason"] == "crashed-disk" and crashed["last_saved"] == saved[-1], crashed
        # The next chunk never trained from the torn save: it set it aside, then refused to train on a full disk.
        failed = events(run_dir, "failed")
        assert len(failed) == 1 and "GB free" in failed[0]["reason"] and "--resume" in failed[0]["reason"], failed
        skipped = events(run_dir, "checkpoint-skipped")
        assert [e["step"] for e in skipped] == [9] and "torn" in skipped[0]["moved_to"], skipped
        assert len(events(run_dir, "trainer-started")) == 1
        for step in saved:
            if (ckpt / f"global_step_{step}").exists():
                assert checkpoints.verify(ckpt / f"global_step_{step}", 2).ok, step
        assert checkpoints.latest_good(ckpt, 2) == saved[-1]
    finally:
        subprocess.run(["umount", "-l", str(ckpt)], check=False)


@pytest.mark.timeout(600)
def test_node_lost_mid_chunk_requeues_and_resumes_from_the_last_good_save(devcluster, rehearsal_data, tmp_path):
    """A node of a 2-node chunk dies (its slurmd and every process of the job on it, at once, SIGKILL): the
    controller marks it down after SlurmdTimeout, ends the job NODE_FAIL and requeues it; the next chunk runs
    on the nodes left and resumes from the last verified save; every step is trained."""
    from justrl_hpc.dev.devcluster import cluster as dc

    STEPS = 12
    run_dir = tmp_path / "nodeloss"
    proc = start(launch_args(rehearsal_data, run_dir, "--wait", "--set", "recipe.save_freq=4", steps=STEPS,
                             time_limit=10))
    lost_node = None
    try:
        wait_for_event(run_dir, "saved", timeout=300, step=4)
        wait_for_event(run_dir, "step", timeout=120, step=6)
        started = events(run_dir, "started")[0]
        job = str(started["job_id"])
        hosts = started["hosts"].split(",")
        assert len(hosts) == 2, started
        lost_node = hosts[1]  # the worker node: the chunk's driver on the head node lives on, as on a cluster
        slurmd = dc._recorded_pid(dc.Layout(devcluster.scratch).pidfile(f"slurmd-{lost_node}"))
        victims = [p for p in [slurmd, *_job_processes(job, lost_node)] if p]
        assert slurmd and len(victims) >= 2, victims
        for pid in victims:  # the whole node at one instant: nobody on it reports anything
            os.kill(pid, signal.SIGSTOP)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=480)
        assert proc.returncode == 0, out[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        dc.up(devcluster.scratch)  # slurmd back, the node resumed, for the tests after this one
    starts = events(run_dir, "started")
    assert len(starts) >= 2 and lost_node not in starts[1]["hosts"].split(","), starts
    saved_before = [e["step"] for e in events(run_dir, "saved") if e["time"] < starts[1]["time"]]
    # Ray notices first (its actor on the lost node is unreachable): the trainer's crash reads as a node's.
    assert events(run_dir, "trainer-exited")[0]["reason"] == "crashed-node"
    resumed = events(run_dir, "trainer-started")[1]
    assert resumed["step"] == max(saved_before) >= 4, (resumed, saved_before)
    assert events(run_dir, "finished")[0]["step"] == STEPS
    assert set(tb_steps(run_dir)) >= set(range(1, STEPS + 1))
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == str(STEPS)
    # The report names the lost chunk and what it threw away.
    rep = json.loads(run_launch([sys.executable, "-m", "justrl_hpc.cli", "report", str(run_dir), "--json"],
                                timeout=60).stdout)
    first = rep["chunks"][0]
    assert rep["finished"] and first["last_step"] >= 6 and first["steps_lost"] == first["last_step"] - resumed["step"]

