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
