"""The evaluation job: the nine benchmarks of the JustRL paper, avg@N Pass@1, beside the published table.

`python -m justrl_hpc.launch --job evaluate --run RUN [--step N | --model PATH] [--local]`; see job.py.
Modules: benchmarks (the nine and their files), generate (the generator interface, vLLM and transformers),
grade (the rule-based verifiers), results (samples JSONL, the table, CSV/Markdown/TensorBoard), model_source
(which weights to load), job (the entry point and the submitit job).
"""
