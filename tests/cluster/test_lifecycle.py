"""The run as resumable chunks, on the dev cluster's real Slurm with verl's own trainer (the rehearsal recipe on the CPU backend) and real Ray.

Each test launches `python -m justrl_hpc.launch --recipe rehearsal --cluster dev` like a person would and reads
the outcome from the run folder: the ledger, the checkpoints, the TensorBoard events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from helpers import (
    REPO,
    assert_each_step_once,
    events,
    launch_args,
    ledger,
    run_launch,
    stop_each_chunk_after,
    tb_steps,
    wait_for_event,
)

from justrl_hpc.core.ledger import parse_time

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_run_crosses_chunk_limits_and_loses_no_step(devcluster, rehearsal_data, tmp_path):
    """Three chunks: the first ended by the pre-limit signal after 4 steps, the second by `save-now` after 4,
    the third finishes (each stop saves within 3 steps of the step recorded with the request, so 16 always leave the third some). Each stop saves at the next step and loses nothing. (Slurm's own timer sending the
    signal: test_sbatch.py's test_train_sbatch_hits_its_limit_saves_requeues_and_resumes, in the fault suite.)"""
    run_dir = tmp_path / "chunks"
    proc = subprocess.Popen(launch_args(rehearsal_data, run_dir, "--wait", steps=16, time_limit=5),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    stdout = stop_each_chunk_after(run_dir, proc, 4, ["signal", "save-now"], timeout=860)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "")
    assert out.returncode == 0, out.stdout[-3000:]
    stops, exits = events(run_dir, "stop-requested"), events(run_dir, "trainer-exited")
    assert [e["reason"] for e in stops] == ["preempted", "save-now"], stops
    assert [e["reason"] for e in exits] == ["stopped", "stopped", "finished"], exits
    for stop, exited in zip(stops, exits[:2], strict=True):
        assert exited["last_saved"] == exited["step"] > stop["step"], (stop, exited)  # the next step, nothing to redo
    led = ledger(run_dir)
    requeued = [e for e in led if e["event"] == "requeued"]
    assert len(requeued) >= 2, [e["event"] for e in led]
    assert events(run_dir, "finished")[0]["step"] == 16
    # At every planned chunk end the last trained step was saved: nothing to redo.
    for e in events(run_dir, "trainer-exited"):
        if e["reason"] == "stopped":
            assert e["step"] == e["last_saved"], e
    step_events = [e["step"] for e in events(run_dir, "step")]
    assert sorted(step_events) == list(range(1, 17)), step_events
    assert_each_step_once(run_dir, 16)
    # `justrl-hpc report` of the same run: finished, and no chunk threw a step away at its planned end.
    report = [sys.executable, "-m", "justrl_hpc.cli", "report", str(run_dir), "--json"]
    rep = json.loads(run_launch(report, timeout=60).stdout)
    assert rep["finished"] and rep["last_step"] == 16, rep
    assert [c["steps_lost"] for c in rep["chunks"]] == [0] * len(rep["chunks"]), rep["chunks"]
    # The monitor on the same folder. The toy task's curves may trip a drift warning (its responses are a
    # few tokens long), but nothing in a run that finished cleanly is critical, non-finite or a stall, and
    # every alert names a step the run trained; the dashboard's one frame at 80x24 shows where it ended.
    scan = run_launch([sys.executable, "-m", "justrl_hpc.monitor.cli", "scan", str(run_dir)], timeout=120)
    assert scan.returncode == 0, scan.stderr[-2000:]
    raised = [json.loads(line) for line in scan.stdout.splitlines() if line.strip()]
    assert all(a["severity"] != "critical" and a["rule"][:2] not in ("T1", "S1") for a in raised), raised
    assert all(a["step"] is None or 1 <= a["step"] <= 16 for a in raised), raised
    frame = subprocess.run([sys.executable, "-m", "justrl_hpc.monitor.cli", "--once", str(run_dir)],
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="80", LINES="24"))
    assert frame.returncode == 0, frame.stderr[-2000:]
    assert "16/16" in frame.stdout.replace(" ", "") and "FINISHED" in frame.stdout, frame.stdout
    # Every incarnation of the job resumed where the previous one saved.
    starts = events(run_dir, "trainer-started")
    saves_before = [0] + [e["last_saved"] for e in events(run_dir, "trainer-exited")]
    assert [s["step"] for s in starts] == saves_before[: len(starts)]
    assert "requeued" in out.stdout and "finished" in out.stdout
    # A stop request is answered within 2 steps: the driver stops the trainer once any save after the request is
    # verified and logged (verl saves every step after it, its newest save always a step ahead of its log). The
    # request's step is the newest console line, which trails verl by up to a step (Ray forwards it a second or
    # two late, a toy step takes 1.5 s): hence 3 here, against the request's recorded step.
    led = ledger(run_dir)
    for i, e in enumerate(led):
        if e["event"] == "stop-requested":
            exited = next(x for x in led[i:] if x["event"] == "trainer-exited")
            # A stop asked for before the first step (the signal during start-up) has no step: the one before
            # the chunk's first.
            asked = e.get("step") if e.get("step") is not None else (exited.get("first_step") or 1) - 1
            assert (exited.get("step") or asked) - asked <= 3, (e, exited)
    # verl's own trainer across two Ray nodes of one GPU each: its two FSDP ranks and their gloo group span nodes.
    log = (run_dir / "logs" / "trainer.log").read_text(errors="replace")
    assert "(TaskRunner pid=" in log and "[Rank 1] Saved model" in log
    assert all(e["nodes_seen"] == 2 and e["gpus_seen"] == 2 for e in events(run_dir, "ray-ready"))
    actor = run_dir / "checkpoints" / "global_step_16" / "actor"
    assert {"model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"} <= {p.name for p in actor.iterdir()}
    assert tb_steps(run_dir, "global_seqlen/mean") == tb_steps(run_dir)  # verl's own metric set, every step


def stopped_verl_worker(run_dir) -> int:
    """SIGSTOP one of verl's FSDP workers of this run (a rank stuck in a collective, as far as its peers see)."""
    from justrl_hpc.jobs.train import cleanup

    run = cleanup.run_id(run_dir)
    for proc, mark in cleanup.marked():
        if mark.run == run and " ".join(proc.cmdline()).startswith("ray::WorkerDict"):
            os.kill(proc.pid, signal.SIGSTOP)
            return proc.pid
    raise AssertionError("no ray::WorkerDict process carries this run's mark")


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_kill_9_of_the_trainer_restarts_it_in_the_job_then_a_hang_leaves_its_stacks_and_requeues(
        devcluster, rehearsal_data, tmp_path, record_property):
    """A trainer killed -9 with every node alive is started again in the same allocation from the newest verified
    save (no requeue, no Ray bring-up). Then one of its FSDP workers is stopped: the steps stop, the chunk takes
    every process's stacks before it kills anything (the stopped worker through py-spy, the rest by the worker
    hook's faulthandler), and with its one restart spent it requeues."""
    run_dir = tmp_path / "kill9"
    proc = subprocess.Popen(
        # 8-minute chunks: room for the first save, Ray's 40 s verdict on the nodes, the restart, its save and
        # the hang's 30 s. The rehearsal's steps take seconds: 30 s without one is a hang here.
        launch_args(rehearsal_data, run_dir, "--wait", "--set", "run.max_in_job_restarts=1", "--set", "recipe.save_freq=5",
                    "--set", "run.hang_min_s=30", steps=16, time_limit=8),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    wait_for_event(run_dir, "saved", timeout=240)
    os.kill(events(run_dir, "trainer-started")[0]["pid"], signal.SIGKILL)
    restarted = wait_for_event(run_dir, "restarted-in-job", timeout=120)
    assert restarted["crash"] == "crashed-other" and restarted["restart"] == 1, restarted

    # The restarted trainer saves a step of its own; then one of its workers stops, and the chunk requeues.
    def saved_after_restart() -> bool:
        names = [(e["event"], e.get("step")) for e in ledger(run_dir)]
        cut = names.index(("restarted-in-job", restarted["step"]))
        return any(n == "saved" and step > restarted["step"] for n, step in names[cut:])

    deadline = time.monotonic() + 240
    while not saved_after_restart():
        assert time.monotonic() < deadline, "no save after the in-job restart"
        time.sleep(0.5)
    second = events(run_dir, "trainer-started")[1]
    stopped = stopped_verl_worker(run_dir)
    hang = wait_for_event(run_dir, "hang", timeout=180)
    # While the chunk tears Ray down to requeue itself (through submitit's own USR2 path), Slurm's pre-limit
    # USR2 lands too (the soak found it): before the fix submitit's handler ran again inside the first one, got
    # None from the driver that had ended, and ended the job FAILED, a broken chain.
    wait_for_event(run_dir, "requeued", timeout=120)
    subprocess.run(["scancel", "--signal=USR2", str(events(run_dir, "submitted")[0]["job_id"])], check=True)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]

    # The stacks: both nodes answered; the stopped worker through py-spy only, verl's own loop by faulthandler.
    folder = run_dir / hang["stacks"]
    assert hang["nodes_answered"] == 2 and hang["on_hang"] == "restart" and hang["limit_s"] >= 30, hang
    assert 30 <= hang["stalled_s"] < 120, hang
    index = [json.loads(p.read_text()) for p in folder.glob("index-*.json")]
    rows = {r["pid"]: r for i in index for r in i["processes"]}
    assert rows[stopped]["py_spy"] == "ok" and rows[stopped]["faulthandler"].startswith("no answer"), rows[stopped]
    assert any(f"-{stopped}.py-spy.txt" in p.name for p in folder.iterdir())
    answered = "\n".join(p.read_text() for p in folder.glob("*.txt") if not p.name.endswith(".py-spy.txt"))
    assert "ray_trainer.py" in answered and "fit" in answered, "verl's training loop is not in the faulthandler dumps"
    assert sum(1 for r in rows.values() if r.get("faulthandler") == "ok") >= 2  # the TaskRunner and a worker

    exits = events(run_dir, "trainer-exited")
    assert [(e["reason"], e["exit_code"]) for e in exits[:1]] == [("crashed-other", -9)]
    assert exits[1]["reason"] == "hung", exits[1]
    # The restart: the same job and chunk, from the newest verified save the crash left.
    assert (second["job_id"], second["chunk"]) == (restarted["job_id"], restarted["chunk"])
    assert second["step"] == exits[0]["last_saved"] == restarted["step"]
    assert len(events(run_dir, "restarted-in-job")) == 1  # max_in_job_restarts=1: the hang requeued
    assert events(run_dir, "requeued")[0]["reason"] == "hung"
    assert events(run_dir, "trainer-started")[2]["step"] == exits[1]["last_saved"]
    assert events(run_dir, "finished")
    assert len(events(run_dir, "submitted")) == 1  # the same job requeued: the chain held
    log = "\n".join(p.read_text() for p in (run_dir / "logs" / "submitit").rglob("*_log.err"))
    assert "UncompletedJobError" not in log
    # The stopped worker did not outlive its chunk.
    assert not psutil.pid_exists(stopped) or psutil.Process(stopped).status() == psutil.STATUS_ZOMBIE
    # Crash → the restarted trainer's first step (BENCHMARKS.md beside the requeue path's).
    crash_t = parse_time(exits[0]["time"])
    later = [e for e in ledger(run_dir) if e["event"] == "step" and parse_time(e["time"]) > parse_time(second["time"])]
    record_property("crash_to_next_step_in_job_s", round(parse_time(later[0]["time"]) - crash_t, 1))
    print(f"measured crash_to_next_step_in_job_s = {parse_time(later[0]['time']) - crash_t:.1f}")
    print(f"measured hang: stalled_s {hang['stalled_s']} limit_s {hang['limit_s']} dump_s {hang['seconds']} "
          f"files {hang['stack_files']}")
    report = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "report", str(run_dir)], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert "in-job restarts 1" in report.stdout, report.stdout + report.stderr


@pytest.mark.fault
@pytest.mark.timeout(600)
def test_a_trainer_that_crashes_at_start_stops_the_chain(devcluster, rehearsal_data, tmp_path):
    """verl fails every time it loads the model (its weights file is cut short): two chunks, then the chain
    stops instead of burning allocations."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(rehearsal_data, broken)
    weights = broken / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    run_dir = tmp_path / "crashloop"
    out = run_launch(launch_args(broken, run_dir, "--wait", "--set", "run.max_no_progress_chunks=2"), timeout=580)
    assert out.returncode == 1, out.stdout[-3000:]
    failed = events(run_dir, "failed")
    assert len(failed) == 1 and "2 chunks in a row made no progress" in failed[0]["reason"]
    assert len(events(run_dir, "trainer-started")) == 2


@pytest.mark.timeout(300)
def test_a_second_launch_of_a_live_run_is_refused(devcluster, rehearsal_data, tmp_path):
    run_dir = tmp_path / "twice"
    first = run_launch(launch_args(rehearsal_data, run_dir, steps=200, time_limit=3), timeout=120)
    assert first.returncode == 0, first.stderr
    again = run_launch(launch_args(rehearsal_data, run_dir, steps=200, time_limit=3), timeout=120)
    assert (
        again.returncode == 2 and again.stderr.startswith("error: run:") and "is live as job" in again.stderr
    )
    resume = run_launch([sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir)], timeout=120)
    assert resume.returncode == 2 and "is still" in resume.stderr, resume.stderr
    job = events(run_dir, "submitted")[0]["job_id"]
    subprocess.run(["scancel", str(job)], check=False)


@pytest.mark.timeout(300)
def test_launches_racing_at_one_instant_submit_one_job(devcluster, rehearsal_data, tmp_path):
    """Three launches of one new run at the same instant (a retried script, two terminals): one creates
    the run and submits; each other says why in one line and writes nothing; Slurm holds one job."""
    run_dir = tmp_path / "race"
    args = launch_args(rehearsal_data, run_dir, steps=200, time_limit=3)
    go = tmp_path / "go"
    # Each racer imports the launcher, then spins on the same file: they enter main() within milliseconds.
    racer = (
        "import os, sys, time\n"
        "import justrl_hpc.launch\n"
        f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.001)\n"
        f"sys.exit(justrl_hpc.launch.main({args[3:]!r}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", racer], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(3)]
    time.sleep(3)  # every racer imported and spinning
    go.touch()
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    won = [r for r in results if r[0] == 0]
    lost = [r for r in results if r[0] != 0]
    assert len(won) == 1 and len(lost) == 2, results
    for code, _out, err in lost:
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: run:") and (
            "another launch of race is running right now" in err or "is live as job" in err
        ), err
    submitted = events(run_dir, "submitted")
    assert len(submitted) == 1 and f"submitted job {submitted[0]['job_id']}" in won[0][1]
    jobs = subprocess.run(["squeue", "-h", "-o", "%i", "-n", "justrl-race"], capture_output=True, text=True,
                          check=True).stdout.split()
    try:
        assert jobs == [str(submitted[0]["job_id"])], jobs
        from justrl_hpc.core import run_folder as rundir

        assert rundir.load(run_dir).run.name == "race"  # the winner's run.yaml, whole
    finally:
        subprocess.run(["scancel", *jobs], check=False)


@pytest.mark.timeout(200)
def test_a_chunk_without_room_for_the_next_checkpoint_stops_and_says_so(devcluster, rehearsal_data, tmp_path):
    """The disk fills between launch and a chunk: the chunk checks again before training, and stops."""
    import yaml

    run_dir = tmp_path / "nodisk"
    out = run_launch(launch_args(rehearsal_data, run_dir, "--create-only", steps=4, time_limit=3), timeout=120)
    assert out.returncode == 0, out.stderr
    conf = yaml.safe_load((run_dir / "run.yaml").read_text())
    conf["cluster"]["min_free_disk_gb"] = 1e6  # as if the filesystem had filled up since
    (run_dir / "run.yaml").write_text(yaml.safe_dump(conf))
    out = run_launch([sys.executable, "-m", "justrl_hpc.launch", "--resume", str(run_dir), "--wait"], timeout=180)
    assert out.returncode == 1, out.stdout[-2000:]
    failed = events(run_dir, "failed")
    assert len(failed) == 1 and "GB free" in failed[0]["reason"] and "min_free_disk_gb" in failed[0]["reason"]
    assert not events(run_dir, "trainer-started")
