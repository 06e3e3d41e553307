"""What the extras resolve to, read from metadata (no GPU, no download, no resolver): pyproject.toml as it is
now (an editable install's metadata is as old as the install) against verl's installed METADATA."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from justrl_hpc.core import gpu_stack

REPO = Path(__file__).resolve().parents[1]
EXTRAS: dict[str, list[str]] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
    "optional-dependencies"
]
# Sources only, whose setup.py imports torch: pip's isolated build has no torch, so it fails there (or, with torch,
# compiles for hours). No extra may bring one in, directly or through one of verl's extras; it gets its own step.
NEEDS_TORCH_TO_BUILD = {"flash-attn"}


def _ours(extra: str) -> list[Requirement]:
    return [Requirement(r) for r in EXTRAS[extra]]


def _extra(dist: str, extra: str | None) -> list[Requirement]:
    """An installed distribution's requirements under one extra (None: its base requirements)."""
    reqs = [Requirement(r) for r in metadata.requires(dist) or []]
    if extra is None:
        return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    return [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})]


def _reachable(reqs: list[Requirement]) -> set[str]:
    """Every distribution these name, following verl's extras (verl[vllm] names verl[verl-core], ...)."""
    names: set[str] = set()
    seen: set[str | None] = set()
    todo = list(reqs)
    while todo:
        r = todo.pop()
        names.add(r.name)
        if r.name != "verl":
            continue
        for e in [None, *sorted(r.extras)]:
            if e not in seen:
                seen.add(e)
                todo += _extra("verl", e)
    return names


def test_the_gpu_extra_is_verls_own_vllm_stack_at_the_installed_verl() -> None:
    gpu = {r.name: r for r in _ours("gpu")}
    verl = gpu["verl"]
    assert str(verl.specifier) == f"=={metadata.version('verl')}" == f"=={gpu_stack.VERL}"
    assert "vllm" in verl.extras
    # No version of verl's stack is repeated (or contradicted) here: verl's extra pins them.
    assert not {"vllm", "torch", "torchvision", "torchaudio", "transformers", "flash-attn"} & set(gpu)
    pins = {r.name: str(r.specifier) for r in _extra("verl", "vllm")}
    # The versions the plan prints (core/gpu_stack.py) are the ones verl's extra installs.
    assert pins["vllm"] == f"=={gpu_stack.VLLM}"
    assert pins["torch"] == f"=={gpu_stack.TORCH}"
    assert pins["transformers"] == f"=={gpu_stack.TRANSFORMERS}"
    assert (pins["torchvision"], pins["torchaudio"]) == (f"=={gpu_stack.TORCHVISION}", f"=={gpu_stack.TORCHAUDIO}")


def test_no_extra_needs_torch_to_build() -> None:
    # The check sees through verl's extras: the one the gpu extra named before, and the fsdp extra, bring it in.
    assert NEEDS_TORCH_TO_BUILD <= _reachable([Requirement("verl[flash-attn-cu130torch211]")])
    assert NEEDS_TORCH_TO_BUILD <= _reachable([Requirement("verl[fsdp]")])
    for extra in EXTRAS:
        assert not NEEDS_TORCH_TO_BUILD & _reachable(_ours(extra)), extra


def test_the_flash_attn_step_installs_verls_pin_without_build_isolation() -> None:
    flash = {r.name: str(r.specifier) for r in _extra("verl", "flash-attn-cu130torch211")}
    assert flash["flash-attn"] == f"=={gpu_stack.FLASH_ATTN}"
    assert (
        gpu_stack.FLASH_ATTN_INSTALL == f"pip install --no-build-isolation flash-attn=={gpu_stack.FLASH_ATTN}"
    )


def test_the_install_docs_give_the_steps_and_the_driver() -> None:
    readme = (REPO / "README.md").read_text()
    page = (REPO / "docs" / "gpu-install.md").read_text()
    for text in (readme, page):
        assert 'pip install -e ".[train,gpu]"' in text and gpu_stack.FLASH_ATTN_INSTALL in text
        assert f"R{gpu_stack.MIN_DRIVER_BRANCH}" in text
    for version in (gpu_stack.VLLM, gpu_stack.TORCH, gpu_stack.TRANSFORMERS, gpu_stack.FLASH_ATTN):
        assert version in page


def test_the_train_extra_brings_what_verls_legacy_trainer_imports() -> None:
    train = {r.name for r in _ours("train")}
    assert {"verl", "cachetools", "fastapi", "uvicorn"} <= train
    import verl.trainer.main_ppo_v0  # noqa: F401 - the legacy trainer's import chain, on this install
