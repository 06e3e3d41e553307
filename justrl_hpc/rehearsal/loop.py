"""The training loop, step for step in the order of verl 0.9.1's legacy `RayPPOTrainer.fit`.

load checkpoint → push weights → (val_before_train) → for each batch: generate n samples per prompt →
reward → old log-probs (+ actor/entropy) → GRPO advantage → actor update → deadline check
(`should_save_ckpt_esi`) → save if save_freq / last step / deadline → push weights → (validate on
test_freq / last step) → log metrics at the step → stop after total_training_steps.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from justrl_hpc.deadline_hook import DEADLINE_ENV
from justrl_hpc.errors import UserError
from justrl_hpc.rehearsal import checkpoint, data, grpo, metrics, policy, rollout
from justrl_hpc.rehearsal.settings import Settings


@contextmanager
def timed(name: str, timing: dict[str, float]) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[name] = timing.get(name, 0.0) + time.perf_counter() - start


def _identity(s: Settings, step: int | None = None) -> str:
    job = os.environ.get("SLURM_JOB_ID", "-")
    where = f"run={s.experiment_name} job={job}"
    return where if step is None else f"{where} step={step}"


def say(message: str) -> None:
    print(f"rehearsal: {message}", flush=True)


@dataclass
class Context:
    s: Settings
    tokenizer: Any
    actor: grpo.Actor
    rollout: rollout.Rollout
    rewards: Any
    train: list[data.Example]
    val: list[data.Example]
    eos_id: int
    pad_id: int


def make_batch(
    ctx: Context, examples: list[data.Example], responses: list[list[int]], n: int, temperature: float
) -> Any:
    """A verl DataProto shaped like verl's: prompts left-padded, responses right-padded to the limits."""
    import numpy as np
    import torch
    from verl import DataProto

    s = ctx.s
    prompts = [e.prompt_ids for e in examples for _ in range(n)]
    p_ids, p_mask = policy.left_pad(prompts, s.max_prompt_length, ctx.pad_id)
    r_ids, r_mask = policy.right_pad(responses, s.max_response_length, ctx.pad_id)
    attention_mask = torch.cat([p_mask, r_mask], dim=1)
    uids = [str(uuid.uuid4()) for _ in examples]
    tensors = {
        "prompts": p_ids,
        "responses": r_ids,
        "input_ids": torch.cat([p_ids, r_ids], dim=1),
        "attention_mask": attention_mask,
        "position_ids": policy.position_ids(attention_mask),
        "response_mask": r_mask,
    }

    def repeated(values: list[Any]) -> Any:
        arr = np.empty(len(values) * n, dtype=object)
        for i, v in enumerate(values):
            for j in range(n):
                arr[i * n + j] = v
        return arr

    non_tensors = {
        "uid": repeated(uids),
        "data_source": repeated([e.data_source for e in examples]),
        "reward_model": repeated([e.reward_model for e in examples]),
        "extra_info": repeated([dict(e.extra_info) for e in examples]),
        "row": repeated([e.index for e in examples]),
    }
    meta = {"global_token_num": attention_mask.sum(-1).tolist(), "temperature": temperature}
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info=meta)


def validate(ctx: Context, step: int) -> dict[str, float]:
    s = ctx.s
    if not ctx.val:
        return {}
    greedy = not s.val_do_sample or s.val_temperature <= 0
    sampling = policy.Sampling(
        n=s.val_n,
        max_new_tokens=s.max_response_length,
        temperature=s.val_temperature,
        top_p=s.val_top_p,
        do_sample=not greedy,
    )
    responses = ctx.rollout.generate([e.prompt_ids for e in ctx.val], sampling, seed=_val_seed(s.seed, step))
    batch = make_batch(ctx, ctx.val, responses, s.val_n, s.temperature)
    reward_tensor, extra = grpo.score(ctx.rewards, batch)
    infos: dict[str, list[Any]] = {"reward": reward_tensor.sum(-1).tolist()}
    for key, values in extra.items():
        infos[key] = list(values)
    sources = [str(x) for x in batch.non_tensor_batch["data_source"]]
    uids = [str(x) for x in batch.non_tensor_batch["row"]]
    return metrics.validation_metrics(sources, uids, infos)


def _val_seed(seed: int, step: int) -> int:
    return seed * 1_000_033 + 500_000_000 + step


def _step_seed(seed: int, step: int) -> int:
    return seed * 1_000_033 + step


def train_step(
    ctx: Context, step: int, examples: list[data.Example], timing: dict[str, float], out: dict[str, Any]
) -> Any:
    """Generation → reward → old log-probs → advantage → update. Returns the batch (for metrics)."""
    from verl.trainer.ppo.core_algos import agg_loss

    s = ctx.s
    sampling = policy.Sampling(
        n=s.rollout_n,
        max_new_tokens=s.max_response_length,
        temperature=s.temperature,
        top_p=s.top_p,
        do_sample=True,
    )
    with timed("gen", timing):
        responses = ctx.rollout.generate(
            [e.prompt_ids for e in examples], sampling, seed=_step_seed(s.seed, step)
        )
    batch = make_batch(ctx, examples, responses, s.rollout_n, s.temperature)
    with timed("reward", timing):
        reward_tensor, _ = grpo.score(ctx.rewards, batch)
    with timed("old_log_prob", timing):
        old_logp, entropy = grpo.old_log_probs(ctx.actor.model, batch, s.temperature)
        out["actor/entropy"] = float(
            agg_loss(
                loss_mat=entropy, loss_mask=batch.batch["response_mask"], loss_agg_mode=s.loss_agg_mode
            ).item()
        )
        batch.batch["old_log_probs"] = old_logp
    with timed("adv", timing):
        batch.batch["token_level_scores"] = reward_tensor
        batch.batch["token_level_rewards"] = reward_tensor  # use_kl_in_reward=False: no KL penalty
        adv, returns = grpo.advantages(batch, s)
        batch.batch["advantages"] = adv
        batch.batch["returns"] = returns
    with timed("update_actor", timing):
        out.update(grpo.update(ctx.actor, batch, s))
    return batch


def _log_sample(path: str | None, step: int, epoch: int, rows: list[int]) -> None:
    if not path:
        return
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": step, "epoch": epoch, "rows": rows, "pid": os.getpid()}) + "\n")


def run(s: Settings) -> int:
    import torch

    from justrl_hpc import deadline_hook

    deadline_hook.install()  # a stop file moves the deadline env var; should_save_ckpt_esi does the rest
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    model, tokenizer = policy.load(s.model_path)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    train = data.load(
        s.train_files,
        tokenizer,
        s.max_prompt_length,
        s.filter_overlong_prompts,
        s.truncation,
        "data.train_files",
    )
    val = (
        data.load(
            s.val_files,
            tokenizer,
            s.max_prompt_length,
            s.filter_overlong_prompts,
            s.truncation,
            "data.val_files",
        )
        if s.val_files
        else []
    )
    order = data.DataOrder(
        len(train),
        s.train_batch_size,
        seed=s.data_seed if s.data_seed is not None else s.seed,
        shuffle=s.shuffle,
    )
    if order.batches_per_epoch == 0:
        raise UserError(
            f"larger than the {len(train)} training prompts; lower it or add data", "data.train_batch_size"
        )
    total_steps = s.total_training_steps or order.batches_per_epoch * s.total_epochs
    actor = grpo.build_actor(model, s)
    rewards = grpo.reward_manager(tokenizer, grpo.load_reward_fn(s), s)
    writer = checkpoint.CheckpointWriter(
        s.default_local_dir,
        s.world_size,
        s.max_actor_ckpt_to_keep,
        s.crash_during_save_at_step,
        s.crash_during_save_phase,
    )
    ro = rollout.make(
        model, eos_id, pad_id, s.world_size, s.nnodes, s.rollout_workers, s.expect_ray_nodes, s.threads
    )
    logger: metrics.Logger | None = None
    try:
        where = ro.describe()
        say(
            f"start {_identity(s)} pid={os.getpid()} world_size={s.world_size} total_steps={total_steps} "
            f"train_prompts={len(train)} val_prompts={len(val)} rollout={where}"
        )
        logger = metrics.Logger(s.project_name, s.experiment_name, s.logger, dict(s.raw))
        ctx = Context(s, tokenizer, actor, ro, rewards, train, val, eos_id, pad_id)
        return _fit(ctx, order, writer, logger, total_steps)
    finally:
        if logger is not None:
            logger.close()
        ro.close()


def _fit(
    ctx: Context,
    order: data.DataOrder,
    writer: checkpoint.CheckpointWriter,
    logger: metrics.Logger,
    total_steps: int,
) -> int:
    from verl.utils.checkpoint.checkpoint_manager import should_save_ckpt_esi

    s = ctx.s
    global_step = 0
    folder = checkpoint.find_resume(s.default_local_dir, s.resume_mode, s.resume_from_path)
    if folder is not None:
        global_step, data_state = checkpoint.load(folder, ctx.actor, s.world_size)
        if data_state is None:
            print(f"Warning: No dataloader state found at {folder}/data.pt, will start from scratch")
        else:
            order.load_state_dict(data_state)
        say(f"resume from step {global_step} ({folder}) {_identity(s, global_step)}")
    ctx.rollout.sync(ctx.actor.model)

    if s.val_before_train and ctx.val:
        val_metrics = validate(ctx, global_step)
        logger.log(val_metrics, step=global_step)
    if global_step >= total_steps:
        say(f"nothing to train: at step {global_step} of {total_steps} {_identity(s, global_step)}")
        say(f"finished {_identity(s, global_step)}")
        return 0

    global_step += 1
    max_steps_duration = 0.0
    while True:
        nxt = order.next_batch(s.total_epochs)
        if nxt is None:
            say(
                f"data exhausted: trainer.total_epochs={s.total_epochs} used up before step {global_step} of "
                f"{total_steps} {_identity(s, global_step)}"
            )
            return 0  # verl's loop ends the same way, exit status 0
        epoch, rows = nxt
        if s.crash_at_step is not None and global_step == s.crash_at_step:
            raise RuntimeError(f"rehearsal.crash_at_step={global_step}: injected crash")
        examples = [ctx.train[i] for i in rows]
        is_last = global_step >= total_steps
        out: dict[str, Any] = {}
        timing: dict[str, float] = {}
        step_start = time.perf_counter()
        with timed("step", timing):
            batch = train_step(ctx, global_step, examples, timing, out)
            esi = should_save_ckpt_esi(
                max_steps_duration=max_steps_duration, redundant_time=s.esi_redundant_time
            )
            if s.save_freq > 0 and (is_last or global_step % s.save_freq == 0 or esi):
                if esi:
                    print("Force saving checkpoint: ESI instance expiration approaching.", flush=True)
                    left = float(os.environ.get(DEADLINE_ENV, "0") or 0) - time.time()
                    say(
                        f"deadline save at step {global_step} ({left:.0f} s left) {_identity(s, global_step)}"
                    )
                with timed("save_checkpoint", timing):
                    path = writer.save(global_step, ctx.actor, ctx.tokenizer, order.state_dict())
                say(
                    f"saved step {global_step} in {timing['save_checkpoint']:.2f} s to {path} "
                    f"{_identity(s, global_step)}"
                )
            with timed("update_weights", timing):
                ctx.rollout.sync(ctx.actor.model)
            pad = s.min_step_time_s - (time.perf_counter() - step_start)
            if pad > 0:
                time.sleep(pad)  # rehearsal.min_step_time_s: steps as long as the test needs
        if s.test_freq > 0 and ctx.val and (is_last or global_step % s.test_freq == 0):
            with timed("testing", timing):
                out.update(validate(ctx, global_step))
        max_steps_duration = max(max_steps_duration, timing["step"])
        out.update({"training/global_step": global_step, "training/epoch": epoch})
        out.update(metrics.training_metrics(batch, timing, n_gpus=s.world_size))
        logger.log(out, step=global_step)
        _log_sample(s.sample_log, global_step, epoch, rows)
        if is_last:
            say(f"finished {_identity(s, global_step)}")
            return 0
        global_step += 1
