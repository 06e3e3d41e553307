"""What a cluster file asks Slurm for (core/slurm_resources.py), down to the #SBATCH line submitit writes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from submitit.slurm.slurm import _make_sbatch_string

from justrl_hpc.core.config_files import resolve
from justrl_hpc.core.slurm_resources import slurm_resources


@pytest.mark.parametrize(
    ("mem_gb", "exclusive", "line"),
    [
        (960, True, "#SBATCH --mem=960GB"),
        (960, False, "#SBATCH --mem=960GB"),
        # An exclusive node's memory is the job's anyway: --mem=0 takes all of it, and a node whose RealMemory
        # is a little under 960 GB still runs the job.
        (0, True, "#SBATCH --mem=0"),
        (0, False, None),  # a shared node: nothing asked, the partition's default applies
    ],
)
def test_memory_line(mem_gb: int, exclusive: bool, line: str | None, tmp_path) -> None:
    cluster = replace(resolve("justrl-deepseek-1.5b", "a800-4x8").cluster, mem_gb=mem_gb, exclusive=exclusive)
    params = slurm_resources(cluster, 4, 1440)
    script = _make_sbatch_string(command="true", folder=str(tmp_path), **params)
    mem_lines = [x for x in script.splitlines() if x.startswith("#SBATCH --mem")]
    assert mem_lines == ([line] if line else [])


def test_the_published_cluster_asks_for_whole_nodes_with_all_their_memory() -> None:
    cluster = resolve("justrl-deepseek-1.5b", "a800-4x8").cluster
    params = slurm_resources(cluster, 4, 1440)
    assert params["exclusive"] is True and params["mem"] == "0"
    # vLLM 0.24 has no V0 engine and no longer knows VLLM_USE_V1; the cluster file no longer sets it.
    assert "VLLM_USE_V1" not in cluster.env
