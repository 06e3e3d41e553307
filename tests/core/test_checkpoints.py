"""Retention of set-aside checkpoints (core/checkpoints.py): a `global_step_N.unlogged-T` or `.torn-T` folder is
removed once a verified save of a later step exists, and kept until then.

The checkpoints are real torch.save zip files in verl's layout; the set-aside ones are made by prepare_resume
itself where it can (a save newer than the ledger's newest logged step), by hand where it cannot in a test (a
torn save: a shard cut short).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from justrl_hpc.core import checkpoints
from justrl_hpc.core.ledger import Ledger


def save(ckpt_dir: Path, step: int, name: str | None = None) -> Path:
    step_dir = ckpt_dir / (name or f"global_step_{step}")
    (step_dir / "actor").mkdir(parents=True)
    for kind in checkpoints.KINDS:
        torch.save({"w": torch.zeros(64)}, step_dir / "actor" / f"{kind}_world_size_1_rank_0.pt")
    torch.save({"step": step}, step_dir / "data.pt")
    return step_dir


def log_steps(ledger: Ledger, last: int) -> None:
    for step in range(1, last + 1):
        ledger.append("step", job_id="9", chunk=1, step=step)


@pytest.mark.parametrize(
    ("set_aside", "verified", "removable"),
    [
        ({}, [5, 6], []),
        ({"global_step_7.unlogged-100": 7}, [5, 6], []),  # newer than every verified save: the newest copy of 7
        ({"global_step_7.unlogged-100": 7}, [6, 7], []),  # step 7 saved again: still no *later* save
        ({"global_step_7.unlogged-100": 7}, [6, 8], ["global_step_7.unlogged-100"]),
        ({"global_step_7.torn-100": 7, "global_step_9.torn-101": 9}, [8], ["global_step_7.torn-100"]),
        ({"global_step_7.torn-100": 7, "global_step_7.unlogged-99": 7}, [10],
         ["global_step_7.torn-100", "global_step_7.unlogged-99"]),
        ({"global_step_3.torn-100": 3}, [], []),  # nothing verified at all: keep everything
    ],
)
def test_which_set_aside_folders_a_later_verified_save_makes_removable(set_aside, verified, removable):
    assert checkpoints.removable_set_aside(set_aside, verified) == removable


def test_retention_removes_set_aside_saves_once_a_later_verified_save_exists(tmp_path: Path) -> None:
    """The pile-up issue 22 saw: every chunk start that set a save aside left ~21 GB that retention, matching
    only global_step_N, never deleted."""
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    ledger = Ledger(run)
    log_steps(ledger, 6)
    for step in (5, 6, 7):
        save(ckpt, step)
    decision = checkpoints.prepare_resume(ckpt, 1, ledger, job_id="9", chunk=2)
    assert decision.step == 6 and decision.skipped == [7]  # 7 was saved but never logged
    unlogged = next(ckpt.glob("global_step_7.unlogged-*"))
    torn = save(ckpt, 7, "global_step_7.torn-1")
    (torn / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"PK\x03\x04cut short")
    assert set(checkpoints.set_aside_dirs(ckpt)) == {unlogged.name, torn.name}

    # Nothing later than step 7 is verified yet: a person may still want what 7 holds.
    assert checkpoints.apply_retention(ckpt, 1, keep_last=2, keep_every=0) == []
    assert unlogged.is_dir() and torn.is_dir()

    save(ckpt, 8)
    deleted = checkpoints.apply_retention(ckpt, 1, keep_last=2, keep_every=0)
    assert deleted == ["global_step_5", torn.name, unlogged.name]
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["global_step_6", "global_step_8"]

    # A set-aside save newer than every verified one stays, whatever else retention deletes.
    later = save(ckpt, 12, "global_step_12.unlogged-2")
    save(ckpt, 9)
    # (6 stays too: the tracker names it, where the next chunk resumes.)
    assert checkpoints.apply_retention(ckpt, 1, keep_last=1, keep_every=0) == ["global_step_8"]
    assert later.is_dir()


def _events(*items: tuple) -> list[dict]:
    return [{"event": "trainer-started", "step": a} if kind == "start" else {"event": "step", "step": a}
            for kind, a in items]


# The soak's sequence (seed 2, 2026-12-07): a trainer from 5 logged 6–9 and crashed on a full disk before saving 9;
# the next, also from 5, logged 6–8, saved 9 and was killed before logging it. Step 9 is in the ledger, from the
# first trajectory: the second's save of 9 must still count as never logged.
SOAK = _events(("start", 5), ("step", 6), ("step", 7), ("step", 8), ("step", 9), ("start", 5), ("step", 6),
               ("step", 7), ("step", 8))


@pytest.mark.parametrize(
    ("what", "events", "step", "logged"),
    [
        ("the soak's retrained trajectory", SOAK, 9, False),
        ("its logged save", SOAK, 8, True),
        ("a fresh start that logged past the save", _events(("start", None), ("step", 1), ("step", 2)), 2, True),
        ("saved, not yet logged", _events(("start", 0), ("step", 1)), 2, False),
        ("a later step logged: this one was too", _events(("start", 0), ("step", 3)), 2, True),
        ("written before a trainer that resumed at it", _events(("start", 0), ("step", 4), ("start", 4)), 4, True),
        ("an in-job restart behind a killed trainer's save",
         _events(("start", 53), ("step", 54), ("step", 59), ("start", 53), ("step", 54)), 56, False),
        ("no trainer-started recorded (an old ledger)", _events(("step", 1), ("step", 2)), 2, True),
    ],
)
def test_a_save_counts_as_logged_only_by_the_trainer_that_wrote_it(what, events, step, logged):
    assert checkpoints.logged_by_producer(events, step) is logged, what


def test_the_soak_s_unlogged_save_is_set_aside_though_an_earlier_trajectory_logged_its_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ledger = Ledger(run)
    for e in SOAK:
        ledger.append(e["event"], job_id="5", chunk=3, step=e["step"])
    for step in (5, 8, 9):
        save(run / "checkpoints", step)
    decision = checkpoints.prepare_resume(run / "checkpoints", 1, ledger, job_id="5", chunk=4)
    assert decision.step == 8 and decision.skipped == [9], decision


def test_a_first_save_torn_by_a_full_disk_reads_as_a_full_disk(tmp_path: Path) -> None:
    """Before any complete save there is no "newest checkpoint" to size the room against: the torn one's bytes
    are (the soak's seed 2, 2026-12-07: a first save that died of ENOSPC read as an unknown crash, and the chunk
    spent Ray's 40 s node verdict on it). A real 2 MiB tmpfs, filled as the save filled it."""
    import subprocess

    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(ckpt)], check=True)
    try:
        actor = ckpt / "global_step_10" / "actor"
        actor.mkdir(parents=True)
        assert not checkpoints.disk_full(ckpt, 2)  # an empty step folder: nothing says the disk is full
        (actor / "model_world_size_2_rank_0.pt").write_bytes(b"\0" * (1200 << 10))
        with pytest.raises(OSError):  # the second rank's shard does not fit
            (actor / "model_world_size_2_rank_1.pt").write_bytes(b"\0" * (1200 << 10))
        assert checkpoints.latest_good(ckpt, 2) is None and checkpoints.disk_full(ckpt, 2)
        (actor / "model_world_size_2_rank_1.pt").unlink()
        (actor / "model_world_size_2_rank_0.pt").unlink()
        (actor / "model_world_size_2_rank_0.pt").write_bytes(b"\0" * (100 << 10))  # room again
        assert not checkpoints.disk_full(ckpt, 2)
    finally:
        subprocess.run(["umount", "-l", str(ckpt)], check=False)
