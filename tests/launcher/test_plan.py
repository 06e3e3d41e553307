"""The plan's disk estimate (launcher/plan.py): what retention keeps, the save being written, and one set aside."""

from __future__ import annotations

import pytest

from justrl_hpc.core.config_files import resolve
from justrl_hpc.launcher.plan import make_plan


@pytest.mark.parametrize(
    ("keep_last", "keep_every", "kept", "on_disk"),
    [
        # 2 newest + steps 500..4000 (8) kept; + the save being written + a save set aside at a chunk's start
        # (never logged, or torn), which stays until a later verified save exists.
        (2, 500, 10, 12),
        (1, 0, 1, 3),
        (3, 1000, 7, 9),
    ],
)
def test_disk_estimate_counts_the_save_being_written_and_one_set_aside(keep_last, keep_every, kept, on_disk):
    resolved = resolve("justrl-deepseek-1.5b", "a800-4x8",
                       [f"run.keep_last={keep_last}", f"run.keep_every={keep_every}"])
    plan = make_plan(resolved, 4)
    assert plan.checkpoints_kept == kept
    assert plan.disk_gb == pytest.approx(on_disk * resolved.recipe.checkpoint_gb)
