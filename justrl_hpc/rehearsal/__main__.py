"""`python -m justrl_hpc.rehearsal KEY=VALUE …`: the CPU rehearsal trainer, driven like verl's main_ppo.

Exit status: 0 when trainer.total_training_steps is reached (after the final save), 2 for a bad override
(one `error:` line, nothing written), 1 for any other failure (traceback), −9 when SIGKILLed.
"""

from __future__ import annotations

import sys

from justrl_hpc.errors import cli_entry

USAGE = """usage: python -m justrl_hpc.rehearsal KEY=VALUE [KEY=VALUE ...]

The CPU rehearsal trainer: GRPO on a tiny Qwen2 with verl's overrides, checkpoint layout, tracker,
metric names and deadline save. Keys: verl's (justrl_hpc.recipe.HYPERPARAMETERS), trainer.*, data files,
model path, reward function, and rehearsal.* (min_step_time_s, seed, expect_ray_nodes, rollout_workers,
threads, crash_at_step, crash_during_save_at_step, sample_log). See docs/rehearsal.md.
"""


@cli_entry
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(USAGE, end="", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    from justrl_hpc.rehearsal.settings import resolve

    settings = resolve(argv)  # every bad override fails here, before anything is imported or written
    from justrl_hpc.rehearsal.loop import run
    from justrl_hpc.rehearsal.rollout import RayNodesError

    try:
        return run(settings)
    except RayNodesError as exc:
        # Not bad input (exit 2) but a cluster short of nodes: one line, the chunk classifies it.
        print(f"rehearsal: error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
