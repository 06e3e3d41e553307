"""The JustRL recipe → the exact Hydra overrides for `python -m verl.trainer.main_ppo`.

HYPERPARAMETERS is both the schema the suite accepts in a recipe's `hyperparameters:` mapping and the
fidelity table: each verl 0.9.1 key with its type and the value JustRL published (thunlp/JustRL,
train/run_training.sh). A test composes verl's own ppo_trainer.yaml with `overrides()` so that a verl
upgrade that renames a key fails there, not on day 6 of a run.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from justrl_hpc.core.config import RecipeConfig, Resolved
from justrl_hpc.core.errors import UserError
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.settings import check_value

PROMPT_SUFFIX = "\n\nPlease reason step by step, and put your final answer within \\boxed{}."
# verl's legacy trainer (trainer.use_v1=False) is the one that calls should_save_ckpt_esi, which reads this.
DEADLINE_ENV = "MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP"
REWARD_FUNCTION = "compute_score"
# verl loads the reward by file path from the run's code snapshot (it runs inside verl's reward workers).
REWARD_FILE = Path("justrl_hpc", "jobs", "train", "in_worker", "reward.py")


@dataclass(frozen=True)
class Hyper:
    type: Any
    published: Any
    note: str = ""


HYPERPARAMETERS: dict[str, Hyper] = {
    "algorithm.adv_estimator": Hyper(str, "grpo"),
    "algorithm.use_kl_in_reward": Hyper(bool, False),
    "algorithm.kl_ctrl.kl_coef": Hyper(float, 0.0),
    "data.train_batch_size": Hyper(int, 256),
    "data.max_prompt_length": Hyper(int, 1024),
    "data.max_response_length": Hyper(int, 15360),
    "data.filter_overlong_prompts": Hyper(bool, True),
    "data.truncation": Hyper(str, "error"),
    "actor_rollout_ref.actor.optim.lr": Hyper(float, 1e-6),
    "actor_rollout_ref.actor.optim.lr_warmup_steps": Hyper(int, 10),
    "actor_rollout_ref.actor.optim.weight_decay": Hyper(float, 0.1),
    "actor_rollout_ref.actor.optim.clip_grad": Hyper(
        float, 1.0, "published as actor.grad_clip, which verl 0.9.1 no longer reads"
    ),
    "actor_rollout_ref.actor.ppo_mini_batch_size": Hyper(int, 64),
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": Hyper(int, 1),
    "actor_rollout_ref.actor.use_dynamic_bsz": Hyper(bool, True),
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": Hyper(int, 32768),
    "actor_rollout_ref.actor.entropy_coeff": Hyper(float, 0.0),
    "actor_rollout_ref.actor.use_kl_loss": Hyper(bool, False),
    "actor_rollout_ref.actor.kl_loss_coef": Hyper(float, 0.0),
    "actor_rollout_ref.actor.clip_ratio_low": Hyper(float, 0.2),
    "actor_rollout_ref.actor.clip_ratio_high": Hyper(float, 0.28),
    "actor_rollout_ref.actor.clip_ratio_c": Hyper(float, 10.0),
    "actor_rollout_ref.actor.loss_agg_mode": Hyper(str, "token-mean"),
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size": Hyper(int, 1),
    "actor_rollout_ref.actor.fsdp_config.param_offload": Hyper(bool, False),
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": Hyper(bool, False),
    "actor_rollout_ref.model.use_remove_padding": Hyper(bool, True),
    "actor_rollout_ref.model.enable_gradient_checkpointing": Hyper(bool, True),
    "actor_rollout_ref.rollout.name": Hyper(str, "vllm"),
    "actor_rollout_ref.rollout.tensor_model_parallel_size": Hyper(int, 1),
    "actor_rollout_ref.rollout.n": Hyper(int, 8),
    "actor_rollout_ref.rollout.temperature": Hyper(float, 1.0),
    "actor_rollout_ref.rollout.gpu_memory_utilization": Hyper(float, 0.85),
    "actor_rollout_ref.rollout.max_num_batched_tokens": Hyper(int, 32768),
    "actor_rollout_ref.rollout.max_model_len": Hyper(int, 32768, "hard-coded in their verl fork"),
    "actor_rollout_ref.rollout.val_kwargs.do_sample": Hyper(bool, True),
    "actor_rollout_ref.rollout.val_kwargs.n": Hyper(int, 32),
    "actor_rollout_ref.rollout.val_kwargs.temperature": Hyper(float, 0.7),
    "actor_rollout_ref.rollout.val_kwargs.top_p": Hyper(float, 0.9),
    "reward.reward_manager.name": Hyper(
        str, "dapo", "overlong penalty off: verl's default overlong_buffer_cfg is None"
    ),
    "reward.reward_model.enable": Hyper(bool, False),
}

# Published settings that verl 0.9.1 cannot take as they were; shown in the fidelity table, not passed.
NOT_EXPRESSIBLE = {
    "validation grading": "their fork grades AIME24/AIME25/AMC23 validation with Math-Verify (1/0), training "
    "with DAPO's strict box (±1): the suite's reward does the same, by data_source (jobs/train/in_worker/reward.py)",
    "validation max new tokens 31744": "their fork's +val_kwargs.max_new_tokens; verl 0.9.1 validates with "
    "data.max_response_length (15360). The evaluate job uses 31,744.",
}

# The CPU backend's rollout (justrl_hpc.dev.verl_cpu): a recipe with device: cpu must name it.
CPU_ROLLOUT = "hf-cpu"
# What asks verl's processes for the CPU backend (justrl_hpc.dev.verl_cpu registers nothing without it): set in
# a device: cpu recipe's chunks (jobs/train/submission.chunk_env), never where verl runs on GPUs.
CPU_BACKEND_ENV = "JUSTRL_VERL_CPU"
GPU_ROLLOUTS = ("vllm", "sglang", "trtllm")

# What a CPU recipe (the rehearsal) may add on top of the real recipes' overrides, beside the sizes it
# changes in `hyperparameters` (batch sizes, lengths, learning rate, rollout name; marked DIFFERS in the
# fidelity table). Nothing else may differ: tests/core/test_recipe.py diffs the trainer commands.
SCALE_DOWN: dict[str, Hyper] = {
    "trainer.device": Hyper(str, "cuda", "verl's device; the CPU backend's platform is cpu"),
    "actor_rollout_ref.actor.strategy": Hyper(
        str, "fsdp", "FSDP2 on CPU: FSDP1's sync_module_states needs GPU tensors (torch refuses CPU ones)"
    ),
    "+actor_rollout_ref.model.override_config.attn_implementation": Hyper(
        str, "flash_attention_2", "verl's default; flash-attn is CUDA-only"
    ),
    "actor_rollout_ref.actor.fsdp_config.use_torch_compile": Hyper(bool, True, "compile time on 2 cores"),
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype": Hyper(str, "bf16", "CPU math in fp32"),
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision.reduce_dtype": Hyper(str, "fp32", "CPU math in fp32"),
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision.buffer_dtype": Hyper(str, "fp32", "CPU math in fp32"),
    "actor_rollout_ref.rollout.agent.num_workers": Hyper(int, 8, "8 agent-loop processes on 2 cores"),
    "reward.num_workers": Hyper(int, 8, "8 reward processes on 2 cores"),
}

# verl's overlong-prompt filter (RLHFDataset) tokenizes every training row, the chat template applied to its
# prompt, at each chunk's start unless HF datasets' cache of an earlier chunk is at hand; ppo_trainer.yaml's
# 1 process makes that ~5-14 min over the 1.79 M-row DAPO parquet (2,200-5,800 rows/s, measured with the
# rehearsal's tokenizer). The suite raises the count rather than filtering once in prepare-data and turning
# verl's filter off: that would rest on a guess that a parquet was filtered for this model's tokenizer and
# chat template (the two real recipes share one parquet, not one template) and this max_prompt_length, and a
# wrong guess is an overlong prompt inside a days-long run. More processes keep verl's own check on each run's
# actual data and the same rows in the same order (contiguous shards, concatenated), and leave the published
# filter_overlong_prompts=True and the recipe fingerprint (the resume guard) as they are. The count belongs to
# the nodes, not the recipe: a quarter of the CPUs the job asked for (cluster.cpus_per_node), verl's own rule
# when the key is unset (os.cpu_count() // 4, which counts the whole machine). The driver's node is idle then
# (main_ppo builds the datasets before it starts the workers): 24 on the published 96-CPU nodes; 1 on the
# rehearsal's 2, where a second process saved nothing on its 688 rows.
FILTER_WORKERS_KEY = "data.filter_overlong_prompts_workers"


def filter_workers(cpus_per_node: int) -> int:
    return max(1, cpus_per_node // 4)


# Keys the suite sets itself, per run and per chunk; a recipe may not set them.
SUITE_OWNED = (
    "trainer.",
    FILTER_WORKERS_KEY,
    "data.train_files",
    "data.val_files",
    "actor_rollout_ref.model.path",
    "reward.custom_reward_function",
    "custom_reward_function",
    "ray_kwargs",
)


def validate(recipe: RecipeConfig) -> None:
    for key, value in recipe.hyperparameters.items():
        where = f"recipe.hyperparameters.{key}"
        if key == FILTER_WORKERS_KEY:
            raise UserError("is set by the suite from the nodes' CPUs (a quarter of cluster.cpus_per_node); "
                            "change cluster.cpus_per_node instead", where)
        if key.startswith(SUITE_OWNED):
            raise UserError("is set by the suite (run identity, checkpoints, steps), not by a recipe", where)
        spec = HYPERPARAMETERS.get(key)
        if spec is None:
            raise UserError(
                "not a hyperparameter the suite knows; see the fidelity table (`justrl-hpc recipe show`)",
                where,
            )
        recipe.hyperparameters[key] = check_value(value, spec.type, where)
    for key, value in recipe.scale_down.items():
        where = f"recipe.scale_down.{key}"
        if recipe.device != "cpu":
            raise UserError("only a CPU recipe (device: cpu) scales verl down; remove it", where)
        spec = SCALE_DOWN.get(key)
        if spec is None:
            raise UserError(f"not a scale-down key; known: {', '.join(SCALE_DOWN)}", where)
        recipe.scale_down[key] = check_value(value, spec.type, where)
    rollout = recipe.hyperparameters.get("actor_rollout_ref.rollout.name", "vllm")
    if rollout not in GPU_ROLLOUTS + (CPU_ROLLOUT,):
        raise UserError(
            f"unknown rollout {rollout!r}; verl 0.9.1 serves {', '.join(GPU_ROLLOUTS)} on GPUs, the CPU backend "
            f"{CPU_ROLLOUT}", "recipe.hyperparameters.actor_rollout_ref.rollout.name")
    if recipe.device == "cuda" and rollout == CPU_ROLLOUT:
        raise UserError(f"{CPU_ROLLOUT} is the CPU backend's rollout; a GPU recipe uses vllm",
                        "recipe.hyperparameters.actor_rollout_ref.rollout.name")
    if recipe.device == "cpu":
        if rollout != CPU_ROLLOUT:
            raise UserError(
                f"{rollout!r} needs GPUs; the CPU backend's rollout is {CPU_ROLLOUT!r}",
                "recipe.hyperparameters.actor_rollout_ref.rollout.name",
            )
    if not recipe.model_path:
        raise UserError("a recipe needs the model to train (path or hub id)", "recipe.model_path")
    if not recipe.train_files:
        raise UserError("at least one training parquet is needed", "recipe.train_files")
    hp = recipe.hyperparameters
    mini = hp.get("actor_rollout_ref.actor.ppo_mini_batch_size")
    batch = hp.get("data.train_batch_size")
    if mini and batch and batch % mini:
        raise UserError(
            f"data.train_batch_size {batch} must be a multiple of ppo_mini_batch_size {mini}",
            "recipe.hyperparameters.actor_rollout_ref.actor.ppo_mini_batch_size",
        )


def fmt(value: Any) -> str:
    """A value as Hydra's override grammar reads it back to the same type."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_quote(v) if isinstance(v, str) else fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return _quote(value) if any(c in value for c in " ,[]{}()='\"\\:") else value
    return str(value)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class ChunkContext:
    """What changes from chunk to chunk; everything else is fixed per run."""

    first_chunk: bool = True
    deadline_epoch: float | None = None


def overrides(resolved: Resolved, run_dir: Path, chunk: ChunkContext | None = None) -> list[str]:
    """The exact `key=value` list the trainer gets. Same function for the plan and for each chunk."""
    recipe = resolved.recipe
    chunk = chunk or ChunkContext()
    code = RunPaths(run_dir).code
    out: list[str] = [f"{k}={fmt(v)}" for k, v in recipe.hyperparameters.items()]
    out += [
        f"{FILTER_WORKERS_KEY}={filter_workers(resolved.cluster.cpus_per_node)}",
        f"data.train_files={fmt(recipe.train_files)}",
        f"data.val_files={fmt(recipe.val_files)}",
        f"actor_rollout_ref.model.path={fmt(recipe.model_path)}",
        # The strict boxed reward, from the run's code snapshot (never from a checkout that may change).
        f"reward.custom_reward_function.path={fmt(str(code / REWARD_FILE))}",
        f"reward.custom_reward_function.name={REWARD_FUNCTION}",
        f"trainer.nnodes={recipe.nnodes}",
        f"trainer.n_gpus_per_node={recipe.ranks_per_node}",
        # Explicit: one epoch over the 100×-duplicated DAPO parquet would be 6,998 steps, not 4,380.
        f"trainer.total_training_steps={recipe.total_training_steps}",
        "trainer.total_epochs=1000",
        f"trainer.save_freq={recipe.save_freq}",
        f"trainer.test_freq={recipe.test_freq}",
        f"trainer.logger={fmt(['console', 'tensorboard', *recipe.trackers])}",
        "trainer.project_name=justrl",
        # Stable identity: a timestamp here made every relaunch of the published script a fresh run.
        f"trainer.experiment_name={fmt(resolved.run.name)}",
        f"trainer.default_local_dir={fmt(str(run_dir / 'checkpoints'))}",
        "trainer.resume_mode=auto",
        f"trainer.val_before_train={fmt(chunk.first_chunk or recipe.validate_on_resume)}",
        # The suite owns retention: verl's list lives in memory and forgets checkpoints across restarts.
        "trainer.max_actor_ckpt_to_keep=null",
        f"trainer.esi_redundant_time={recipe.deadline_margin_s}",
    ]
    out += [f"{k}={fmt(v)}" for k, v in recipe.scale_down.items()]
    out += [
        # The legacy trainer is the one that honours the deadline (should_save_ckpt_esi); V1 ignores it.
        "trainer.use_v1=False",
        # TENSORBOARD_DIR must reach the Ray actor that logs, and the stop-file watcher every worker. The
        # run's code reaches the workers through the raylets' PYTHONPATH (the chunk starts them): an
        # env_vars.PYTHONPATH here would replace the workers' PYTHONPATH, not extend it.
        f"+ray_kwargs.ray_init.runtime_env.env_vars.TENSORBOARD_DIR={_quote(str(run_dir / 'tensorboard'))}",
        "+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook=justrl_hpc.jobs.train.in_worker.deadline_hook.install",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.JUSTRL_CONTROL_DIR={_quote(str(run_dir / 'control'))}",
    ]
    # verl calls wandb.init(project, name) with no id: the id and resume come from the environment of the
    # Ray actor that logs, so every chunk continues one tracker run.
    out += [f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}={_quote(v)}" for k, v in tracker_env(resolved, run_dir).items()]
    if chunk.deadline_epoch is not None:
        # Quoted: Ray refuses a runtime env whose env_vars are not all strings, and Hydra reads a bare
        # number as an int.
        out.append(
            f"+ray_kwargs.ray_init.runtime_env.env_vars.{DEADLINE_ENV}={_quote(str(int(chunk.deadline_epoch)))}"
        )
    return out


def tracker_run_id(run_name: str, run_dir: Path) -> str:
    """The one W&B run id of a run folder: its name (W&B's allowed characters) and a hash of its path, so two
    runs of one name in different folders stay apart; derived, not stored, so a plan shows it too."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", run_name).strip("-")[:48] or "run"
    return f"{name}-{digest}"


def tracker_env(resolved: Resolved, run_dir: Path) -> dict[str, str]:
    """What the trackers verl starts need in its logging actor. W&B: offline unless WANDB_MODE says otherwise
    (compute nodes often have no network; `wandb sync --id ID RUN/wandb/offline-run-*` uploads it later),
    its files under the run folder. The API key is never put here: it reaches Ray's workers through the
    environment the chunk started them with, and a command line is logged."""
    if "wandb" not in resolved.recipe.trackers:
        return {}
    return {
        "WANDB_RUN_ID": tracker_run_id(resolved.run.name, run_dir),
        "WANDB_RESUME": "allow",
        "WANDB_MODE": os.environ.get("WANDB_MODE") or "offline",
        "WANDB_DIR": str(Path(run_dir).resolve()),
    }


def trainer_command(resolved: Resolved, run_dir: Path, chunk: ChunkContext | None = None) -> list[str]:
    return ["python", "-m", "verl.trainer.main_ppo", *overrides(resolved, run_dir, chunk)]


def fidelity_rows(recipe: RecipeConfig) -> list[tuple[str, str, str, str]]:
    """(key, published, this recipe, note) for every published value; a differing value is marked."""
    rows = []
    for key, spec in HYPERPARAMETERS.items():
        mine = recipe.hyperparameters.get(key, "(verl default)")
        same = mine == spec.published
        rows.append(
            (
                key,
                fmt(spec.published),
                fmt(mine) if mine != "(verl default)" else mine,
                ("" if same else "DIFFERS ") + spec.note,
            )
        )
    for what, note in NOT_EXPRESSIBLE.items():
        rows.append((what, "", "", note))
    return rows


def gpus_for(resolved: Resolved) -> int:
    return resolved.recipe.nnodes * (resolved.cluster.gpus_per_node or resolved.recipe.ranks_per_node)


def save_seconds(recipe: RecipeConfig) -> float:
    # ~3 s per GB: a 21 GB JustRL checkpoint takes about a minute to a parallel filesystem.
    return max(1.0, 3.0 * recipe.checkpoint_gb)


def timing_warnings(resolved: Resolved) -> list[str]:
    """The cluster's signal lead and preemption against a step and a save: said by the plan (`--dry-run`) on
    the login node and by the preflight on the nodes, in the same words."""
    r, c = resolved.recipe, resolved.cluster
    save_s = save_seconds(r)
    warnings: list[str] = []
    if c.signal_lead_s < r.expected_step_s + save_s:
        warnings.append(
            f"signal lead {c.signal_lead_s} s is shorter than one step + a save (~{r.expected_step_s + save_s:.0f} s): "
            "the deadline save still happens, but a late signal may find no time to save"
        )
    need = math.ceil(r.expected_step_s + save_s + 10)  # the step in flight, its save, the stop
    cost = (f"costs up to save_freq = {r.save_freq} steps "
            f"(~{r.save_freq * r.expected_step_s / 3600:.1f} h of {gpus_for(resolved)} GPUs)")
    if c.preemption == "sigterm":
        # No grace helps: the suite's own processes ignore SIGTERM, but Ray's workers and vLLM's EngineCore
        # install their own handlers, and cgroup process tracking delivers the signal to every one of them.
        warnings.append(
            "a SIGTERM-only preemption can never save, whatever the grace: under cgroup process tracking Slurm "
            "sends SIGTERM to every process of the step, and Ray's workers and vLLM's EngineCore exit on it before "
            f"verl can save, so each preemption {cost}. Ask the site for signal-based preemption: "
            "PreemptParameters=send_user_signal in slurm.conf (a preempted job first gets its --signal, USR2, and "
            f"saves as at its time limit; PreemptMode=REQUEUE brings it back) with a GraceTime of {need} s or more; "
            "then set cluster.preemption: signal and cluster.preempt_grace_s to that GraceTime"
        )
    elif c.preemption == "signal" and c.preempt_grace_s < need:
        warnings.append(
            f"preemption grace {c.preempt_grace_s} s is shorter than a step + a save + the stop (~{need} s): the USR2 "
            "of a preemption leaves no time to save (nor in a chunk's first step: verl's deadline save needs one "
            f"step's time) and {cost}; ask the site for a GraceTime of {need} s or more (cluster.preempt_grace_s)"
        )
    return warnings
