"""What a cluster file asks Slurm for, as submitit's SlurmExecutor parameters: shared by every job kind
(a training chunk on all its nodes, an evaluation on one), so their #SBATCH lines cannot drift apart."""

from __future__ import annotations

from typing import Any

from justrl_hpc.core.config import ClusterConfig


def slurm_resources(c: ClusterConfig, nodes: int, time_limit_min: int) -> dict[str, Any]:
    """Resources, limit, pre-limit signal and requeue (without the `slurm_` prefix AutoExecutor uses)."""
    params: dict[str, Any] = {
        "nodes": nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": c.cpus_per_node,
        "time": time_limit_min,
        "signal_delay_s": c.signal_lead_s,
        "stderr_to_stdout": False,
    }
    if c.partition:
        params["partition"] = c.partition
    if c.gpus_per_node:
        params["gpus_per_node"] = c.gpus_per_node
    if c.mem_gb:
        params["mem"] = f"{c.mem_gb}GB"
    elif c.exclusive:
        # --mem=0: all of each node's memory, which an exclusive job holds anyway; a fixed size a little above
        # some node's RealMemory would keep the job pending. Shared nodes ask nothing (the partition's default).
        params["mem"] = "0"
    for key in ("account", "qos", "constraint"):
        if getattr(c, key):
            params[key] = getattr(c, key)
    if c.exclusive:
        params["exclusive"] = True
    if c.requeue_allowed:
        params["additional_parameters"] = {"requeue": True}
    return params


# Slurm 22.05–23.02's srun does not inherit --cpus-per-task from the batch allocation (the 22.05 release notes;
# 23.11 went back): under task/cgroup every node task (raylet, FSDP workers, vLLM engines) would share one CPU.
# A setup line of every job script that runs srun, training's and evaluation's.
SRUN_CPUS_LINE = 'if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi'

# The mark every process a chunk starts carries (jobs/train/cleanup.py). A job submitted from inside a chunk (a
# chained chunk, an evaluation along the run) inherits it through sbatch's environment, and its processes would
# be swept as the submitting chunk's own (CI, 2026-12-07: an evaluate job killed by its chunk's end).
RUN_MARK_ENV = "JUSTRL_RUN_MARK"

# The first lines of every job script that runs srun, training's and evaluation's.
JOB_SETUP_LINES = (SRUN_CPUS_LINE, f"unset {RUN_MARK_ENV}")
