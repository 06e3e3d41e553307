"""Steps in TensorBoard count as logged where a trainer ends (jobs/train/logged_steps.py).

The event files are written by torch's SummaryWriter, the writer verl's TensorBoard logger uses; the ledger
and the checkpoint folder are the real ones (core/ledger.py, core/checkpoints.py, torch.save's zip files).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from justrl_hpc.core import checkpoints
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.jobs.train.logged_steps import record_unseen, tensorboard_steps


def write_steps(folder: Path, steps: range) -> None:
    writer = SummaryWriter(str(folder))
    for step in steps:
        writer.add_scalar("critic/score/mean", 0.5, step)
        writer.add_scalar("actor/entropy", 1.2, step)
    writer.close()


def save_checkpoint(ckpt_dir: Path, step: int) -> None:
    actor = ckpt_dir / f"global_step_{step}" / "actor"
    actor.mkdir(parents=True)
    for kind in checkpoints.KINDS:
        torch.save({"w": torch.zeros(4)}, actor / f"{kind}_world_size_1_rank_0.pt")
    torch.save({"step": step}, actor.parent / "data.pt")
    checkpoints.write_tracker(ckpt_dir, step)


def test_reads_verls_own_event_files_only_those_since_and_survives_a_cut_record(tmp_path):
    tb = tmp_path / "tensorboard"
    write_steps(tb, range(1, 4))
    old = next(tb.glob("events.out.tfevents.*"))
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    since = time.time() - 60
    write_steps(tb, range(4, 9))
    write_steps(tb / "monitor", range(90, 100))  # the monitor's own file below: not verl's steps
    assert tensorboard_steps(tb, since) == set(range(4, 9))
    assert tensorboard_steps(tb) == set(range(1, 9))
    newest = max(tb.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    data = newest.read_bytes()
    newest.write_bytes(data[:-7])  # a kill in the middle of the last record
    assert set(range(4, 8)) <= tensorboard_steps(tb, since) <= set(range(4, 9))
    assert tensorboard_steps(tmp_path / "absent") == set()


def test_a_step_in_tensorboard_but_not_in_the_console_is_resumed_from_not_retrained(tmp_path):
    """The save-now chunk that CI saw: verl saved step 8 and logged it to TensorBoard, the trainer was stopped
    before Ray forwarded step 8's console line. From the console alone the next chunk sets checkpoint 8 aside
    and trains step 8 twice; with TensorBoard's steps recorded, it resumes from 8."""
    run = tmp_path / "run"
    ledger = Ledger(run / "ledger.jsonl")
    started = time.time()
    ledger.append("trainer-started", job_id="7", chunk=0, step=0)
    for step in range(1, 8):  # the console lines that arrived
        ledger.append("step", job_id="7", chunk=0, step=step)
    write_steps(run / "tensorboard", range(1, 9))
    ckpt = run / "checkpoints"
    for step in (6, 8):
        save_checkpoint(ckpt, step)

    console_only = tmp_path / "console-only"
    shutil.copytree(run, console_only)
    decision = checkpoints.prepare_resume(console_only / "checkpoints", 1, Ledger(console_only / "ledger.jsonl"))
    assert decision.step == 6 and decision.skipped == [8]  # the hole this fixes: step 8 would be trained twice

    assert record_unseen(ledger, run / "tensorboard", started, 7, "7", 0) == [8]
    assert record_unseen(ledger, run / "tensorboard", started, 8, "7", 0) == []  # once only
    recorded = [e for e in ledger.read() if e["event"] == "step" and e.get("source") == "tensorboard"]
    assert [e["step"] for e in recorded] == [8]
    decision = checkpoints.prepare_resume(ckpt, 1, ledger)
    assert decision.step == 8 and decision.skipped == []


def test_when_every_save_was_never_logged_the_run_starts_over_and_a_lost_logged_save_still_fails(tmp_path):
    """CI's exclude test on a slow machine: the last step's save landed, the budget ran out before its log, so
    step 2 was saved but only step 1 logged, and no older save existed. That chunk's successor failed with
    "no verified checkpoint is left" although nothing was lost: the one save is set aside, still on disk, and
    the run starts from step 0. A save of a logged step that is gone is still a loss and still stops the run."""
    run = tmp_path / "run"
    ledger = Ledger(run / "ledger.jsonl")
    ledger.append("step", job_id="26", chunk=2, step=1)
    save_checkpoint(run / "checkpoints", 2)
    ledger.append("saved", job_id="26", chunk=2, step=2)
    decision = checkpoints.prepare_resume(run / "checkpoints", 1, ledger, job_id="26", chunk=3)
    assert decision.ok and decision.step is None and decision.skipped == [2], decision
    assert [p.name.split(".")[1].split("-")[0] for p in (run / "checkpoints").glob("global_step_2.*")] == ["unlogged"]
    assert checkpoints.prepare_resume(run / "checkpoints", 1, ledger).ok  # and again at the next chunk

    lost = tmp_path / "lost"
    ledger = Ledger(lost / "ledger.jsonl")
    for step in (1, 2):
        ledger.append("step", job_id="26", chunk=1, step=step)
    ledger.append("saved", job_id="26", chunk=1, step=2)
    (lost / "checkpoints").mkdir(parents=True)  # the folder emptied by hand
    decision = checkpoints.prepare_resume(lost / "checkpoints", 1, ledger)
    assert not decision.ok and "saves up to step 2" in decision.reason


def test_retention_keeps_the_save_a_resume_falls_back_to(tmp_path):
    """keep_last=1 deletes all but the newest save; when the newest is not logged yet the driver protects the
    newest logged one (driver._retention), so setting the unlogged one aside leaves something to resume."""
    ckpt = tmp_path / "checkpoints"
    for step in (5, 6, 7):
        save_checkpoint(ckpt, step)
    assert checkpoints.apply_retention(ckpt, 1, keep_last=1, keep_every=0, protect={6}) == ["global_step_5"]
    assert checkpoints.verified_steps(ckpt, 1) == [6, 7]


def test_after_a_retrain_a_stops_last_step_in_tensorboard_only_still_counts(tmp_path):
    """The soak's seed 2 (2026-12-07): the first trainer logged steps 1-9 and crashed before any save; the next
    trainers retrained from 0; one was stopped with step 7 saved and in TensorBoard but its console line lost.
    "Known" was the run's newest logged step (9, the dead trajectory's), so step 7 was ignored, the save at 7 set
    aside as never logged, and step 7 trained again. What the latest trainer itself logged is what counts."""
    from justrl_hpc.jobs.train.logged_steps import latest_trainer_logged

    run = tmp_path / "run"
    ledger = Ledger(run / "ledger.jsonl")
    ledger.append("trainer-started", job_id="7", chunk=1, step=0)
    for step in range(1, 10):
        ledger.append("step", job_id="7", chunk=1, step=step)
    ledger.append("trainer-exited", job_id="7", chunk=1, step=9, reason="crashed-disk")
    assert latest_trainer_logged(ledger.read()) == 9
    started = time.time()
    ledger.append("trainer-started", job_id="7", chunk=3, step=3)
    for step in range(4, 7):
        ledger.append("step", job_id="7", chunk=3, step=step)
    assert latest_trainer_logged(ledger.read()) == 6  # not 9
    write_steps(run / "tensorboard", range(4, 8))
    ckpt = run / "checkpoints"
    for step in (6, 7):
        save_checkpoint(ckpt, step)
    known = latest_trainer_logged(ledger.read())
    assert record_unseen(ledger, run / "tensorboard", started, known, "7", 3) == [7]
    decision = checkpoints.prepare_resume(ckpt, 1, ledger)
    assert decision.step == 7 and decision.skipped == []
    # With the run's newest logged step as "known", as before, nothing in TensorBoard was newer: 7 went unrecorded.
    assert not [s for s in tensorboard_steps(run / "tensorboard", started - 1) if s > checkpoints.logged_steps(ledger)]
    assert latest_trainer_logged([]) == 0


# The tags of one of verl's training steps (the soak's files have 100), a few kinds; validation steps add val-*.
TRAIN_TAGS = [f"{group}/{i}" for group in ("global_seqlen", "actor", "critic/score", "perf", "timing_s")
              for i in range(6)]


def write_verl_steps(folder: Path, steps: list[int], cut_last_at: int | None = None, val: tuple[int, ...] = (),
                     saved: tuple[int, ...] = (), val_only: tuple[int, ...] = ()) -> None:
    """Steps as verl's TensorBoard logger writes them, one scalar per metric; the last step stopped after
    `cut_last_at` of its scalars as a trainer stopped mid-step leaves it."""
    writer = SummaryWriter(str(folder))
    for step in steps:
        tags = ([f"val-core/acc/{i}" for i in range(3)] if step in val + val_only else [])
        tags += [] if step in val_only else TRAIN_TAGS
        tags += ["timing_s/save_checkpoint"] if step in saved else []
        if step == steps[-1] and cut_last_at is not None:
            tags = tags[:cut_last_at]
        for tag in tags:
            writer.add_scalar(tag, 0.5, step)
    writer.close()


def test_a_step_cut_in_the_middle_of_its_scalars_is_not_logged(tmp_path):
    """The soak's seed 2 (2026-12-07, third run): a chunk stopped while verl wrote step 74 left 8 of its 101
    scalars, without critic/score/mean. Counted as logged, the next chunk resumed from save 74 and step 74's
    curves were never written. A step counts only when it has every training tag the complete steps have;
    validation tags, a save's timing and a validation-only step (step 0, or the step a trainer starts from) are
    not required and not counted."""
    tb = tmp_path / "tensorboard"
    write_verl_steps(tb, [0, 71, 72, 73, 74], cut_last_at=8, val=(72,), saved=(73,), val_only=(0,))
    assert tensorboard_steps(tb) == {71, 72, 73}

    # The trainer after it, retraining 74: complete, its last step too (the reference is its own earlier steps).
    write_verl_steps(tmp_path / "second", [73, 74, 75], val_only=(73,))
    assert tensorboard_steps(tmp_path / "second") == {74, 75}

    # A file of one step is judged against the newest earlier file; with no earlier file it does not count.
    since = time.time() + 1
    os.utime(next(tb.glob("events.*")), (since - 60, since - 60))
    time.sleep(0.01)
    write_verl_steps(tb, [74], saved=(74,))
    for path in tb.glob("events.*"):
        if path.stat().st_mtime > since - 30:
            os.utime(path, (since + 5, since + 5))
    assert tensorboard_steps(tb, since) == {74}  # has every training tag of 71-73, plus a save's timing
    write_verl_steps(tmp_path / "alone", [1])
    assert tensorboard_steps(tmp_path / "alone") == set()

    # Where the trainer ends: the cut step is not recorded, so its save is set aside and the step trained again.
    run = tmp_path / "run"
    ledger = Ledger(run / "ledger.jsonl")
    started = time.time()
    ledger.append("trainer-started", job_id="9", chunk=4, step=70)
    for step in range(71, 74):
        ledger.append("step", job_id="9", chunk=4, step=step)
    write_verl_steps(run / "tensorboard", [70, 71, 72, 73, 74], cut_last_at=8, val_only=(70,))
    for step in (72, 74):
        save_checkpoint(run / "checkpoints", step)
    assert record_unseen(ledger, run / "tensorboard", started, 73, "9", 4) == []
    decision = checkpoints.prepare_resume(run / "checkpoints", 1, ledger)
    assert decision.step == 72 and decision.skipped == [74]
