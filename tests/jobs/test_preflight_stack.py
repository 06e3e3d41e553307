"""The preflight's checks of what the trainer runs on: the driver's CUDA against the stack's, flash-attn's
install step, a C compiler and Python.h where the recipe compiles, and an import that outlasts its timeout.

GPUs come from recorded NVML data (tests/data/nvml_a800_8gpu_driver535.jsonl: the A800 node under an R535
driver); compilers and headers are real files on PATH and in an include folder; imports are real subprocesses.
"""

from __future__ import annotations

import importlib.metadata
import os
import sysconfig
from pathlib import Path

import pytest

from justrl_hpc.core.config_files import resolve
from justrl_hpc.jobs.train import preflight
from justrl_hpc.jobs.train.kernel_log import KernelXids
from justrl_hpc.monitor.agent.replay import ReplayBackend

REPO = Path(__file__).resolve().parents[2]
DRIVER535 = REPO / "tests" / "data" / "nvml_a800_8gpu_driver535.jsonl"
WAY_OUT = "install an R580+ driver, the cuda-compat-13-0 package (forward compatibility, data-centre GPUs), or a " \
          "cu12 build of torch and vLLM"


def a800(**sets: object):
    return resolve("justrl-deepseek-1.5b", "a800-4x8", [f"cluster.{k}={v}" for k, v in sets.items()])


def rehearsal():
    return resolve("rehearsal", "dev")


@pytest.mark.parametrize(
    ("driver_cuda", "stack_cuda", "ok", "warning", "detail"),
    [
        ("12.2", "13.0", False, False, f"driver 535.183.01 runs CUDA up to 12.2, torch 2.11.0+cu130 is built for "
                                       f"CUDA 13.0: {WAY_OUT}"),
        ("12.4", "13.0", False, False, f"driver 535.183.01 runs CUDA up to 12.4, torch 2.11.0+cu130 is built for "
                                       f"CUDA 13.0: {WAY_OUT}"),
        ("13.0", "13.0", True, False, "driver 535.183.01 runs CUDA 13.0; torch 2.11.0+cu130 is built for CUDA 13.0"),
        ("13.1", "13.0", True, False, "driver 535.183.01 runs CUDA 13.1; torch 2.11.0+cu130 is built for CUDA 13.0"),
        # one major: minor-version compatibility runs a newer 12.x runtime on a 12.2 driver
        ("12.2", "12.8", True, False, "driver 535.183.01 runs CUDA 12.2; torch 2.11.0+cu130 is built for CUDA 12.8"),
        (None, "13.0", True, True, "NVML does not say which CUDA the driver runs; torch 2.11.0+cu130 is built for "
                                   "CUDA 13.0: not compared"),
        ("12.2", None, False, False, "torch 2.11.0+cu130 is not a CUDA build (torch.version.cuda: None): install the "
                                     "CUDA build verl's vllm extra pins"),
    ],
)
def test_the_drivers_cuda_must_run_the_stacks(driver_cuda: str | None, stack_cuda: str | None, ok: bool,
                                              warning: bool, detail: str) -> None:
    got = preflight.cuda_driver_check(driver_cuda, stack_cuda, driver="535.183.01", stack="torch 2.11.0+cu130")
    assert (got.name, got.ok, got.warning, got.detail) == ("cuda-driver", ok, warning, detail)


def plant_cu130_torch(root: Path) -> Path:
    """A torch that reports itself as the cu130 build verl's vllm extra pins, as far as the probe asks
    (version, torch.version.cuda, no device): a real CUDA build does not install on this GPU-less machine."""
    pkg = root / "torch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from torch import cuda, version\n__version__ = version.__version__\n")
    (pkg / "version.py").write_text("__version__ = '2.11.0+cu130'\ncuda = '13.0'\n")
    (pkg / "cuda.py").write_text("def is_available():\n    return False\n\n\ndef device_count():\n    return 0\n")
    return root


def test_a_535_node_under_a_cuda13_stack_fails_with_the_way_out(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The replayed R535 node through the node's checks and the driver's verdict: the first failed line names
    the driver's CUDA, the stack's, and the three ways out."""
    monkeypatch.setenv("PYTHONPATH", str(plant_cu130_torch(tmp_path / "site")))
    run = tmp_path / "run"
    for sub in ("control", "checkpoints"):
        (run / sub).mkdir(parents=True)
    resolved = a800(cpus_per_node=len(os.sched_getaffinity(0)), min_shm_gb=0, min_free_disk_gb=0)
    backend = ReplayBackend(DRIVER535)
    checks = preflight.run_checks(resolved, run, backend, KernelXids())
    by = {k.name: k for k in checks}
    assert by["driver"].detail == "driver 535.183.01, CUDA 12.2" and by["gpu-count"].ok
    line = f"driver 535.183.01 runs CUDA up to 12.2, torch 2.11.0+cu130 is built for CUDA 13.0: {WAY_OUT}"
    assert not by["cuda-driver"].ok and by["cuda-driver"].detail == line
    result = preflight.summary(checks, 1.0)
    assert result["failed"][0] == f"cuda-driver: {line}" and not result["transient"]
    reason = preflight.verdict([result], run)
    assert reason is not None and reason.startswith(f"preflight failed on {result['node']}: cuda-driver: {line}; ")


def test_a_missing_flash_attn_names_the_install_command_verl_pins() -> None:
    # verl's own metadata: the pin the command installs
    pins = [r.split(";")[0].strip() for r in importlib.metadata.requires("verl") or [] if r.startswith("flash-attn")]
    assert pins and all(preflight.FLASH_ATTN_INSTALL.endswith(f" {p}") for p in pins), pins
    (imports,) = preflight._probe(rehearsal(), ["json", "flash_attn"], False, 120)
    assert not imports.ok and imports.detail == (
        "cannot import flash_attn (ModuleNotFoundError: No module named 'flash_attn'); install flash-attn after "
        "torch: pip install --no-build-isolation flash-attn==2.8.3")


def test_an_import_that_outlasts_the_timeout_is_transient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = tmp_path / "site" / "slow_to_import"
    slow.mkdir(parents=True)
    (slow / "__init__.py").write_text("import time\ntime.sleep(60)  # planted: a cold shared filesystem\n")
    monkeypatch.setenv("PYTHONPATH", str(slow.parent))
    (imports,) = preflight._probe(rehearsal(), ["json", "slow_to_import"], False, 2)
    assert (imports.ok, imports.transient) == (False, True)
    assert imports.detail.startswith("importing json, slow_to_import took over 2 s")
    # the driver waits for the other nodes long enough to hear a node whose probe ran to the full timeout
    assert preflight.IMPORT_TIMEOUT_S == 600 and preflight.gather_timeout_s(rehearsal()) > 600


def tool(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexec /bin/true\n")
    path.chmod(0o755)
    return path


def test_compilation_needs_a_c_compiler_and_python_h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    include = tmp_path / "include" / "python3.11"
    include.mkdir(parents=True)
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **kw: {"include": str(include)})
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("CC", raising=False)
    users = ("verl's torch.compile (actor_rollout_ref.actor.fsdp_config.use_torch_compile) and vLLM's compiled "
             "graphs (actor_rollout_ref.rollout.enforce_eager: false) need them")
    way_out = ("install gcc and the Python 3.11 headers (python3.11-dev or -devel) on the compute nodes, or load "
               "their modules in the cluster file's setup:")
    (got,) = preflight.check_compiler(a800())
    assert not got.ok and got.detail == (f"no C compiler (CC unset, no gcc or clang on PATH) and no "
                                         f"{include}/Python.h; {users}: {way_out}")
    gcc = tool(tmp_path / "bin", "gcc")
    (got,) = preflight.check_compiler(a800())
    assert got.detail == f"no {include}/Python.h; {users}: {way_out}"
    (include / "Python.h").write_text("/* the headers' entry point */\n")
    assert preflight.check_compiler(a800()) == [preflight.Check("compiler", True, f"{gcc}, {include}/Python.h")]
    # $CC wins, as Triton reads it: one that is not there is no compiler, whatever else is on PATH
    monkeypatch.setenv("CC", str(tmp_path / "opt" / "cc"))
    (got,) = preflight.check_compiler(a800())
    assert got.detail.startswith(f"no C compiler (CC={tmp_path / 'opt' / 'cc'}); ")
    cc = tool(tmp_path / "opt", "cc")
    assert preflight.check_compiler(a800())[0].detail == f"{cc}, {include}/Python.h"
    # the rehearsal compiles nothing (use_torch_compile: false, the CPU rollout): no compiler needed
    assert preflight.check_compiler(rehearsal()) == []
