"""A lost node as Ray's own GCS reports it: two real Ray nodes on this machine, one of them killed outright."""

from __future__ import annotations

import os
import signal

import pytest

from justrl_hpc.jobs.train import ray_cluster


@pytest.mark.fault
@pytest.mark.timeout(240)
def test_nodes_lost_counts_a_killed_node_once_rays_health_check_declares_it_dead(tmp_path):
    job = f"t{os.getpid()}"
    head = ray_cluster.start_head(job, 0, "127.0.0.1", 24000, 1, 0, tmp_path / "head.log")
    joiner = None
    try:
        joiner = ray_cluster.join(head, 1, "127.0.0.1", 24000, 1, 0, tmp_path / "join.log")
        assert ray_cluster.wait_for_nodes(head.address, 2, 0, timeout_s=60)[0] == 2
        # Both alive: nothing lost, and the answer comes once the wait is spent.
        assert ray_cluster.nodes_lost(head.address, 2, wait_s=4) == 0
        victims = ray_cluster.processes_of(joiner)
        assert victims
        for proc in victims:  # the whole node at one instant, as when its host goes away
            os.kill(proc.pid, signal.SIGKILL)
        assert ray_cluster.nodes_lost(head.address, 2, wait_s=60) == 1
    finally:
        if joiner:
            ray_cluster.stop(joiner)
        ray_cluster.stop(head.temp_dir)
