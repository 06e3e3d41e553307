"""Per-job Ray ports: distinct per job slot, and never where something else on the node may already hold them."""

from __future__ import annotations

from pathlib import Path

import pytest

from justrl_hpc.core.config_files import resolve
from justrl_hpc.jobs.train.ray_cluster import _PORT_STRIDE, _RANKS_PER_SLOT, ephemeral_low, ports

RAY_WORKER_PORTS = range(10002, 20000)  # Ray's --min/--max-worker-port defaults


def all_ports(base: int, job_id: int, nodes: int, below: int) -> set[int]:
    return {p for rank in range(nodes) for p in ports(base, str(job_id), rank, below).values()}


@pytest.mark.parametrize(("recipe", "cluster"), [("justrl-deepseek-1.5b", "a800-4x8"), ("rehearsal", "dev")])
def test_shipped_clusters_keep_every_port_out_of_the_ephemeral_and_ray_worker_ranges(recipe, cluster):
    base = resolve(recipe, cluster).cluster.ray_port
    for job in range(0, 20000, 7):
        used = all_ports(base, job, 4, 32768)
        assert min(used) >= base and max(used) < 32768, (job, sorted(used))
        assert not used & set(RAY_WORKER_PORTS), job


def test_jobs_in_different_slots_share_no_port():
    base, below = 20379, 32768
    slots = (below - base - _PORT_STRIDE) // _PORT_STRIDE
    seen: dict[int, int] = {}
    for job in range(slots):
        for port in all_ports(base, job, 4, below):
            assert port not in seen, (job, seen.get(port), port)
            seen[port] = job
    assert all_ports(base, 288, 4, below) == all_ports(base, 288 + slots, 4, below)  # the slot wraps


def test_a_run_of_any_width_stays_inside_its_slot():
    # 32 nodes (a 256-GPU run): ranks 6 and up reuse the offsets of ranks 0-5, each on its own host.
    base, below = 20379, 32768
    for job in (0, 288, 20000):
        gcs = ports(base, str(job), 0, below)["gcs"]
        assert all(gcs <= p < gcs + _PORT_STRIDE for p in all_ports(base, job, 32, below)), job
        # Ranks that can share a host (the dev cluster's four fake nodes, up to six) get distinct ports.
        shared = [set(ports(base, str(job), r, below).values()) - {gcs, gcs + 1, gcs + 2} for r in range(_RANKS_PER_SLOT)]
        assert sum(len(p) for p in shared) == len(set().union(*shared)) == 4 * _RANKS_PER_SLOT


def test_a_joining_rank_takes_the_heads_slot_whatever_its_own_ephemeral_range():
    head = ports(20379, "288", 0, below=32768)
    # The joiner's node has a lower range: on its own it would pick another slot.
    assert ports(20379, "288", 1, below=25000)["gcs"] != head["gcs"]
    joined = ports(20379, "288", 1, below=25000, gcs=head["gcs"])
    assert joined["gcs"] == head["gcs"]
    assert all(head["gcs"] <= p < head["gcs"] + _PORT_STRIDE for p in joined.values())


def test_a_node_with_a_lower_ephemeral_range_folds_the_slots_below_it():
    used = set().union(*(all_ports(20379, job, 4, 28000) for job in range(2000)))
    assert max(used) < 28000


def test_ephemeral_low_reads_the_kernel_setting(tmp_path: Path):
    f = tmp_path / "ip_local_port_range"
    f.write_text("40000\t60999\n")
    assert ephemeral_low(str(f)) == 40000
    assert ephemeral_low(str(tmp_path / "absent")) == 32768
    assert ephemeral_low() == int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_a_base_port_inside_the_ephemeral_range_is_one_error_line(tmp_path: Path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "justrl_hpc.launch", "--recipe", "rehearsal", "--cluster", "dev", "--dry-run",
         "--run-dir", str(tmp_path / "run"), "--set", "cluster.ray_port=40000"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "cluster.ray_port" in err[0] and "32000" in err[0], err
    assert list(tmp_path.iterdir()) == []
