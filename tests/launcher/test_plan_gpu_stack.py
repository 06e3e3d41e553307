"""The dry run states the GPU stack the `gpu` extra installs and the driver it needs (core/gpu_stack.py), where the
cluster has GPUs; nothing where it has none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from justrl_hpc.core import gpu_stack

REPO = Path(__file__).resolve().parents[2]


def launch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "justrl_hpc.launch", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _stack_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("stack ")]


def test_a_gpu_cluster_plan_names_the_stack_and_the_driver_it_needs(tmp_path: Path) -> None:
    out = launch("--nodes", "4", "--dry-run", cwd=tmp_path)
    stack = _stack_lines(out.stdout)
    assert len(stack) == 1, out.stdout + out.stderr
    for text in (
        f"vLLM {gpu_stack.VLLM}",
        f"torch {gpu_stack.TORCH}",
        f"transformers {gpu_stack.TRANSFORMERS}",
        f"CUDA {gpu_stack.CUDA}",
        f"NVIDIA driver R{gpu_stack.MIN_DRIVER_BRANCH} or newer",
        gpu_stack.FLASH_ATTN_INSTALL,
    ):
        assert text in stack[0], text
    plan = json.loads(launch("--nodes", "4", "--dry-run", "--json", cwd=tmp_path).stdout)
    assert plan["plan"]["gpu_stack"] == gpu_stack.summary()


def test_a_cluster_without_gpus_has_no_stack_line(tmp_path: Path) -> None:
    out = launch("--recipe", "rehearsal", "--cluster", "dev", "--dry-run", cwd=tmp_path)
    assert out.stdout.startswith("dry run") and not _stack_lines(out.stdout), out.stdout + out.stderr
    plan = json.loads(
        launch("--recipe", "rehearsal", "--cluster", "dev", "--dry-run", "--json", cwd=tmp_path).stdout
    )
    assert plan["plan"]["gpu_stack"] == ""
