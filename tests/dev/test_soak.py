"""The chaos soak's own parts: its seeded schedule and its judgement, on a real recorded rehearsal run
(tests/data/rehearsal-run: 120 steps, 15 chunks, verl's own TensorBoard files). The soak itself runs by hand
(`bash scripts/soak.sh`, minutes per chunk); BENCHMARKS.md has its results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from justrl_hpc.dev.soak import schedule, verdict

RUN = Path(__file__).resolve().parents[1] / "data" / "rehearsal-run"


def test_the_schedule_is_the_seeds_and_covers_the_catalogue():
    a, b = schedule.draw(7, 16), schedule.draw(7, 16)
    assert a == b and a != schedule.draw(8, 16)
    assert {f.kind for f in a} == set(schedule.CATALOGUE)  # 14 faults over 15 chunks: every kind at least once
    for seed in range(40):  # a second bad node would exceed what a 2-node job may leave out
        assert sum(f.kind in schedule.ONCE for f in schedule.draw(seed, 16)) == 1
    assert all(1 <= f.chunk < 16 for f in a) and len({f.chunk for f in a}) == len(a)  # the last chunk finishes
    assert all(f.moment in schedule.CATALOGUE[f.kind] for f in a)
    assert schedule.loads(schedule.dumps(a)) == a


def copy_run(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    root = tmp_path
    (root / "faults.jsonl").write_text("")
    return run, root


def test_a_clean_run_passes_and_its_counts_are_zero(tmp_path):
    run, root = copy_run(tmp_path)
    alerts = [{"run": "r", "rule": "S1-stall", "severity": "warn", "key": "S1-stall:x", "message": "m",
               "state": "firing", "step": 3}]
    result = verdict.judge(run, root, 120, [], 15)
    assert result["passed"] and result["finished"] and result["chunks"] == 15, result
    assert result["steps_lost_unexpected"] == result["steps_duplicated"] == result["steps_retrained"] == 0
    assert result["alerts_missing"] == result["alerts_unexpected"] == 0
    assert not verdict.judge(run, root, 120, [], 16)["passed"]  # fewer chunks than asked for
    # An alert no fault explains, and one that never reached the webhook.
    (run / "alerts.jsonl").write_text(json.dumps(alerts[0]) + "\n")
    result = verdict.judge(run, root, 120, [], 15)
    assert not result["passed"] and result["alerts_unexpected"] == 1 and result["alerts_missing"] == 1, result
    (root / "webhook.jsonl").write_text(json.dumps({"time": 0, "text": verdict._one_line(alerts[0])}) + "\n")
    assert verdict.judge(run, root, 120, [], 15)["alerts_missing"] == 0


def test_a_step_twice_or_missing_in_tensorboard_fails(tmp_path):
    run, root = copy_run(tmp_path)
    writer = SummaryWriter(str(run / "tensorboard"))
    writer.add_scalar("critic/score/mean", 0.5, 9)  # a step logged again that no fault retrained
    writer.close()
    result = verdict.judge(run, root, 120, [], 15)
    assert result["steps_duplicated"] == 1 and not result["passed"], result
    run2, root2 = copy_run(tmp_path / "second")
    first = sorted((run2 / "tensorboard").glob("events.out.tfevents.*"))[0]
    first.unlink()  # chunk 1's steps gone from TensorBoard
    result = verdict.judge(run2, root2, 120, [], 15)
    assert result["steps_lost_unexpected"] == 7 and not result["passed"], result


def test_a_host_ram_trend_is_reported_and_a_host_ram_level_fails(tmp_path):
    """The four simulated nodes share one host: its RAM trend is listed (alerts_shared_host), never failed on;
    RAM used past its fraction still fails."""
    run, root = copy_run(tmp_path)
    trend = {"run": "r", "rule": "G12-memory", "severity": "warn", "key": "G12-memory:n1:ram-trend",
             "message": "n1: host RAM rising 18.5 GiB/h; out of memory in ~40 min", "state": "firing", "step": None}
    level = dict(trend, key="G12-memory:n1:ram", message="n1: host RAM 93% used (22 of 24 GiB)")
    posts = root / "webhook.jsonl"
    posts.write_text(json.dumps({"time": 0, "text": verdict._one_line(trend)}) + "\n")
    (run / "alerts.jsonl").write_text(json.dumps(trend) + "\n")
    result = verdict.judge(run, root, 120, [], 15)
    assert result["passed"] and result["alerts_shared_host"] == 1 and result["alerts_unexpected"] == 0, result
    assert any("18.5 GiB/h" in n for n in result["notes"])
    with open(posts, "a") as fh:
        fh.write(json.dumps({"time": 0, "text": verdict._one_line(level)}) + "\n")
    (run / "alerts.jsonl").write_text(json.dumps(trend) + "\n" + json.dumps(level) + "\n")
    result = verdict.judge(run, root, 120, [], 15)
    assert not result["passed"] and result["alerts_unexpected"] == 1, result


def test_recovery_counts_and_a_hang_without_its_stacks_fails(tmp_path):
    """The summary's new fields from the ledger: in-job restarts, nodes left out (at once, and readmitted), hang
    stack folders that hold verl's frames from both nodes; a hang whose folder is empty fails the verdict."""
    run, root = copy_run(tmp_path)
    ledger = run / "ledger.jsonl"
    end = json.loads(ledger.read_text().splitlines()[-1])["time"]
    folder = run / "logs" / "stacks" / "t1"
    folder.mkdir(parents=True)
    for node in ("n1", "n2"):
        (folder / f"index-{node}.json").write_text("{}")
        (folder / f"{node}-10.txt").write_text('File ".../verl/trainer/ppo/ray_trainer.py", line 1 in fit\n')
    extra = [
        {"event": "restarted-in-job", "time": end, "job_id": "149", "chunk": 15, "step": 118},
        {"event": "excluded", "time": end, "job_id": "149", "chunk": 15, "nodes": "n2", "until": 4e9},
        {"event": "readmitted", "time": end, "job_id": "150", "chunk": None, "nodes": "n2"},
        {"event": "excluded", "time": end, "job_id": "150", "chunk": 15, "nodes": "n3", "until": 4e9},
        {"event": "hang", "time": end, "job_id": "149", "chunk": 15, "step": 118, "stacks": "logs/stacks/t1"},
    ]
    with open(ledger, "a") as fh:
        fh.writelines(json.dumps(e) + "\n" for e in extra)
    result = verdict.judge(run, root, 120, [], 15)
    assert (result["in_job_restarts"], result["nodes_excluded"], result["max_nodes_excluded_at_once"],
            result["hang_stacks"]) == (1, 2, 1, 1), result
    assert result["passed"], result
    with open(ledger, "a") as fh:
        fh.write(json.dumps({**extra[-1], "stacks": "logs/stacks/missing"}) + "\n")
    result = verdict.judge(run, root, 120, [], 15)
    assert result["hang_stacks"] == 1 and not result["passed"], result
    assert any("logs/stacks/missing has 0 stack files from 0 nodes" in n for n in result["notes"]), result["notes"]


def test_the_planted_faults_are_what_the_real_replay_backend_and_preflight_read(tmp_path):
    """bad-node's row remap is hard evidence in the preflight's own GPU checks; driver-upgrade changes the driver
    the preflight records (what E1-env-drift compares); the other nodes stay healthy."""
    from justrl_hpc.core.config_files import resolve
    from justrl_hpc.dev.soak import inject, run
    from justrl_hpc.jobs.train import kernel_log, preflight

    folder = run.write_recordings(tmp_path / "nvml", ("n1", "n2"))
    res = resolve("rehearsal", "dev", [])

    def read(node: str):
        reading, inventory = preflight.read_gpus(preflight.backend_for(f"replay:{folder}/nvml-{node}.jsonl"))
        failed = [k for k in preflight.gpu_checks(res, reading, inventory, kernel_log.KernelXids())
                  if not k.ok]
        return inventory["driver"], failed

    assert read("n1") == ("535.183.01", []) and read("n2") == ("535.183.01", [])
    # Healthy nodes: no GPU rule fires on a whole replay of one (the recording's GPU 6 power throttling left out).
    from justrl_hpc.monitor.agent.sampler import samples_from_recording
    from justrl_hpc.monitor.rules import gpu as gpu_rules

    samples = samples_from_recording(folder / "nvml-n1.jsonl", host="n1", start=1_800_000_000.0)
    assert len(samples) == run.HEALTHY_READINGS
    assert [f.key for f in gpu_rules.evaluate({"n1": samples}, samples[-1]["time"] + 5)] == []
    first = {g["index"]: g for g in samples[0]["gpus"]}
    assert all(g.get(k) == first[g["index"]].get(k) for r in samples for g in r["gpus"] for k in run.VIOLATION_COUNTERS)
    inject.plant_row_remap_failure(folder / "nvml-n2.jsonl")
    driver, failed = read("n2")
    assert [(k.name, k.hard) for k in failed] == [("gpu-remap", True)], failed
    assert read("n1")[1] == []
    target = inject.Target(tmp_path, "1", ["n1", "n2"], None, tmp_path, lambda: 0, tmp_path / "f", folder)
    inject.driver_upgrade(target)
    assert read("n1") == ("550.54.15", [])


def test_a_fault_whose_chunk_went_by_moves_to_the_current_chunk_if_it_has_none(tmp_path):
    """Seed 1: the chunk after bad-node's is the one that leaves the node out, over within a second; its
    save-now never fired. It now moves on to the next chunk without a fault of its own."""
    from justrl_hpc.dev.soak.run import Soak

    soak = Soak(1, 16, 6, tmp_path)
    soak.by_chunk = {3: schedule.Fault(3, "bad-node", "train", 1.0), 4: schedule.Fault(4, "save-now", "train", 2.0),
                     6: schedule.Fault(6, "hang", "train", 3.0)}
    soak.fired_chunks = {3: 0.0}
    done: set[int] = {3}
    soak._carry_over(5, done)
    assert soak.by_chunk[5] == schedule.Fault(5, "save-now", "train", 2.0) and 4 in done
    soak._carry_over(7, done)  # chunk 5's and 6's went by too; 7 gets the first, the other is skipped
    assert soak.by_chunk[7].kind == "save-now" and {5, 6} <= done


def test_a_fault_whose_chunk_ended_first_moves_to_the_next_chunk_without_one_of_its_own(tmp_path):
    """Seed 3: chunk 7 left the bad node out before its kill9-in-save could fire."""
    from justrl_hpc.dev.soak.run import Soak

    soak = Soak(3, 16, 6, tmp_path)
    soak.by_chunk = {7: schedule.Fault(7, "kill9-in-save", "train", 2.0), 9: schedule.Fault(9, "hang", "train", 1.0)}
    soak._move_on(7, soak.by_chunk[7])
    assert soak.by_chunk[8] == schedule.Fault(8, "kill9-in-save", "train", 2.0)
    soak._move_on(8, soak.by_chunk[8])  # chunk 9 has its own: the next one without (seed 2 skipped it)
    assert soak.by_chunk[9].kind == "hang" and soak.by_chunk[10].kind == "kill9-in-save"
    soak._move_on(15, schedule.Fault(15, "disk-full", "train", 1.0))  # a run has more chunks than asked
    assert soak.by_chunk[16].kind == "disk-full"
    soak._move_on(18, schedule.Fault(18, "hang", "train", 1.0))  # past the spare chunks: skipped
    assert 19 not in soak.by_chunk


@pytest.mark.parametrize(
    ("kind", "events", "due"),
    [
        # seed 2, 2026-12-07: the chunk requeued at its limit signal with no trainer-exited line: freed anyway
        ("disk-full", [("started", 1), ("requeued", 1)], True),
        ("disk-full", [("started", 1), ("trainer-exited", 1)], True),
        ("disk-full", [("started", 1), ("step", 1)], False),
        ("disk-full", [("started", 1), ("started", 2)], True),  # a later chunk at the latest
        ("node-lost", [("started", 1), ("requeued", 1)], False),
        ("node-lost", [("started", 1), ("started", 2)], True),
        ("bad-node", [("started", 2), ("started", 3)], False),
        ("bad-node", [("excluded", 2)], True),
        ("bad-node", [("started", 4)], True),
        ("kill9-in-save", [("started", 1), ("failed", 1)], True),
    ],
)
def test_a_faults_damage_is_repaired_when_its_chunk_is_over(kind, events, due):
    from justrl_hpc.dev.soak.run import undo_due

    assert undo_due(kind, 1, [{"event": e, "chunk": c} for e, c in events]) is due


def test_the_pace_follows_a_fault_beside_the_chunk_at_once_and_waits_for_one_that_stops_it():
    # A fault beside the chunk leaves its trainer training: a 20 s wait at ~1 s a step let chunks train 15-21
    # steps (seed 2, 2026-12-07); one that stops or kills the trainer needs the time to show in the ledger.
    assert [schedule.pace_wait_s(k) for k in ("ctld-restart", "daemon-restart", "driver-upgrade")] == [0, 0, 0]
    assert all(schedule.pace_wait_s(k) == 20 for k in schedule.CATALOGUE if k not in schedule.BESIDE)
    assert set(schedule.BESIDE) <= set(schedule.CATALOGUE)


@pytest.mark.parametrize(
    ("taken", "after", "want"),
    [
        ({12, 13, 14, 15}, 13, 16),  # seed 2: chunk 13's trainer-crash, 14 and 15 holding their own
        ({14}, 13, 15),
        (set(), 13, 14),
        ({14, 15, 16, 17, 18}, 13, None),  # past the spare chunks: skipped, and the verdict shows the kind missing
    ],
)
def test_a_fault_whose_chunk_ended_first_moves_to_the_next_chunk_without_one(taken, after, want):
    assert schedule.next_free(taken, after, 16) == want
