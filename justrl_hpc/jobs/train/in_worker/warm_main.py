"""`python -m justrl_hpc.jobs.train.in_worker.warm_main GO_FILE MODULE`: a trainer whose imports are done ahead.

A chunk's start-up is serial: Ray comes up on every node (~15 s on the dev cluster), then verl's main_ppo
imports torch, transformers and verl (~9 s of one core here) before it connects. The chunk starts this
process as Ray comes up: it imports MODULE (verl.trainer.main_ppo) at once, waits for the chunk's GO_FILE
(JSON: the argument list and the environment the trainer gets), then runs MODULE as `python -m MODULE ARGS`
would, through runpy as __main__. verl is neither modified nor copied: the same module runs with the same
arguments and environment; only what it imports is already in sys.modules.

Nothing of the suite is imported here: this process becomes verl's driver.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
import time

# A chunk that never sends its go (Ray did not come up, the driver died) must not leave this process behind
# for good; the chunk's teardown and the next chunk's sweep end it sooner.
WAIT_ENV = "JUSTRL_WARM_WAIT_S"
DEFAULT_WAIT_S = 1800.0


def read_go(path: str, wait_s: float, poll_s: float = 0.05) -> dict | None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with open(path) as fh:
                spec = json.load(fh)
        except FileNotFoundError:
            time.sleep(poll_s)
            continue
        os.unlink(path)
        return spec
    return None


def apply_env(env: dict[str, str]) -> None:
    for key in [k for k in os.environ if k not in env]:
        del os.environ[key]
    os.environ.update(env)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m justrl_hpc.jobs.train.in_worker.warm_main GO_FILE MODULE", file=sys.stderr)
        return 2
    go_file, module = argv
    importlib.import_module(module)  # as a module, not __main__: its entry point does not run yet
    spec = read_go(go_file, float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_S)))
    if spec is None:
        print(f"warm_main: no go file {go_file}; ending", file=sys.stderr)
        return 1
    apply_env(spec["env"])
    if spec.get("cwd"):
        os.chdir(spec["cwd"])
    sys.argv = [module, *spec["args"]]  # runpy puts the module's file in argv[0], as `python -m` does
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
