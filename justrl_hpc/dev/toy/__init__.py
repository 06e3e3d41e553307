"""The rehearsal's toy task and tiny base model (this machine only). The trainer is verl's own main_ppo on
the CPU backend (`justrl_hpc.dev.verl_cpu`); see docs/rehearsal.md.

Modules: `task` (the verifiable toy task, in verl's RL parquet schema), `prepare` (its data and the tiny
Qwen2 base model, briefly supervised on the answer format).
"""
