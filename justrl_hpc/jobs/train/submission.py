"""What submitit submits for one chunk: resources, signal, requeue budget, environment, setup lines.

One function builds the parameters, so the dry-run preview, the real submission and the plain sbatch scripts
(kept equal by a test) cannot drift apart.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from pathlib import Path
from typing import Any

from justrl_hpc.core.config import Resolved
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.recipe import CPU_BACKEND_ENV
from justrl_hpc.core.slurm_resources import JOB_SETUP_LINES, slurm_resources


class _Attribute:
    """`module:attr`, looked up when unpickled (pickle asks only that what it calls be callable here)."""

    def __init__(self, ref: str) -> None:
        self.module, _, self.attr = ref.partition(":")

    def __call__(self, *args: Any) -> Any:
        raise TypeError("resolved only when unpickled")

    def __reduce__(self) -> tuple[Any, ...]:
        return (getattr, (_Module(self.module), self.attr))


class _Module:
    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (importlib.import_module, (self.name,))


class RecordedEntry:
    """What the launcher hands submitit: the run's recorded entry point, named rather than imported.

    Pickled as "import MODULE, build CLASS(run_dir)", so the nodes build it from the run's own code snapshot
    whatever layout that snapshot has; nothing of the launcher's own code goes into the pickle.
    """

    def __init__(self, ref: str, run_dir: Path) -> None:
        self.ref, self.run_dir = ref, str(run_dir)

    def __call__(self) -> Any:
        raise TypeError(f"{self.ref} runs on the allocation, from the run's code snapshot")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Attribute(self.ref), (self.run_dir,))


def job_name(resolved: Resolved) -> str:
    name = resolved.run.name
    return name if name.startswith("justrl") else f"justrl-{name}"


def chunk_env(resolved: Resolved, run_dir: Path) -> dict[str, str]:
    """Environment every task of a chunk sees (besides what sbatch exports from the submitting shell)."""
    env = dict(resolved.cluster.env)
    env.update(
        {
            # Chunks import the run's code snapshot, never the checkout that launched them.
            "PYTHONPATH": str(RunPaths(run_dir).code),
            "JUSTRL_RUN_DIR": str(run_dir),
            "TENSORBOARD_DIR": str(RunPaths(run_dir).tensorboard),
            "JUSTRL_CONTROL_DIR": str(RunPaths(run_dir).control),
        }
    )
    if resolved.recipe.device == "cpu":
        # verl's CPU backend registers only when asked; the trainer gets it from this environment, and every Ray
        # worker from the raylets the chunk starts with it. A GPU recipe never asks: its CPU-only actors see no
        # CUDA either, and must not get a CPU platform for it.
        env[CPU_BACKEND_ENV] = "1"
    else:
        # NCCL's flight recorder: on a collective's timeout torch's watchdog writes each rank's last collectives
        # beside the hang's stacks (stacks.py), the record verl's maintainers ask for. A site's own values win.
        for key, value in (("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000"), ("TORCH_NCCL_DUMP_ON_TIMEOUT", "1"),
                           ("TORCH_NCCL_DEBUG_INFO_TEMP_FILE", str(RunPaths(run_dir).stacks / "nccl-trace-rank-"))):
            env.setdefault(key, value)
    return env


def setup_lines(resolved: Resolved, run_dir: Path) -> list[str]:
    # A SIGTERM-only preemption signals the batch shell too; if it died, Slurm would end the job at once and
    # the chunk could not save within the grace. Slurm's SIGKILL after the grace still ends everything.
    lines = ["trap '' TERM", *JOB_SETUP_LINES, *resolved.cluster.setup]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(chunk_env(resolved, run_dir).items())]
    return lines


def slurm_parameters(
    resolved: Resolved, run_dir: Path, nodes: int, dependency: str | None = None
) -> dict[str, Any]:
    """Parameters of submitit's SlurmExecutor (without the `slurm_` prefix AutoExecutor uses)."""
    params = slurm_resources(resolved.cluster, nodes, resolved.time_limit_min)
    params.update(job_name=job_name(resolved), setup=setup_lines(resolved, run_dir))
    if dependency:
        params.setdefault("additional_parameters", {})["dependency"] = dependency
    return params


def make_executor(resolved: Resolved, run_dir: Path, nodes: int, dependency: str | None = None) -> Any:
    import submitit

    executor = submitit.SlurmExecutor(
        folder=RunPaths(run_dir).submitit,
        # A 15-day run is dozens of timeouts; submitit's default budget of 3 would end it on day 3.
        max_num_timeout=resolved.run.max_requeues,
        python=shlex.quote(sys.executable),
    )
    executor.update_parameters(**slurm_parameters(resolved, run_dir, nodes, dependency))
    return executor


def sbatch_preview(resolved: Resolved, run_dir: Path, nodes: int) -> str:
    """The sbatch script submitit will write, as text (uses submitit's own renderer)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = slurm_parameters(resolved, run_dir, nodes)
    command = " ".join(
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(RunPaths(run_dir).submitit))]
    )
    return _make_sbatch_string(command=command, folder=str(RunPaths(run_dir).submitit), **params)
