"""The chaos soak's own parts: its seeded schedule and its judgement, on a real recorded rehearsal run
(tests/data/rehearsal-run: 120 steps, 15 chunks, verl's own TensorBoard files). The soak itself runs by hand
(`bash scripts/soak.sh`, minutes per chunk); BENCHMARKS.md has its results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from justrl_hpc.dev.soak import schedule, verdict

RUN = Path(__file__).resolve().parents[1] / "data" / "rehearsal-run"


def test_the_schedule_is_the_seeds_and_covers_the_catalogue():
    a, b = schedule.draw(7, 16), schedule.draw(7, 16)
    assert a == b and a != schedule.draw(8, 16)
    assert {f.kind for f in a} == set(schedule.CATALOGUE)  # 11 faults over 15 chunks: every kind at least once
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
