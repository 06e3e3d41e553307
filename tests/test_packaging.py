"""What the extras resolve to, read from metadata (no GPU, no download)."""

from __future__ import annotations

import re
from importlib import metadata

from packaging.requirements import Requirement


def _extra(dist: str, extra: str) -> list[Requirement]:
    reqs = [Requirement(r) for r in metadata.requires(dist) or []]
    return [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})]


def test_the_gpu_extra_is_verls_own_vllm_stack_at_the_installed_verl() -> None:
    gpu = {r.name: r for r in _extra("justrl-hpc", "gpu")}
    verl = gpu["verl"]
    assert str(verl.specifier) == f"=={metadata.version('verl')}"
    assert {"vllm", "flash-attn-cu130torch211"} <= verl.extras
    # No version of verl's stack is repeated (or contradicted) here: verl's extra pins them.
    assert not {"vllm", "torch", "transformers", "flash-attn"} & set(gpu)
    pins = {r.name: str(r.specifier) for r in _extra("verl", "vllm")}
    assert pins["vllm"] == "==0.24.0" and pins["torch"] == "==2.11.0" and pins["transformers"] == "==5.9.0"
    flash = {r.name: str(r.specifier) for r in _extra("verl", "flash-attn-cu130torch211")}
    assert re.fullmatch(r"==2\.\d+\.\d+", flash["flash-attn"]), flash


def test_the_train_extra_brings_what_verls_legacy_trainer_imports() -> None:
    train = {r.name for r in _extra("justrl-hpc", "train")}
    assert {"verl", "cachetools", "fastapi", "uvicorn"} <= train
    import verl.trainer.main_ppo_v0  # noqa: F401 - the legacy trainer's import chain, on this install
