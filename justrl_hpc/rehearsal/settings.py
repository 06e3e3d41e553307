"""Hydra-style `key=value` overrides → one typed `Settings`.

Every key of `justrl_hpc.recipe.HYPERPARAMETERS` is accepted. The algorithmic ones are honoured; the ones
that only steer GPU engines (vLLM, FSDP, sequence packing) are accepted and ignored, listed in `NO_OP`.
The suite's own keys (`trainer.*`, data files, model path, reward function) are honoured as verl does, and
`rehearsal.*` holds this trainer's own knobs. Anything else is refused before anything is written.
Parsing imports no torch, so a bad override fails in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from justrl_hpc.errors import UserError

# dotted key → (Settings field, type). Types: int, float, bool, str, "list" (of str), or a tuple of those
# plus None for an optional value. Defaults live in Settings (verl 0.9.1's ppo_trainer.yaml where it has one).
_SPEC: dict[str, tuple[str, Any]] = {
    # --- the algorithm (honoured) ---
    "algorithm.adv_estimator": ("adv_estimator", str),
    "algorithm.use_kl_in_reward": ("use_kl_in_reward", bool),
    "algorithm.kl_ctrl.kl_coef": ("kl_coef", float),
    "algorithm.norm_adv_by_std_in_grpo": ("norm_adv_by_std_in_grpo", bool),
    "data.train_batch_size": ("train_batch_size", int),
    "data.max_prompt_length": ("max_prompt_length", int),
    "data.max_response_length": ("max_response_length", int),
    "data.filter_overlong_prompts": ("filter_overlong_prompts", bool),
    "data.truncation": ("truncation", str),
    "data.shuffle": ("shuffle", bool),
    "data.seed": ("data_seed", (int, None)),
    "actor_rollout_ref.actor.optim.lr": ("lr", float),
    "actor_rollout_ref.actor.optim.lr_warmup_steps": ("lr_warmup_steps", int),
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": ("lr_warmup_steps_ratio", float),
    "actor_rollout_ref.actor.optim.weight_decay": ("weight_decay", float),
    "actor_rollout_ref.actor.optim.clip_grad": ("clip_grad", float),
    "actor_rollout_ref.actor.ppo_mini_batch_size": ("ppo_mini_batch_size", int),
    "actor_rollout_ref.actor.ppo_epochs": ("ppo_epochs", int),
    "actor_rollout_ref.actor.entropy_coeff": ("entropy_coeff", float),
    "actor_rollout_ref.actor.use_kl_loss": ("use_kl_loss", bool),
    "actor_rollout_ref.actor.kl_loss_coef": ("kl_loss_coef", float),
    "actor_rollout_ref.actor.clip_ratio_low": ("clip_ratio_low", float),
    "actor_rollout_ref.actor.clip_ratio_high": ("clip_ratio_high", float),
    "actor_rollout_ref.actor.clip_ratio_c": ("clip_ratio_c", float),
    "actor_rollout_ref.actor.loss_agg_mode": ("loss_agg_mode", str),
    "actor_rollout_ref.rollout.n": ("rollout_n", int),
    "actor_rollout_ref.rollout.temperature": ("temperature", float),
    "actor_rollout_ref.rollout.top_p": ("top_p", float),
    "actor_rollout_ref.rollout.val_kwargs.do_sample": ("val_do_sample", bool),
    "actor_rollout_ref.rollout.val_kwargs.n": ("val_n", int),
    "actor_rollout_ref.rollout.val_kwargs.temperature": ("val_temperature", float),
    "actor_rollout_ref.rollout.val_kwargs.top_p": ("val_top_p", float),
    "reward.reward_manager.name": ("reward_manager", str),
    "reward.reward_model.enable": ("reward_model_enable", bool),
    # --- set by the suite per run and per chunk (honoured) ---
    "data.train_files": ("train_files", "list"),
    "data.val_files": ("val_files", "list"),
    "actor_rollout_ref.model.path": ("model_path", str),
    "reward.custom_reward_function.path": ("reward_path", (str, None)),
    "reward.custom_reward_function.name": ("reward_name", (str, None)),
    "trainer.nnodes": ("nnodes", int),
    "trainer.n_gpus_per_node": ("n_gpus_per_node", int),
    "trainer.total_training_steps": ("total_training_steps", (int, None)),
    "trainer.total_epochs": ("total_epochs", int),
    "trainer.save_freq": ("save_freq", int),
    "trainer.test_freq": ("test_freq", int),
    "trainer.logger": ("logger", "list"),
    "trainer.project_name": ("project_name", str),
    "trainer.experiment_name": ("experiment_name", str),
    "trainer.default_local_dir": ("default_local_dir", str),
    "trainer.resume_mode": ("resume_mode", str),
    "trainer.resume_from_path": ("resume_from_path", (str, None)),
    "trainer.val_before_train": ("val_before_train", bool),
    "trainer.max_actor_ckpt_to_keep": ("max_actor_ckpt_to_keep", (int, None)),
    "trainer.esi_redundant_time": ("esi_redundant_time", float),
    # --- the rehearsal's own knobs ---
    # Each step lasts at least this long (padding), so chunk limits are crossed in seconds.
    "rehearsal.min_step_time_s": ("min_step_time_s", float),
    "rehearsal.seed": ("seed", int),
    # Ray nodes to require when RAY_ADDRESS is set; default trainer.nnodes. Lower it where one Ray node stands
    # for several of the run's nodes: a single `ray start` on a laptop or CI host shows Ray one node however
    # many nodes the override list says the run spans (the dev cluster's fake nodes each run a raylet).
    "rehearsal.expect_ray_nodes": ("expect_ray_nodes", (int, None)),
    # Rollout workers (Ray actors) across the allocation; default one per rank (nnodes × n_gpus_per_node).
    "rehearsal.rollout_workers": ("rollout_workers", (int, None)),
    "rehearsal.threads": ("threads", int),
    # Fault injection for tests: raise at the start of step N; SIGKILL itself mid-save at step N, at the
    # point the phase names (see SAVE_CRASH_PHASES).
    "rehearsal.crash_at_step": ("crash_at_step", (int, None)),
    "rehearsal.crash_during_save_at_step": ("crash_during_save_at_step", (int, None)),
    "rehearsal.crash_during_save_phase": ("crash_during_save_phase", str),
    # Append one JSON line per trained step (step, epoch, the train rows used): the sample sequence.
    "rehearsal.sample_log": ("sample_log", (str, None)),
}

# Accepted so the same override list drives verl and the rehearsal; they steer GPU engines only.
NO_OP: dict[str, tuple[Any, str]] = {
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": (int, "one process does each mini-batch at once"),
    "actor_rollout_ref.actor.use_dynamic_bsz": (bool, "no token-budget packing on CPU"),
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": (int, "no token-budget packing on CPU"),
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size": (int, "no sequence parallelism"),
    "actor_rollout_ref.actor.fsdp_config.param_offload": (bool, "no FSDP"),
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": (bool, "no FSDP"),
    "actor_rollout_ref.model.use_remove_padding": (bool, "padded batches; the math is the same"),
    "actor_rollout_ref.model.enable_gradient_checkpointing": (bool, "the tiny model needs no recompute"),
    "actor_rollout_ref.rollout.name": (str, "generation is Hugging Face generate, not vLLM/SGLang"),
    "actor_rollout_ref.rollout.tensor_model_parallel_size": (int, "no tensor parallelism"),
    "actor_rollout_ref.rollout.gpu_memory_utilization": (float, "no GPU"),
    "actor_rollout_ref.rollout.max_num_batched_tokens": (int, "no vLLM scheduler"),
    "actor_rollout_ref.rollout.max_model_len": (int, "no vLLM KV cache"),
}

LOGGERS = ("console", "tensorboard")
RESUME_MODES = ("auto", "disable", "resume_path")
TRUNCATIONS = ("error", "left", "right", "middle")
# Where a save dies: half-way through rank 0's model shard; after every rank's shards, before data.pt;
# half-way through data.pt (every file there, one cut short); after data.pt, before the tracker (a complete
# checkpoint the tracker does not name).
SAVE_CRASH_PHASES = ("shard", "data", "data-file", "tracker")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class Settings:
    adv_estimator: str = "gae"
    use_kl_in_reward: bool = False
    kl_coef: float = 0.001
    norm_adv_by_std_in_grpo: bool = True
    train_batch_size: int = 1024
    max_prompt_length: int = 512
    max_response_length: int = 512
    filter_overlong_prompts: bool = False
    truncation: str = "error"
    shuffle: bool = True
    data_seed: int | None = None
    lr: float = 1e-6
    lr_warmup_steps: int = -1
    lr_warmup_steps_ratio: float = 0.0
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    ppo_mini_batch_size: int = 256
    ppo_epochs: int = 1
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    rollout_n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    val_do_sample: bool = False
    val_n: int = 1
    val_temperature: float = 0.0
    val_top_p: float = 1.0
    reward_manager: str = "naive"
    reward_model_enable: bool = False
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    model_path: str = ""
    reward_path: str | None = None
    reward_name: str | None = "compute_score"
    nnodes: int = 1
    n_gpus_per_node: int = 8
    total_training_steps: int | None = None
    total_epochs: int = 30
    save_freq: int = -1
    test_freq: int = -1
    logger: list[str] = field(default_factory=lambda: ["console"])
    project_name: str = "verl_examples"
    experiment_name: str = "gsm8k"
    default_local_dir: str = "checkpoints/verl_examples/gsm8k"
    resume_mode: str = "auto"
    resume_from_path: str | None = None
    val_before_train: bool = True
    max_actor_ckpt_to_keep: int | None = None
    esi_redundant_time: float = 0.0
    min_step_time_s: float = 0.0
    seed: int = 1
    expect_ray_nodes: int | None = None
    rollout_workers: int | None = None
    threads: int = 1
    crash_at_step: int | None = None
    crash_during_save_at_step: int | None = None
    crash_during_save_phase: str = "data"
    sample_log: str | None = None
    # Everything as given (dotted keys), for the tracker's config dump and the console.
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.n_gpus_per_node

    @property
    def warmup_steps(self) -> int:
        """verl's rule: lr_warmup_steps if positive, else ratio × total steps."""
        if self.lr_warmup_steps > 0:
            return self.lr_warmup_steps
        return int(self.lr_warmup_steps_ratio * (self.total_training_steps or 0))


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    if t is None:
        return "null"
    if t == "list":
        return "a list of strings"
    return t.__name__


def _coerce(key: str, value: Any, t: Any) -> Any:
    if isinstance(t, tuple):
        if value is None and None in t:
            return None
        for option in t:
            if option is None:
                continue
            try:
                return _coerce(key, value, option)
            except UserError:
                continue
        raise UserError(f"expected {_type_name(t)}, got {value!r}", key)
    if t == "list":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise UserError(f"expected a list of strings like ['a','b'], got {value!r}", key)
    if t is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"expected True or False, got {value!r}", key)
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"expected an integer, got {value!r}", key)
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"expected a number, got {value!r}", key)
    if t is str:
        if isinstance(value, str):
            return value
        raise UserError(f"expected a string, got {value!r}", key)
    raise AssertionError(t)


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """`key=value` strings → {dotted key: python value}, with Hydra's own grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out: dict[str, Any] = {}
    for arg in argv:
        try:
            ov = parser.parse_override(arg)
        except HydraException as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unparsable"
            raise UserError(
                f"not a KEY=VALUE override ({first}); quote values with spaces or commas", arg
            ) from exc
        if ov.is_delete():
            raise UserError("deleting keys (~key) is not supported by the rehearsal trainer", arg)
        key = ov.key_or_group
        if key not in _SPEC and key not in NO_OP:
            raise UserError(
                f"unknown override {key}: the rehearsal takes the keys in justrl_hpc.recipe.HYPERPARAMETERS, "
                "the suite's trainer/data/model/reward keys and rehearsal.* (see docs/rehearsal.md)"
            )
        out[key] = ov.value()
    return out


def resolve(argv: list[str]) -> Settings:
    """Parse and validate. Raises UserError (one line naming the key and the fix) for any bad input."""
    given = parse_overrides(argv)
    values: dict[str, Any] = {}
    for key, value in given.items():
        if key in NO_OP:
            _coerce(key, value, NO_OP[key][0])
            continue
        name, t = _SPEC[key]
        values[name] = _coerce(key, value, t)
    s = Settings(**values, raw=dict(given))
    _validate(s)
    return s


def _validate(s: Settings) -> None:
    def bad(key: str, why: str) -> UserError:
        return UserError(why, key)

    if s.adv_estimator != "grpo":
        raise bad("algorithm.adv_estimator", f"the rehearsal implements grpo only; got {s.adv_estimator!r}")
    if s.use_kl_loss:
        raise bad(
            "actor_rollout_ref.actor.use_kl_loss", "the rehearsal does not implement KL; set it to False"
        )
    if s.use_kl_in_reward:
        raise bad("algorithm.use_kl_in_reward", "the rehearsal does not implement KL; set it to False")
    if s.reward_model_enable:
        raise bad("reward.reward_model.enable", "the rehearsal has no reward model; set it to False")
    if s.reward_manager not in ("dapo", "naive"):
        raise bad("reward.reward_manager.name", f"use dapo (or naive); got {s.reward_manager!r}")
    if s.loss_agg_mode not in LOSS_AGG_MODES:
        raise bad("actor_rollout_ref.actor.loss_agg_mode", f"one of {', '.join(LOSS_AGG_MODES)}")
    if s.truncation not in TRUNCATIONS:
        raise bad("data.truncation", f"one of {', '.join(TRUNCATIONS)}")
    if s.resume_mode not in RESUME_MODES:
        raise bad("trainer.resume_mode", f"one of {', '.join(RESUME_MODES)}")
    if s.crash_during_save_phase not in SAVE_CRASH_PHASES:
        raise bad("rehearsal.crash_during_save_phase", f"one of {', '.join(SAVE_CRASH_PHASES)}")
    if s.resume_mode == "resume_path" and (
        not s.resume_from_path or "global_step_" not in s.resume_from_path
    ):
        raise bad("trainer.resume_from_path", "resume_mode=resume_path needs a …/global_step_N folder here")
    for name in s.logger:
        if name not in LOGGERS:
            raise bad("trainer.logger", f"the rehearsal logs to {' and '.join(LOGGERS)}; got {name!r}")
    positive = {
        "data.train_batch_size": s.train_batch_size,
        "data.max_prompt_length": s.max_prompt_length,
        "data.max_response_length": s.max_response_length,
        "actor_rollout_ref.actor.ppo_mini_batch_size": s.ppo_mini_batch_size,
        "actor_rollout_ref.actor.ppo_epochs": s.ppo_epochs,
        "actor_rollout_ref.rollout.n": s.rollout_n,
        "actor_rollout_ref.rollout.val_kwargs.n": s.val_n,
        "trainer.nnodes": s.nnodes,
        "trainer.n_gpus_per_node": s.n_gpus_per_node,
        "trainer.total_epochs": s.total_epochs,
        "rehearsal.threads": s.threads,
    }
    for key, value in positive.items():
        if value < 1:
            raise bad(key, f"must be at least 1; got {value}")
    if s.total_training_steps is not None and s.total_training_steps < 1:
        raise bad(
            "trainer.total_training_steps", f"must be at least 1 (or null); got {s.total_training_steps}"
        )
    if s.train_batch_size % s.ppo_mini_batch_size:
        raise bad(
            "actor_rollout_ref.actor.ppo_mini_batch_size",
            f"data.train_batch_size {s.train_batch_size} must be a multiple of it ({s.ppo_mini_batch_size})",
        )
    if s.clip_ratio_c <= 1.0:
        raise bad(
            "actor_rollout_ref.actor.clip_ratio_c", f"dual-clip needs a value above 1.0; got {s.clip_ratio_c}"
        )
    if s.temperature <= 0:
        raise bad(
            "actor_rollout_ref.rollout.temperature", "training rollouts sample: use a temperature above 0"
        )
    for key, p in (
        ("actor_rollout_ref.rollout.top_p", s.top_p),
        ("actor_rollout_ref.rollout.val_kwargs.top_p", s.val_top_p),
    ):
        if not 0 < p <= 1:
            raise bad(key, f"must be in (0, 1]; got {p}")
    if not s.train_files:
        raise bad("data.train_files", "give at least one training parquet")
    if not s.model_path:
        raise bad("actor_rollout_ref.model.path", "give the Hugging Face folder of the base model")
    if s.reward_path and not s.reward_name:
        raise bad("reward.custom_reward_function.name", "name the function to load from the reward file")
    if s.min_step_time_s < 0:
        raise bad("rehearsal.min_step_time_s", "must be 0 or more seconds")
    for key, v in (
        ("rehearsal.expect_ray_nodes", s.expect_ray_nodes),
        ("rehearsal.rollout_workers", s.rollout_workers),
    ):
        if v is not None and v < 1:
            raise bad(key, f"must be at least 1 (or null); got {v}")
