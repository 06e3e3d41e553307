"""The plan a person reads before a GPU is spent: chunks, GPU-hours, disk, and the preflight checks."""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from justrl_hpc.core import gpu_stack
from justrl_hpc.core.config import Resolved
from justrl_hpc.core.errors import UserError
from justrl_hpc.core.recipe import timing_warnings


@dataclass
class Resources:
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_node: int
    mem_gb: int
    partition: str
    time_limit_min: int
    signal_lead_s: int
    requeue: bool


@dataclass
class Plan:
    total_steps: int
    steps_per_chunk: int
    chunks: int
    gpu_hours: float
    wall_hours: float
    disk_gb: float
    checkpoints_kept: int
    warnings: list[str] = field(default_factory=list)
    # What the nodes must run (the `gpu` extra's stack and the driver it needs); empty on a cluster without GPUs.
    gpu_stack: str = ""


def resources(resolved: Resolved, nodes: int) -> Resources:
    c = resolved.cluster
    return Resources(
        nodes=nodes,
        tasks_per_node=1,
        gpus_per_node=c.gpus_per_node,
        cpus_per_node=c.cpus_per_node,
        mem_gb=c.mem_gb,
        partition=c.partition,
        time_limit_min=resolved.time_limit_min,
        signal_lead_s=c.signal_lead_s,
        requeue=c.requeue_allowed,
    )


def make_plan(resolved: Resolved, nodes: int) -> Plan:
    r, c = resolved.recipe, resolved.cluster
    limit_s = resolved.time_limit_min * 60
    usable_s = limit_s - r.expected_startup_s - c.signal_lead_s
    step_s = max(r.expected_step_s, 1e-9)
    steps_per_chunk = max(int(usable_s // step_s), 0)
    warnings: list[str] = []
    if steps_per_chunk == 0:
        raise UserError(
            f"a {resolved.time_limit_min}-minute chunk minus start-up ({r.expected_startup_s:.0f} s) and the signal "
            f"lead ({c.signal_lead_s} s) leaves no time for one {r.expected_step_s:.0f} s step; raise the limit",
            "run.time_limit_min" if resolved.run.time_limit_min else "cluster.time_limit_min",
        )
    warnings += timing_warnings(resolved)
    chunks = math.ceil(r.total_training_steps / steps_per_chunk)
    gpus = nodes * (c.gpus_per_node or r.ranks_per_node)
    wall_s = r.total_training_steps * r.expected_step_s + chunks * (r.expected_startup_s + c.signal_lead_s)
    kept = resolved.run.keep_last + (
        r.total_training_steps // resolved.run.keep_every if resolved.run.keep_every else 0
    )
    # Two more than kept: the new checkpoint is written before the oldest is deleted, and a save set aside at a
    # chunk's start (saved but never logged, or torn: core/checkpoints.prepare_resume) stays until a verified
    # save of a later step exists, which that new one is.
    disk_gb = (kept + 2) * r.checkpoint_gb
    return Plan(
        total_steps=r.total_training_steps,
        steps_per_chunk=steps_per_chunk,
        chunks=chunks,
        gpu_hours=round(wall_s / 3600 * gpus, 1),
        wall_hours=round(wall_s / 3600, 1),
        disk_gb=round(disk_gb, 3),
        checkpoints_kept=kept,
        warnings=warnings,
        gpu_stack=gpu_stack.summary() if c.gpus_per_node else "",
    )


def check_world(resolved: Resolved, nodes: int) -> None:
    r, c = resolved.recipe, resolved.cluster
    if c.gpus_per_node == 0:
        if r.device != "cpu":
            raise UserError(
                f"cluster {c.name} has no GPUs and recipe {r.name} needs CUDA; use --cluster with GPUs "
                "or --recipe rehearsal",
                "--cluster",
            )
    elif c.gpus_per_node != r.ranks_per_node:
        raise UserError(
            f"recipe {r.name} trains on {r.ranks_per_node} GPUs per node but cluster {c.name} has "
            f"{c.gpus_per_node}; FSDP shards are saved per rank, so the layout must match",
            "cluster.gpus_per_node",
        )
    if nodes != r.nnodes:
        per_node = c.gpus_per_node or r.ranks_per_node
        raise UserError(
            f"{nodes} nodes × {per_node} per node = {nodes * per_node} ranks, but recipe {r.name} has world size "
            f"{r.world_size} (FSDP shards are saved per rank, resume needs the same world); use --nodes {r.nnodes}",
            "--nodes",
        )


@dataclass
class Check:
    name: str
    ok: bool
    message: str


def check_files(resolved: Resolved) -> list[Check]:
    """Data and model checks. A failure is reported in the plan and blocks a real submission."""
    from justrl_hpc.core.data_files import check_rl_parquet

    r = resolved.recipe
    checks: list[Check] = []
    for kind, paths in (("train_files", r.train_files), ("val_files", r.val_files)):
        for i, path in enumerate(paths):
            problems = check_rl_parquet(Path(path))
            field_name = f"recipe.{kind}[{i}]"
            if problems:
                fix = " (make it with `justrl-hpc prepare-data`)" if not Path(path).exists() else ""
                checks.append(Check(field_name, False, f"{path}: {problems[0]}{fix}"))
            else:
                checks.append(Check(field_name, True, path))
    model = Path(r.model_path)
    if model.is_absolute() or model.exists():
        ok = (model / "config.json").is_file()
        msg = r.model_path if ok else f"{r.model_path} holds no config.json (a Hugging Face model folder)"
        checks.append(Check("recipe.model_path", ok, msg))
    elif r.model_path.count("/") == 1:
        checks.append(
            Check(
                "recipe.model_path",
                True,
                f"{r.model_path} is a hub id: compute nodes without network need a local copy",
            )
        )
    else:
        checks.append(
            Check("recipe.model_path", False, f"{r.model_path} is neither a folder nor a hub id (org/name)")
        )
    return checks


def check_disk(run_dir: Path, plan: Plan, min_free_gb: float) -> Check:
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    need = plan.disk_gb + min_free_gb
    if free_gb < need:
        return Check(
            "disk",
            False,
            f"{probe} has {free_gb:,.1f} GB free; retention needs ~{plan.disk_gb:,.1f} GB "
            f"+ {min_free_gb:g} GB spare (cluster.min_free_disk_gb)",
        )
    return Check("disk", True, f"{free_gb:,.1f} GB free on {probe}, ~{need:,.1f} GB needed")


def to_json(plan: Plan) -> dict[str, Any]:
    return asdict(plan)
