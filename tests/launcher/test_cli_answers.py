"""CLIs answer at once: quiet when their reader goes away, and "Slurm unreachable" instead of a guess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "tests" / "data" / "rehearsal-run"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def test_report_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`justrl-hpc report RUN | head -1`, with the reader gone before the first line is written."""
    run = tmp_path / "run"
    shutil.copytree(RECORDED, run)
    read, write = os.pipe()
    os.close(read)  # the reader is gone: every write the command makes gets EPIPE
    proc = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "report", str(run)], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=60, env=_env())
    os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_status_with_the_controller_down_says_slurm_unreachable_within_seconds(tmp_path: Path) -> None:
    """A slurm.conf whose controller port has nobody listening: `scontrol show job` would retry for ~18 s and
    then read as "no job", which it cannot know."""
    run = tmp_path / "run"
    shutil.copytree(RECORDED, run)
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=gone\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=6999\n"
                    "NodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "status", str(run)], capture_output=True,
                         text=True, timeout=60, env=_env(SLURM_CONF=str(conf)))
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert "Slurm unreachable" in first and "no job queued" not in first, first
    assert took < 5, took  # interpreter start-up included; the ping itself is bounded at 2 s
