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
    for key in ("account", "qos", "constraint"):
        if getattr(c, key):
            params[key] = getattr(c, key)
    if c.exclusive:
        params["exclusive"] = True
    if c.requeue_allowed:
        params["additional_parameters"] = {"requeue": True}
    return params
