"""Typed configuration: recipe, cluster and run, loaded from YAML, merged with `--set`, validated.

Every bad value becomes one `UserError` naming the field and what would be valid. Loading never writes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from justrl_hpc.core import stall
from justrl_hpc.core.errors import UserError
from justrl_hpc.core.settings import build

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# Recipes and clusters ship beside the package in a source checkout (configs/); a copy inside the
# package would drift, so both places are searched, the checkout first.
CONFIG_DIRS = [PACKAGE_ROOT.parent / "configs"]


@dataclass
class RecipeConfig:
    """A training recipe. For JustRL every value is fixed; the fingerprint guards each resume."""

    name: str
    description: str = ""
    # verl's main_ppo trains every recipe; device cpu runs it on the CPU backend (justrl_hpc.dev.verl_cpu).
    trainer: str = field(default="verl", metadata={"choices": ("verl",)})
    device: str = field(default="cuda", metadata={"choices": ("cuda", "cpu")})
    model_path: str = ""
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    prompt_suffix: str = ""
    nnodes: int = field(default=1, metadata={"min": 1})
    # GPUs per node on a GPU cluster; worker processes per node for the CPU rehearsal.
    ranks_per_node: int = field(default=8, metadata={"min": 1})
    total_training_steps: int = field(default=1, metadata={"min": 1})
    save_freq: int = field(default=50, metadata={"min": 1})
    test_freq: int = field(default=50, metadata={"min": 0})
    # Full validation only on the first chunk: the published script re-ran it at every restart.
    validate_on_resume: bool = False
    # Seconds verl's deadline save reserves on top of 60 s + the longest step (trainer.esi_redundant_time).
    deadline_margin_s: int = field(default=120, metadata={"min": 0})
    # Planning estimates (for --dry-run's chunks, GPU-hours and disk; they change nothing in training).
    expected_step_s: float = field(default=296.0, metadata={"min": 0})
    expected_startup_s: float = field(default=600.0, metadata={"min": 0})
    checkpoint_gb: float = field(default=21.0, metadata={"min": 0})
    # verl keys → values (validated against recipe.HYPERPARAMETERS: only keys the suite knows and types).
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    # verl keys a CPU recipe adds to scale verl down (validated against recipe.SCALE_DOWN).
    scale_down: dict[str, Any] = field(default_factory=dict)
    # Experiment trackers verl logs to beside console and tensorboard (which the suite itself reads): every
    # chunk writes to one tracker run (recipe.tracker_env). Not part of the fingerprint: adding one mid-run
    # changes no training.
    trackers: list[str] = field(default_factory=list, metadata={"choices": ("wandb",)})

    @property
    def world_size(self) -> int:
        return self.nnodes * self.ranks_per_node

    def fingerprint(self) -> str:
        data = asdict(self)
        data.pop("description", None)
        data.pop("trackers", None)
        # Until 2026-12-01 the recipe had an (always empty for verl) `trainer_extra` and no `scale_down`: a
        # recipe that scales nothing down keeps the digest it had then, so runs made before still resume.
        if not data["scale_down"]:
            data.pop("scale_down")
            data["trainer_extra"] = {}
        return _digest(data)


@dataclass
class ClusterConfig:
    """Where chunks run: a Slurm partition and what each node has."""

    name: str
    partition: str = ""
    gpus_per_node: int = field(default=8, metadata={"min": 0})
    cpus_per_node: int = field(default=1, metadata={"min": 1})
    mem_gb: int = field(default=0, metadata={"min": 0})
    # The partition's wall-clock limit for one job (one chunk).
    time_limit_min: int = field(default=1440, metadata={"min": 1})
    # How long before the limit Slurm signals the job (--signal=B:USR2@N); must cover one step + a save.
    signal_lead_s: int = field(default=900, metadata={"min": 10})
    # Kept at the end of a chunk for the stop, the requeue and the teardown: the wait for a save ends this long
    # before the limit, where Slurm sends SIGTERM to every process and SIGKILL KillWait later. Below
    # signal_lead_s (config_files.resolve says so).
    end_reserve_s: int = field(default=120, metadata={"min": 0})
    account: str = ""
    qos: str = ""
    constraint: str = ""
    exclusive: bool = True
    # JobRequeue=0 clusters get a chain of dependent jobs instead of `scontrol requeue`.
    requeue_allowed: bool = True
    # How the partition preempts a job. sigterm (Slurm's default): SIGTERM to every process of the step, which
    # no grace lets a chunk save from (Ray's workers and vLLM's EngineCore exit on it); signal: the site has
    # PreemptParameters=send_user_signal, so a preempted job first gets its --signal (USR2) and saves as at
    # its time limit; none: the partition never preempts. Only what the plan and preflight warn changes.
    preemption: str = field(default="sigterm", metadata={"choices": ("sigterm", "signal", "none")})
    # Seconds between the preemption's first signal and the kill (the partition's GraceTime): with
    # preemption: signal, the time a chunk has to finish its step and save.
    preempt_grace_s: int = field(default=300, metadata={"min": 0})
    # Ray's GCS port; per-job offsets avoid clashes between jobs that share a node. They stay below the
    # kernel's ephemeral ports (32768 up), so a base near that leaves few job slots.
    ray_port: int = field(default=20379, metadata={"min": 1024, "max": 32000})
    ray_wait_timeout_s: int = field(default=600, metadata={"min": 10})
    # The monitor daemon as a chain of small Slurm jobs (`justrl-hpc monitor-job RUN`) where login nodes end
    # long processes: its partition (empty: the chunks') and each link's time limit (0: time_limit_min).
    monitor_partition: str = ""
    monitor_time_limit_min: int = field(default=0, metadata={"min": 0})
    # Lines run before the chunk on each node (module loads, conda activate).
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Free space the run folder's filesystem needs beyond what retention keeps, in GB.
    min_free_disk_gb: float = field(default=50.0, metadata={"min": 0})
    # What the preflight expects on every node: the GPU model (a substring of NVML's name; empty: any) and
    # free shared memory (NCCL, vLLM and Ray's object store live in /dev/shm), in GB.
    gpu_model: str = ""
    min_shm_gb: float = field(default=1.0, metadata={"min": 0})
    # The interface whose IPv4 address Ray binds and NCCL/gloo use (NCCL_SOCKET_IFNAME), e.g. ib0; empty: the
    # hostname's address unless it is loopback, else the route to the head (jobs/train/addresses.py).
    network_interface: str = ""
    # How the node agent and the preflight read the GPUs: auto | nvml | none | replay:FILE (recorded data;
    # `{node}` in FILE is the node's Slurm name, a recording per node).
    nvml_backend: str = "auto"
    # A node that fails its preflight on hard evidence (a GPU's recovery action, uncorrectable ECC, a failed
    # row remap, a critical XID, a GPU held by a process that will not die, a broken install on that node
    # only): act = the chunk hands the run to a chained job that Slurm must not give the node; observe = it
    # records what it would have done (`would-exclude`) and the run stops as with off, naming the node.
    exclude_policy: str = field(default="act", metadata={"choices": ("act", "observe", "off")})
    # At most this many nodes left out at once (a job needs the others to start), each for this long, after
    # which the next chained job or `launch --wait`'s release readmits it (a repaired node comes back).
    max_excluded_nodes: int = field(default=1, metadata={"min": 0})
    exclude_for_h: float = field(default=24.0, metadata={"min": 0.01})


@dataclass
class RunConfig:
    """This run's identity and the suite's own policies."""

    name: str = ""
    root: str = "runs"
    run_dir: str = ""
    time_limit_min: int = field(default=0, metadata={"min": 0})  # 0: the cluster's
    # Retention: keep the newest K complete checkpoints plus every Nth step (0: none kept for that).
    keep_last: int = field(default=2, metadata={"min": 1})
    keep_every: int = field(default=500, metadata={"min": 0})
    # Consecutive chunks that end without a new checkpoint before the run stops and says why.
    max_no_progress_chunks: int = field(default=3, metadata={"min": 1})
    # Restarts of a crashed trainer inside its chunk's allocation (nodes alive, time left for a start-up and
    # a step) before the chunk requeues instead.
    max_in_job_restarts: int = field(default=2, metadata={"min": 0})
    # A hung trainer: no step for max(hang_factor × p95 step, hang_min_s), plus hang_startup_grace_s before a
    # trainer's first step (the S1 alert's figure, core/stall.py). The chunk then writes every process's stacks
    # to logs/stacks/ and, by on_hang: restart (in the job when item 1's rules allow, else requeue), requeue,
    # or wait (stacks only; for a person debugging the hang live).
    hang_factor: float = field(default=stall.WARN_FACTOR, metadata={"min": 1})
    hang_min_s: float = field(default=stall.WARN_MIN_S, metadata={"min": 1})
    hang_startup_grace_s: float = field(default=stall.STARTUP_GRACE_S, metadata={"min": 0})
    on_hang: str = field(default="restart", metadata={"choices": ("restart", "requeue", "wait")})
    # Requeue budget for the whole run (submitit's default of 3 would end a 15-day run on day 3).
    max_requeues: int = field(default=200, metadata={"min": 1})
    # Evaluation along the run (core/eval_along.py): a one-node evaluate job for each kept save at a multiple of
    # eval_every (0: off), one at a time, with these `launch --job evaluate` options (its defaults otherwise).
    eval_every: int = field(default=0, metadata={"min": 0})
    eval_args: list[str] = field(default_factory=list)


@dataclass
class Resolved:
    """Everything a chunk needs; written once as run.yaml."""

    recipe: RecipeConfig
    cluster: ClusterConfig
    run: RunConfig

    @property
    def time_limit_min(self) -> int:
        return self.run.time_limit_min or self.cluster.time_limit_min

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": asdict(self.recipe),
            "cluster": asdict(self.cluster),
            "run": asdict(self.run),
            "recipe_fingerprint": self.recipe.fingerprint(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resolved:
        recipe = dict(data.get("recipe") or {})
        # run.yaml written before 2026-12-01: an empty trainer_extra is the same recipe; a filled one holds the
        # deleted rehearsal imitation's knobs, whose runs verl cannot resume.
        if recipe.pop("trainer_extra", None) or recipe.get("trainer") == "rehearsal":
            raise UserError("this run was trained by the rehearsal imitation that verl's own trainer replaced; "
                            "start a new run (justrl-hpc rehearse)", "recipe.trainer")
        data = {**data, "recipe": recipe}
        return cls(
            recipe=build(RecipeConfig, data.get("recipe") or {}, "recipe"),
            cluster=build(ClusterConfig, data.get("cluster") or {}, "cluster"),
            run=build(RunConfig, data.get("run") or {}, "run"),
        )


def _digest(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


