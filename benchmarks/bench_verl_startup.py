"""verl's start-up on this machine: the rehearsal recipe's own trainer command (main_ppo on the CPU backend, a
local Ray as the tests' session run has it), from the process start to verl's first logged step, with one
scale-down key set to each value asked. Each run trains 2 steps in a fresh folder; the runs alternate so load
drift hits both.

    .venv/bin/python benchmarks/bench_verl_startup.py [--key data.dataloader_num_workers] [--values 8,0] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one(data: Path, key: str, value: str, root: Path) -> float:
    from justrl_hpc.core.recipe import CPU_BACKEND_ENV, ChunkContext, trainer_command
    from justrl_hpc.core.run_folder import load

    run_dir = root / f"run-{key}-{value}-{time.monotonic_ns()}"
    sets = [f"recipe.model_path={data / 'model'}", f"recipe.train_files=[{data / 'train.parquet'}]",
            f"recipe.val_files=[{data / 'val.parquet'}]", "recipe.total_training_steps=2", "recipe.save_freq=2",
            "recipe.test_freq=0"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLURM_JOB_ID", "JUSTRL_CONTROL_DIR")}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", CPU_BACKEND_ENV: "1"})
    args = [sys.executable, "-m", "justrl_hpc.launch", "--recipe", "rehearsal", "--cluster", "dev", "--name",
            "bench", "--run-dir", str(run_dir), "--create-only"] + [a for s in sets for a in ("--set", s)]
    subprocess.run(args, check=True, capture_output=True, env=env, cwd=root)
    cmd = trainer_command(load(run_dir), run_dir, ChunkContext(first_chunk=False))
    cmd[0] = sys.executable
    cmd = [c for c in cmd if not c.startswith(f"{key}=")] + [f"{key}={value}"]
    cmd += ["ray_kwargs.ray_init.num_cpus=16", "+ray_kwargs.ray_init.num_gpus=2",
            "+ray_kwargs.ray_init.include_dashboard=False"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=run_dir)
    first = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if first is None and re.search(r"\bstep:1 - ", line):
            first = time.monotonic() - start
    proc.wait(timeout=600)
    if proc.returncode != 0 or first is None:
        raise SystemExit(f"{key}={value}: trainer exit {proc.returncode}, first step {'seen' if first else 'never'}")
    return first


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--key", default="data.dataloader_num_workers")
    p.add_argument("--values", default="8,0")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    from justrl_hpc.dev.toy.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="bench-verl-startup-") as tmp:
        root = Path(tmp)
        data = root / "data"
        prepare(data)
        values = args.values.split(",")
        got: dict[str, list[float]] = {v: [] for v in values}
        for _ in range(args.runs):
            for v in values:
                got[v].append(one(data, args.key, v, root))
        load = os.getloadavg()[0]
        for v in values:
            runs = ", ".join(f"{x:.1f}" for x in got[v])
            print(f"- {args.key}={v}: trainer start → first step, median {statistics.median(got[v]):.1f} s "
                  f"(runs: {runs})")
        print(f"- load average at the end: {load:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
