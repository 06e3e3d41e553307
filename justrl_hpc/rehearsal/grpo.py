"""One GRPO update, with verl's own functions at every point where the math lives.

- reward: verl's `DAPORewardManager` (or `NaiveRewardManager`) around the custom reward function loaded
  by path like verl does (`load_extern_object`): the strict boxed DAPO score at the response's last token;
- advantage: `core_algos.compute_grpo_outcome_advantage` over the uid groups of `rollout.n` samples;
- loss: `get_policy_loss_fn("vanilla")` (clip-higher with clip_ratio_low/high, dual clip with
  clip_ratio_c, read from a verl `FSDPActorConfig` built from the same overrides) aggregated with
  `agg_loss` in `loss_agg_mode`, minus entropy_coeff × entropy as verl's `ppo_loss` does;
- optimizer: AdamW with verl's constant-with-warmup schedule, gradient clipping at `optim.clip_grad`, an
  optimizer step per mini-batch of `ppo_mini_batch_size × rollout.n` samples and a scheduler step per update
  (verl's engine skips a step whose gradient norm is not finite; so does this).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from justrl_hpc.rehearsal import policy
from justrl_hpc.rehearsal.settings import Settings


@dataclass
class Actor:
    model: Any
    optimizer: Any
    scheduler: Any
    config: Any  # verl FSDPActorConfig: the policy loss reads its clip ratios from here


def actor_config(s: Settings) -> Any:
    from verl.workers.config import FSDPActorConfig

    return FSDPActorConfig(
        strategy="fsdp",
        ppo_mini_batch_size=s.ppo_mini_batch_size,
        ppo_micro_batch_size_per_gpu=1,
        use_dynamic_bsz=False,
        rollout_n=s.rollout_n,
        ppo_epochs=s.ppo_epochs,
        clip_ratio_low=s.clip_ratio_low,
        clip_ratio_high=s.clip_ratio_high,
        clip_ratio_c=s.clip_ratio_c,
        loss_agg_mode=s.loss_agg_mode,
        entropy_coeff=s.entropy_coeff,
        use_kl_loss=False,
    )


def build_actor(model: Any, s: Settings) -> Actor:
    import torch
    from verl.utils.torch_functional import get_constant_schedule_with_warmup

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.999)
    )
    scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=s.warmup_steps)
    return Actor(model, optimizer, scheduler, actor_config(s))


def load_reward_fn(s: Settings) -> Any:
    """The custom reward function, loaded from its file like verl's get_custom_reward_fn."""
    if not s.reward_path:
        from justrl_hpc.reward import compute_score

        print("rehearsal: no reward.custom_reward_function.path; using justrl_hpc.reward.compute_score")
        return compute_score
    from verl.utils.import_utils import load_extern_object

    return load_extern_object(module_path=s.reward_path, object_name=s.reward_name)


def reward_manager(tokenizer: Any, fn: Any, s: Settings) -> Any:
    if s.reward_manager == "dapo":
        from verl.workers.reward_manager.dapo import DAPORewardManager

        # overlong_buffer_cfg=None: JustRL's overlong penalty is off (verl's default).
        return DAPORewardManager(
            tokenizer=tokenizer,
            num_examine=0,
            compute_score=fn,
            reward_fn_key="data_source",
            max_resp_len=s.max_response_length,
            overlong_buffer_cfg=None,
        )
    from verl.workers.reward_manager.naive import NaiveRewardManager

    return NaiveRewardManager(
        tokenizer=tokenizer, num_examine=0, compute_score=fn, reward_fn_key="data_source"
    )


def score(manager: Any, batch: Any) -> tuple[Any, dict[str, list[Any]]]:
    """(token-level scores (B, R), extra infos such as score/acc/pred per sample)."""
    out = manager(batch, return_dict=True)
    return out["reward_tensor"], dict(out.get("reward_extra_info", {}))


def advantages(batch: Any, s: Settings) -> tuple[Any, Any]:
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    return compute_grpo_outcome_advantage(
        token_level_rewards=batch.batch["token_level_rewards"],
        response_mask=batch.batch["response_mask"],
        index=batch.non_tensor_batch["uid"],
        norm_adv_by_std_in_grpo=s.norm_adv_by_std_in_grpo,
    )


def old_log_probs(model: Any, batch: Any, temperature: float) -> tuple[Any, Any]:
    import torch

    with torch.no_grad():
        logp, entropy = policy.log_probs(
            model,
            batch.batch["input_ids"],
            batch.batch["attention_mask"],
            batch.batch["responses"].shape[-1],
            temperature,
            with_entropy=True,
        )
    return logp, entropy


def update(actor: Actor, batch: Any, s: Settings) -> dict[str, float]:
    """ppo_epochs × mini-batches of clipped policy-gradient steps; returns verl's actor/* metrics."""
    import psutil
    import torch
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn

    model, cfg = actor.model, actor.config
    loss_fn = get_policy_loss_fn("vanilla")
    rows = len(batch)
    mini = s.ppo_mini_batch_size * s.rollout_n  # verl counts mini-batches in prompts, then × n
    width = batch.batch["responses"].shape[-1]
    with_entropy = s.entropy_coeff != 0.0
    collected: dict[str, list[float]] = defaultdict(list)
    model.train()
    for _ in range(s.ppo_epochs):
        for start in range(0, rows, mini):
            sl = slice(start, min(start + mini, rows))
            mask = batch.batch["response_mask"][sl].bool()
            logp, entropy = policy.log_probs(
                model,
                batch.batch["input_ids"][sl],
                batch.batch["attention_mask"][sl],
                width,
                s.temperature,
                with_entropy,
            )
            # What verl's ppo_loss puts here for the loss aggregation over the (global) mini-batch.
            cfg.global_batch_info.update(
                dp_size=1,
                batch_num_tokens=int(mask.sum()),
                global_batch_size=sl.stop - sl.start,
                loss_scale_factor=None,
            )
            pg_loss, pg_metrics = loss_fn(
                old_log_prob=batch.batch["old_log_probs"][sl],
                log_prob=logp,
                advantages=batch.batch["advantages"][sl],
                response_mask=mask,
                loss_agg_mode=s.loss_agg_mode,
                config=cfg,
                rollout_is_weights=None,
            )
            loss = pg_loss
            if entropy is not None:
                entropy_loss = agg_loss(
                    loss_mat=entropy, loss_mask=mask, loss_agg_mode=s.loss_agg_mode, **cfg.global_batch_info
                )
                loss = pg_loss - s.entropy_coeff * entropy_loss
                collected["actor/entropy_loss"].append(float(entropy_loss.detach()))
            actor.optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=s.clip_grad)
            if not torch.isfinite(grad_norm):
                print(f"WARN: grad_norm is not finite: {grad_norm}")
                actor.optimizer.zero_grad()
            else:
                actor.optimizer.step()
            collected["actor/pg_loss"].append(float(pg_loss.detach()))
            collected["actor/loss"].append(float(loss.detach()))
            collected["actor/grad_norm"].append(float(grad_norm))
            for key, value in pg_metrics.items():
                collected[key].append(float(value))
    model.eval()
    actor.scheduler.step()
    # Means over mini-batches, as verl's reduce_metrics; a NaN stays a NaN for the monitor to see.
    metrics = {k: sum(v) / len(v) for k, v in collected.items() if v}
    metrics["actor/lr"] = float(actor.scheduler.get_last_lr()[0])
    metrics["actor/perf/cpu_memory_used_gb"] = psutil.virtual_memory().used / 1024**3  # as verl's engine
    return metrics
