"""The CPU rehearsal trainer: a tiny, real GRPO run that speaks verl 0.9.1's interface.

`python -m justrl_hpc.rehearsal KEY=VALUE …` takes the same Hydra overrides the suite gives
`verl.trainer.main_ppo`, writes verl's checkpoint layout and tracker, logs verl's metric names through
verl's own `Tracking`, honours verl's deadline save (`should_save_ckpt_esi`), and computes its update with
verl's own GRPO advantage, policy loss and loss aggregation. Only the model (a tiny Qwen2), the task
(a toy verifiable one) and the engine (plain PyTorch on CPU instead of FSDP + vLLM) differ. See
docs/rehearsal.md.

Modules: `settings` (overrides → typed settings), `task` (the toy task), `prepare` (its data and base
model), `data` (verl's RL parquet → prompts; resumable order), `policy` (the model: generation, log-probs),
`rollout` (in-process or Ray actors across the allocation), `grpo` (reward, advantage, update),
`checkpoint` (verl's layout), `metrics` (verl's names and logger), `loop` (the training loop).
"""
