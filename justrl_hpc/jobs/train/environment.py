"""The one place a chunk reads Slurm's environment (through submitit's JobEnvironment), and its log line."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import submitit

from justrl_hpc.core.paths import RunPaths


def node_name() -> str:
    """Slurm's name for this node (several share one machine on the dev cluster), else the host's."""
    return os.environ.get("SLURMD_NODENAME") or os.uname().nodename


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} justrl-chunk: {msg}", flush=True)



@dataclass
class ChunkInfo:
    run_dir: Path
    job_id: str
    restart: int
    rank: int
    nodes: int
    hostnames: list[str]

    @classmethod
    def from_env(cls, run_dir: str) -> ChunkInfo:
        env = submitit.JobEnvironment()
        return cls(
            run_dir=Path(run_dir),
            # A requeued job keeps its id: the chain is one job id, its incarnations counted by Slurm.
            job_id=str(env.job_id).split("_")[0],
            restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            rank=env.global_rank,
            nodes=env.num_nodes,
            hostnames=list(env.hostnames),
        )

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    @property
    def control(self) -> Path:
        return self.paths.control

    @property
    def done_file(self) -> Path:
        return self.control / f"done-{self.job_id}-{self.restart}"
