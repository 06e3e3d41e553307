"""verl's checkpoint layout and resume rules, written by one CPU process on behalf of W ranks.

    <root>/global_step_N/actor/model_world_size_W_rank_R.pt      one per rank, R = 0 … W−1
                         actor/optim_world_size_W_rank_R.pt
                         actor/extra_state_world_size_W_rank_R.pt    lr scheduler + RNG
                         actor/huggingface/                          HF config, tokenizer
                         actor/fsdp_config.json                      {"FSDP_version": 2, "world_size": W}
          global_step_N/data.pt                                      the data order's state
    <root>/latest_checkpointed_iteration.txt                         written last, plain write

<root> is trainer.default_local_dir, W = trainer.nnodes × trainer.n_gpus_per_node. Each rank file holds
what FSDP2's sharded state dict holds: every parameter as a DTensor on a 1-D ("fsdp",) mesh of W ranks,
placement Shard(0), the rank's `torch.chunk` of dim 0 as its local tensor (ranks past the last chunk hold
an empty one). So verl's own model merger (`python -m verl.model_merger merge --backend fsdp
--local_dir …/actor`) rebuilds the full weights, and a checkpoint verifier sees exactly W rank files. The
optimizer's moments are sharded the same way. Building the DTensors needs no process group
(`_init_backend=False`).

Resume follows verl's `_load_checkpoint`: resume_mode=auto reads the tracker with verl's own
`find_latest_ckpt_path` (no tracker, or a tracker naming a missing folder → train from scratch, printed);
resume_path loads trainer.resume_from_path; disable starts fresh. Retention (`max_actor_ckpt_to_keep`)
copies verl's: only checkpoints saved by this process, only their `actor/` folder.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

TRACKER = "latest_checkpointed_iteration.txt"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"global_step_{step}"


def rank_files(actor_dir: Path, world_size: int, rank: int) -> dict[str, Path]:
    return {
        kind: actor_dir / f"{kind}_world_size_{world_size}_rank_{rank}.pt"
        for kind in ("model", "optim", "extra_state")
    }


def shard(tensor: Any, world_size: int) -> list[Any]:
    """FSDP2's dim-0 sharding: torch.chunk, then empty shards for ranks past the last chunk."""
    chunks = [c.clone() for c in tensor.chunk(world_size, dim=0)]
    while len(chunks) < world_size:
        chunks.append(tensor.new_empty((0, *tensor.shape[1:])))
    return chunks


def _as_dtensor(local: Any, full: Any, world_size: int, rank: int) -> Any:
    import torch
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = DeviceMesh(
        "cpu", torch.arange(world_size), mesh_dim_names=("fsdp",), _init_backend=False, _rank=rank
    )
    return DTensor.from_local(
        local, mesh, [Shard(0)], run_check=False, shape=full.shape, stride=full.stride()
    )


def sharded_state(state: dict[str, Any], world_size: int) -> list[dict[str, Any]]:
    """A full state dict → one dict per rank (DTensor shards; 0-d tensors replicated as plain tensors)."""
    per_rank: list[dict[str, Any]] = [{} for _ in range(world_size)]
    for key, value in state.items():
        if getattr(value, "dim", lambda: 0)() == 0:
            for r in range(world_size):
                per_rank[r][key] = value.clone() if hasattr(value, "clone") else value
            continue
        full = value.detach()
        for r, local in enumerate(shard(full, world_size)):
            per_rank[r][key] = _as_dtensor(local, full, world_size, r)
    return per_rank


def gather_state(per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Inverse of sharded_state: concatenate each key's local shards in rank order."""
    import torch
    from torch.distributed.tensor import DTensor

    out: dict[str, Any] = {}
    for key, first in per_rank[0].items():
        if isinstance(first, DTensor):
            out[key] = torch.cat([d[key]._local_tensor for d in per_rank], dim=0).contiguous()
        else:
            out[key] = first
    return out


def rng_state() -> dict[str, Any]:
    # verl's BaseCheckpointManager.get_rng_state, minus the accelerator
    import random

    import numpy as np
    import torch

    return {"cpu": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}


def load_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["cpu"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


class CheckpointWriter:
    """Saves global_step_N the way verl's trainer + FSDPCheckpointManager do, tracker last."""

    def __init__(
        self,
        root: str | Path,
        world_size: int,
        max_to_keep: int | None,
        crash_during_save_at_step: int | None = None,
        crash_during_save_phase: str = "data",
    ) -> None:
        self.root = Path(root)
        self.world_size = world_size
        self.max_to_keep = max_to_keep
        self.crash_at = crash_during_save_at_step
        self.crash_phase = crash_during_save_phase
        self.previous: list[Path] = []  # verl's previous_saved_paths: this process's saves only

    def save(self, step: int, actor: Any, tokenizer: Any, data_state: dict[str, Any]) -> Path:
        import torch

        folder = step_dir(self.root, step)
        actor_dir = folder / "actor"
        self._ensure_capacity()
        actor_dir.mkdir(parents=True, exist_ok=True)
        model_shards = sharded_state(actor.model.state_dict(), self.world_size)
        optim_shards = self._optimizer_shards(actor.optimizer)
        extra = {"lr_scheduler": actor.scheduler.state_dict(), "rng": rng_state()}
        for rank in range(self.world_size):
            files = rank_files(actor_dir, self.world_size, rank)
            if rank == 0 and self._crash_now(step, "shard"):
                self._die_mid_write(model_shards[rank], files["model"], step)
            torch.save(model_shards[rank], files["model"])
            torch.save(optim_shards[rank], files["optim"])
            torch.save(extra, files["extra_state"])
        hf_dir = actor_dir / "huggingface"
        hf_dir.mkdir(exist_ok=True)
        actor.model.config.save_pretrained(hf_dir)
        if actor.model.generation_config is not None:
            actor.model.generation_config.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        (actor_dir / "fsdp_config.json").write_text(
            json.dumps({"FSDP_version": 2, "world_size": self.world_size}, indent=4)
        )
        if self._crash_now(step, "data"):
            self._die(step, "after the rank shards, before data.pt")
        if self._crash_now(step, "data-file"):
            # Every file of the save is there and one lacks its end: only the suite's zip check can tell.
            self._die_mid_write(data_state, folder / "data.pt", step)
        torch.save(data_state, folder / "data.pt")
        if self._crash_now(step, "tracker"):
            self._die(step, "after data.pt, before the tracker")
        (self.root / TRACKER).write_text(str(step))  # last, and a plain write: what verl does
        self._register(actor_dir)
        return folder

    def _crash_now(self, step: int, phase: str) -> bool:
        # A one-off fault: the marker makes the resumed run save this step normally.
        if self.crash_at != step or self.crash_phase != phase:
            return False
        marker = self.root / f".crash_injected_at_{step}"
        if marker.exists():
            return False
        marker.touch()
        return True

    def _die(self, step: int, where: str) -> None:
        print(f"rehearsal: rehearsal.crash_during_save_at_step={step}: SIGKILL {where}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def _die_mid_write(self, state: dict[str, Any], path: Path, step: int) -> None:
        """What kill -9 leaves of a torch.save in flight: the first part of the file, no zip end record."""
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        self._die(step, f"half-way through {path.name} ({len(data) // 2} of {len(data)} bytes)")

    def _optimizer_shards(self, optimizer: Any) -> list[dict[str, Any]]:
        full = optimizer.state_dict()
        per_param = {idx: sharded_state(st, self.world_size) for idx, st in full["state"].items()}
        return [
            {
                "state": {idx: shards[r] for idx, shards in per_param.items()},
                "param_groups": full["param_groups"],
            }
            for r in range(self.world_size)
        ]

    def _ensure_capacity(self) -> None:
        keep = self.max_to_keep
        if not (isinstance(keep, int) and keep > 1) or len(self.previous) < keep:
            return
        cut = len(self.previous) - keep + 1
        self._remove(self.previous[:cut])
        self.previous = self.previous[cut:]

    def _register(self, actor_dir: Path) -> None:
        self.previous.append(actor_dir)
        keep = self.max_to_keep
        if isinstance(keep, int) and keep > 0 and len(self.previous) > keep:
            cut = len(self.previous) - keep
            self._remove(self.previous[:cut])
            self.previous = self.previous[cut:]

    @staticmethod
    def _remove(paths: list[Path]) -> None:
        for p in paths:
            print(f"Checkpoint manager remove previous save local path: {p.resolve()}")
            shutil.rmtree(p, ignore_errors=True)


def find_resume(root: str, resume_mode: str, resume_from_path: str | None) -> str | None:
    """The global_step_N folder to resume from, by verl's rules; None = train from scratch."""
    if resume_mode == "disable":
        return None
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

    folder = root if os.path.isabs(root) else os.path.join(os.getcwd(), root)
    found = find_latest_ckpt_path(folder)
    if resume_mode == "auto":
        if found is None:
            print("Training from scratch")
        return found
    assert resume_from_path is not None  # settings validated it
    return (
        resume_from_path if os.path.isabs(resume_from_path) else os.path.join(os.getcwd(), resume_from_path)
    )


def load(folder: str | Path, actor: Any, world_size: int) -> tuple[int, dict[str, Any] | None]:
    """Restore model, optimizer, scheduler and RNG from global_step_N; returns (N, data.pt state or None)."""
    import torch

    folder = Path(folder)
    step = int(str(folder).split("global_step_")[-1])
    actor_dir = folder / "actor"
    files = [rank_files(actor_dir, world_size, r) for r in range(world_size)]
    missing = [str(f[k]) for f in files for k in ("model", "optim", "extra_state") if not f[k].is_file()]
    if missing:
        have = (
            sorted(p.name for p in actor_dir.glob("model_world_size_*_rank_0.pt"))
            if actor_dir.is_dir()
            else []
        )
        raise RuntimeError(
            f"checkpoint {folder} lacks {len(missing)} rank file(s) for world size {world_size} "
            f"(first: {missing[0]}); it has {have or 'no model shards'}: verl resumes only with the "
            "world size that saved it"
        )
    model_shards = [torch.load(f["model"], map_location="cpu", weights_only=False) for f in files]
    actor.model.load_state_dict(gather_state(model_shards))
    optim_shards = [torch.load(f["optim"], map_location="cpu", weights_only=False) for f in files]
    state = {idx: gather_state([o["state"][idx] for o in optim_shards]) for idx in optim_shards[0]["state"]}
    actor.optimizer.load_state_dict({"state": state, "param_groups": optim_shards[0]["param_groups"]})
    extra = torch.load(files[0]["extra_state"], map_location="cpu", weights_only=False)
    if extra.get("lr_scheduler") is not None:
        actor.scheduler.load_state_dict(extra["lr_scheduler"])
    if extra.get("rng") is not None:
        load_rng_state(extra["rng"])
    data_path = folder / "data.pt"
    data_state = torch.load(data_path, weights_only=False) if data_path.is_file() else None
    return step, data_state
