"""What submitit submits for one chunk: resources, signal, requeue budget, environment, setup lines.

One function builds the parameters, so the dry-run preview, the real submission and the plain sbatch scripts
(kept equal by a test) cannot drift apart.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from justrl_hpc.config import Resolved

# submitit's folder per job id: pickles and logs of each job (appended to across its requeues).
LOG_SUBDIR = Path("logs") / "submitit" / "%j"


def job_name(resolved: Resolved) -> str:
    name = resolved.run.name
    return name if name.startswith("justrl") else f"justrl-{name}"


def chunk_env(resolved: Resolved, run_dir: Path) -> dict[str, str]:
    """Environment every task of a chunk sees (besides what sbatch exports from the submitting shell)."""
    env = dict(resolved.cluster.env)
    env.update(
        {
            # Chunks import the run's code snapshot, never the checkout that launched them.
            "PYTHONPATH": str(run_dir / "code"),
            "JUSTRL_RUN_DIR": str(run_dir),
            "TENSORBOARD_DIR": str(run_dir / "tensorboard"),
            "JUSTRL_CONTROL_DIR": str(run_dir / "control"),
        }
    )
    return env


def setup_lines(resolved: Resolved, run_dir: Path) -> list[str]:
    # A SIGTERM-only preemption signals the batch shell too; if it died, Slurm would end the job at once and
    # the chunk could not save within the grace. Slurm's SIGKILL after the grace still ends everything.
    lines = ["trap '' TERM", *resolved.cluster.setup]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(chunk_env(resolved, run_dir).items())]
    return lines


def slurm_parameters(
    resolved: Resolved, run_dir: Path, nodes: int, dependency: str | None = None
) -> dict[str, Any]:
    """Parameters of submitit's SlurmExecutor (without the `slurm_` prefix AutoExecutor uses)."""
    c = resolved.cluster
    params: dict[str, Any] = {
        "job_name": job_name(resolved),
        "nodes": nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": c.cpus_per_node,
        "time": resolved.time_limit_min,
        "signal_delay_s": c.signal_lead_s,
        "setup": setup_lines(resolved, run_dir),
        "stderr_to_stdout": False,
    }
    if c.partition:
        params["partition"] = c.partition
    if c.gpus_per_node:
        params["gpus_per_node"] = c.gpus_per_node
    if c.mem_gb:
        params["mem"] = f"{c.mem_gb}GB"
    for key in ("account", "qos", "constraint"):
        if getattr(c, key):
            params[key] = getattr(c, key)
    if c.exclusive:
        params["exclusive"] = True
    additional: dict[str, Any] = {}
    if c.requeue_allowed:
        additional["requeue"] = True
    if dependency:
        additional["dependency"] = dependency
    if additional:
        params["additional_parameters"] = additional
    return params


def make_executor(resolved: Resolved, run_dir: Path, nodes: int, dependency: str | None = None) -> Any:
    import submitit

    executor = submitit.SlurmExecutor(
        folder=run_dir / LOG_SUBDIR,
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
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(run_dir / LOG_SUBDIR))]
    )
    return _make_sbatch_string(command=command, folder=str(run_dir / LOG_SUBDIR), **params)
