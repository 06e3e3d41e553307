"""Evaluation along the run (core/eval_along.py): what is submitted when, and what retention keeps for it, as
tables of facts; and a refused submission, through the real `launch --job evaluate`, recorded and retried."""

from __future__ import annotations

from pathlib import Path

import pytest

from justrl_hpc.core import eval_along
from justrl_hpc.core.eval_along import FINISHED, SUBMITTED, Facts, facts_from, next_step, protected

REPO = Path(__file__).resolve().parents[2]


def facts(kept=(), done=(), submitted=(), gave_up=(), open_steps=()) -> Facts:
    return Facts(tuple(kept), frozenset(done), frozenset(submitted), frozenset(gave_up), frozenset(open_steps))


@pytest.mark.parametrize(
    ("f", "every", "want"),
    [
        (facts(kept=(100, 200, 250)), 0, None),  # off
        (facts(kept=(100, 200, 250)), 250, 250),
        (facts(kept=(250, 500)), 250, 250),  # the oldest first
        (facts(kept=(250, 500), done={250}), 250, 500),
        (facts(kept=(250, 500), submitted={250}, open_steps={250}), 250, None),  # one at a time
        (facts(kept=(250, 500), submitted={250}), 250, 500),  # 250's job ended: the next
        (facts(kept=(250, 500), submitted={250}, gave_up={250}), 250, 500),  # failed: not retried by itself
        (facts(kept=(0, 240, 260)), 250, None),  # no multiple kept (step 0 is the base model)
        (facts(kept=(500,), done={500}), 250, None),  # nothing left
    ],
)
def test_what_is_submitted_next(f: Facts, every: int, want: int | None) -> None:
    assert next_step(f, every) == want


@pytest.mark.parametrize(
    ("f", "every", "want"),
    [
        (facts(kept=(250, 260, 270)), 250, {250}),
        (facts(kept=(250, 500), done={250}), 250, {500}),
        (facts(kept=(250, 500), gave_up={250}), 250, {500}),  # a job that ended without results: no longer kept
        (facts(kept=(250, 500, 750, 1000, 1250)), 250, {250, 500, 750}),  # bounded: MAX_PROTECTED, oldest first
        (facts(kept=(250, 500)), 0, set()),
    ],
)
def test_what_retention_keeps_for_an_evaluation(f: Facts, every: int, want: set[int]) -> None:
    assert eval_along.MAX_PROTECTED == 3
    assert protected(f, every) == want


def ev(event: str, step: int, job: str | None, ok: bool | None = None) -> dict:
    return {"event": event, "step": step, "eval_job": job, **({"ok": ok} if ok is not None else {})}


@pytest.mark.parametrize(
    ("events", "done", "active", "open_steps", "gave_up", "ended"),
    [
        ([ev(SUBMITTED, 250, "41")], (), {"41": True}, {250}, set(), {}),
        ([ev(SUBMITTED, 250, "41")], (), {"41": False}, set(), {250}, {"41": 250}),  # killed before it said so
        ([ev(SUBMITTED, 250, "41")], (), None, {250}, set(), {}),  # Slurm not answering: still open
        ([ev(SUBMITTED, 250, "41")], (250,), {"41": False}, set(), set(), {}),  # its results are there
        ([ev(SUBMITTED, 250, "41"), ev(FINISHED, 250, "41", True)], (250,), {"41": True}, set(), set(), {}),
        ([ev(SUBMITTED, 250, "41"), ev(FINISHED, 250, "41", False)], (), {}, set(), {250}, {}),
        # A refused submission: no job, not submitted, asked again next time.
        ([ev(FINISHED, 250, None, False)], (), {}, set(), set(), {}),
    ],
)
def test_facts_from_the_ledger_and_slurm(events, done, active, open_steps, gave_up, ended) -> None:
    got, found = facts_from(events, (250, 500), done, None if active is None else active.__getitem__)
    assert (set(got.open_steps), set(got.gave_up), found) == (open_steps, gave_up, ended)
    assert next_step(got, 250) == (None if open_steps else next(
        (s for s in (250, 500) if s not in got.done and s not in got.submitted), None))


def test_the_submission_does_not_carry_the_submitting_jobs_slurm_environment(monkeypatch) -> None:
    for key, value in {"SLURM_JOB_ID": "7", "SLURM_CONF": "/etc/dev/slurm.conf", "SRUN_CPUS_PER_TASK": "2",
                       "RAY_ADDRESS": "10.0.0.1:6379", "SUBMITIT_FOLDER": "/x", "HOME": "/root",
                       "JUSTRL_RUN_MARK": "a1b2/7/0/n1", "JUSTRL_RUN_DIR": "/runs/x", "JUSTRL_CONTROL_DIR": "/runs/x/c",
                       "TENSORBOARD_DIR": "/runs/x/tb", "JUSTRL_VERL_CPU": "1"}.items():
        monkeypatch.setenv(key, value)
    env = eval_along.submission_env()
    assert env["SLURM_CONF"] == "/etc/dev/slurm.conf" and env["HOME"] == "/root" and env["JUSTRL_VERL_CPU"] == "1"
    assert not {"SLURM_JOB_ID", "SRUN_CPUS_PER_TASK", "RAY_ADDRESS", "SUBMITIT_FOLDER", "JUSTRL_RUN_MARK",
                "JUSTRL_RUN_DIR", "JUSTRL_CONTROL_DIR", "TENSORBOARD_DIR"} & set(env)


def test_a_refused_submission_is_recorded_never_raised_and_asked_again(tmp_path: Path, monkeypatch) -> None:
    """`launch --job evaluate` for real, refusing (a save without verl's huggingface/ folder, a data folder that
    does not exist): the chunk's call returns, the ledger says why in the job's own `error:` line, and the step
    is still due (and still kept) for the next look."""
    from justrl_hpc.core import config_files, run_folder
    from justrl_hpc.core.ledger import Ledger

    run_dir = tmp_path / "run"
    resolved = config_files.resolve("rehearsal", "dev", [f"run.run_dir={run_dir}", "run.eval_every=5"], "along")
    resolved.run.eval_args = ["--data", str(tmp_path / "absent"), "--judge", "none"]
    run_folder.create(resolved, run_dir)
    step_dir = run_dir / "checkpoints" / "global_step_5" / "actor"
    step_dir.mkdir(parents=True)
    import torch

    from justrl_hpc.core import checkpoints

    for rank in range(resolved.recipe.world_size):
        for kind in checkpoints.KINDS:
            torch.save({"w": torch.zeros(2)}, step_dir / f"{kind}_world_size_{resolved.recipe.world_size}_rank_{rank}.pt")
    torch.save({}, step_dir.parent / "data.pt")
    lines: list[str] = []
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    assert eval_along.submit_due(run_dir, "12", 3, None, lines.append) is None
    finished = [e for e in Ledger(run_dir).read() if e["event"] == FINISHED]
    assert len(finished) == 1 and finished[0]["ok"] is False, finished
    assert finished[0]["why"].startswith("not submitted: error: --"), finished
    assert "evaluation not submitted" in lines[0] and "python -m justrl_hpc.launch --job evaluate" in lines[0]
    assert eval_along.known_protected(run_dir, resolved.recipe.world_size, 5) == {5}
    assert eval_along.gather(run_dir, resolved.recipe.world_size, None)[0].submitted == frozenset()


def test_launch_wait_names_an_evaluate_job_by_its_own_id() -> None:
    """Its events carry no job_id (the chain's job is the newest job_id `launch --wait` follows)."""
    from justrl_hpc.launcher.submit import format_event

    line = format_event({"event": FINISHED, "time": "T", "job_id": None, "chunk": None, "step": 10,
                         "eval_job": "146", "ok": True, "average": 45.8333, "host": "n3", "pid": 1})
    assert line == "T evaluate job 146: eval-finished step 10 ok=True average=45.8333"
    line = format_event({"event": SUBMITTED, "time": "T", "job_id": "145", "chunk": 3, "step": 10, "eval_job": "146"})
    assert line == "T job 145 chunk 3: eval-submitted step 10 eval_job=146"
