"""The GPU stack that `pip install ".[train,gpu]"` installs, and the NVIDIA driver it needs. The one place these
versions are written: the dry run prints them, and tests/test_packaging.py fails if verl's installed metadata
(its `vllm` and `flash-attn-cu130torch211` extras) or pyproject's `gpu` extra says anything else.

The `gpu` extra is verl's own `vllm` extra. flash-attn is not in it: it ships only as a source tarball whose
setup.py imports torch, so it installs in its own step, after torch, without build isolation
(docs/gpu-install.md).
"""

from __future__ import annotations

VERL = "0.9.1"
# verl 0.9.1's `vllm` extra pins these exactly (vLLM 0.24.0 itself pins the same torch).
VLLM = "0.24.0"
TORCH = "2.11.0"
TORCHVISION = "0.26.0"
TORCHAUDIO = "2.11.0"
TRANSFORMERS = "5.9.0"
# verl 0.9.1's `flash-attn-cu130torch211` extra.
FLASH_ATTN = "2.8.3"
# torch 2.11.0's wheel on PyPI requires cuda-toolkit 13.0.2 (libcudart.so.13, NCCL and cuDNN for CUDA 13).
CUDA = "13.0"
# The oldest driver branch that runs each CUDA major (NVIDIA's CUDA toolkit release notes: 13.0 GA needs
# >= 580.65.06); the preflight names it when a node's driver is older than the stack's CUDA.
DRIVER_FOR_CUDA = {11: 450, 12: 525, 13: 580}
MIN_DRIVER_BRANCH = DRIVER_FOR_CUDA[int(CUDA.split(".")[0])]

FLASH_ATTN_INSTALL = f"pip install --no-build-isolation flash-attn=={FLASH_ATTN}"


def summary() -> str:
    """One line for the plan: the stack and the driver the nodes need."""
    return (
        f"vLLM {VLLM}, torch {TORCH}, transformers {TRANSFORMERS} (verl {VERL}'s vllm extra) built for CUDA {CUDA}: "
        f"the nodes need NVIDIA driver R{MIN_DRIVER_BRANCH} or newer (the preflight checks it); flash-attn "
        f"{FLASH_ATTN} is its own install step: {FLASH_ATTN_INSTALL}"
    )
