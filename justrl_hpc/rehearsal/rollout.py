"""Rollout generation: in the trainer process, or in Ray actors spread across the allocation like verl's.

With `RAY_ADDRESS` set (the chunk starts Ray across the Slurm allocation and exports it) the trainer
attaches to that cluster, checks that it sees `trainer.nnodes` nodes, and starts one rollout worker per
rank (nnodes × n_gpus_per_node, or `rehearsal.rollout_workers`), pinned round-robin to the alive nodes.
Each step the trainer pushes its weights to every worker (verl's update_weights) and splits the prompts
between them; each worker samples its share with a seed derived from (seed, step, rank). Without
`RAY_ADDRESS` the same generation runs in-process on the trainer's own model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from justrl_hpc.rehearsal import policy


class RayNodesError(RuntimeError):
    pass


class Rollout(Protocol):
    workers: int

    def describe(self) -> str: ...

    def sync(self, model: Any) -> None: ...

    def generate(self, prompts: list[list[int]], sampling: policy.Sampling, seed: int) -> list[list[int]]: ...

    def close(self) -> None: ...


def shares(count: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) slices of `count` items over `parts` workers, sizes differing by ≤ 1."""
    base, extra = divmod(count, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append((start, end))
        start = end
    return out


def worker_seed(seed: int, rank: int) -> int:
    return (seed * 1_000_003 + rank * 7_919) % (2**31 - 1)


class LocalRollout:
    """Generation on the trainer's own model, in this process."""

    workers = 1

    def __init__(self, model: Any, eos_id: int, pad_id: int) -> None:
        self.model, self.eos_id, self.pad_id = model, eos_id, pad_id

    def describe(self) -> str:
        return "in-process"

    def sync(self, model: Any) -> None:
        self.model = model  # same object: nothing to copy

    def generate(self, prompts: list[list[int]], sampling: policy.Sampling, seed: int) -> list[list[int]]:
        return policy.generate(self.model, prompts, sampling, self.eos_id, self.pad_id, worker_seed(seed, 0))

    def close(self) -> None:
        return None


class RolloutWorker:
    """Body of one Ray actor: the model's architecture, weights pushed by the trainer."""

    def __init__(
        self, config_dict: dict[str, Any], eos_id: int, pad_id: int, threads: int, rank: int
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = policy.model_from_config(config_dict)
        self.eos_id, self.pad_id, self.rank = eos_id, pad_id, rank
        self.version = -1

    def where(self) -> dict[str, Any]:
        import socket

        import ray

        return {
            "rank": self.rank,
            "node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def load(self, state_dict: dict[str, Any], version: int) -> int:
        self.model.load_state_dict(state_dict)
        self.version = version
        return version

    def generate(self, prompts: list[list[int]], sampling: policy.Sampling, seed: int) -> list[list[int]]:
        return policy.generate(
            self.model, prompts, sampling, self.eos_id, self.pad_id, worker_seed(seed, self.rank)
        )


class RayRollout:
    """Rollout workers as Ray actors on the cluster at RAY_ADDRESS."""

    def __init__(
        self,
        address: str,
        model: Any,
        eos_id: int,
        pad_id: int,
        workers: int,
        expect_nodes: int,
        threads: int,
    ) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        package_root = str(Path(__file__).resolve().parents[2])
        pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(
            address=address,
            logging_level="ERROR",
            log_to_driver=True,
            # Workers import this package from the same place as the trainer (the run's code snapshot).
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": str(threads)}},
        )
        alive = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
        if len(alive) < expect_nodes:
            ray.shutdown()
            raise RayNodesError(
                f"Ray cluster at {address} does not have the {expect_nodes} nodes the run needs: it sees "
                f"{len(alive)} alive (trainer.nnodes; where one Ray node stands for several, lower "
                "rehearsal.expect_ray_nodes)"
            )
        self.nodes = alive
        self.workers = workers
        config = model.config.to_dict()
        remote_cls = ray.remote(num_cpus=0)(RolloutWorker)
        self.actors = [
            remote_cls.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node_id=alive[rank % len(alive)], soft=False
                ),
                name=None,
            ).remote(config, eos_id, pad_id, threads, rank)
            for rank in range(workers)
        ]
        self.placement = ray.get([a.where.remote() for a in self.actors])
        self.version = 0

    def describe(self) -> str:
        used = {p["node_id"] for p in self.placement}
        return f"{len(self.actors)} Ray workers on {len(used)} node(s)"

    def sync(self, model: Any) -> None:
        import ray

        self.version += 1
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ref = ray.put(state)  # one copy in the object store, fetched once per node
        ray.get([a.load.remote(ref, self.version) for a in self.actors])

    def generate(self, prompts: list[list[int]], sampling: policy.Sampling, seed: int) -> list[list[int]]:
        import ray

        parts = shares(len(prompts), len(self.actors))
        futures = [
            a.generate.remote(prompts[s:e], sampling, seed)
            for a, (s, e) in zip(self.actors, parts, strict=True)
        ]
        out: list[list[int]] = []
        for chunk in ray.get(futures):
            out += chunk
        return out

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        ray.shutdown()


def make(
    model: Any,
    eos_id: int,
    pad_id: int,
    world_size: int,
    nnodes: int,
    workers: int | None,
    expect_nodes: int | None,
    threads: int,
) -> Rollout:
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return LocalRollout(model, eos_id, pad_id)
    return RayRollout(
        address,
        model,
        eos_id,
        pad_id,
        workers or world_size,
        expect_nodes if expect_nodes is not None else nnodes,
        threads,
    )
