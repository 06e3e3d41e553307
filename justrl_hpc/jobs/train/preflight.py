"""Is this node fit to train? Every node of every chunk asks before Ray starts, in seconds, so that a bad node
costs one short allocation and one clear line instead of a crashed chunk, or a chain of them.

Checks: the GPUs the cluster file promises (count, model) with the driver's and CUDA's versions; their health
through the node agent's own NVML code (uncorrectable ECC, row remaps, the driver's recovery action, XIDs in
the kernel log since the driver loaded or this run's previous preflight on the node); that no process holds a
GPU (a leftover is named with its pid and command); the CPUs this node task may use; room in /dev/shm and on
the run folder's filesystem, and that this node can write the run folder; a C compiler and Python.h where the
recipe compiles; that the trainer's stack imports (torch with CUDA and NCCL, vLLM, the recipes' attention
implementation; on the CPU backend torch, verl and the backend) and that the driver runs the CUDA it was built
for. Each node writes a `preflight` ledger event; a failure ends the chunk and the run says which node and
check, and how to resubmit without it; a failure another try may not meet (a slow first import) requeues it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from justrl_hpc.core.config import Resolved
from justrl_hpc.core.gpu_stack import DRIVER_FOR_CUDA, FLASH_ATTN_INSTALL
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.recipe import CPU_ROLLOUT, timing_warnings
from justrl_hpc.jobs.train import kernel_log
from justrl_hpc.jobs.train.environment import node_name
from justrl_hpc.monitor.schema import XID_CRITICAL

# A first import of torch, vLLM, flash-attn and verl from a shared filesystem on a cold node can take minutes;
# running out of it requeues the chunk (transient) rather than failing the run.
IMPORT_TIMEOUT_S = 600.0
PROBE_CACHE = Path("/tmp/justrl-preflight")
PROBE_FORMAT = "2"  # what a cached answer holds (2: the versions); a node's older answers are probed again
SHM_ENV = "JUSTRL_SHM_DIR"  # where the node's shared memory is mounted, if not /dev/shm


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # reported with the node's result; never fails it
    transient: bool = False  # a failure another try may not meet (an import that outlasted the timeout)
    facts: dict[str, Any] | None = None  # versions this check read (the node's `env`, compared across chunks)
    hard: bool = False  # a failure that is evidence against the node itself (cluster.exclude_policy may leave it out)


# -- GPUs ------------------------------------------------------------------------------------------------


def _command_of(pid: int) -> str:
    import psutil

    try:
        return " ".join(psutil.Process(pid).cmdline())[:160] or psutil.Process(pid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "not visible from this node's namespace"


def _bus(pci: str) -> str:
    """bus:device, as both the kernel ("0000:07:00") and NVML ("00000000:07:00.0") spell a GPU's address."""
    return ":".join(pci.lower().split(":")[-2:]).split(".")[0]


def read_gpus(backend: Any) -> tuple[Any, dict[str, Any]]:
    """One reading and the inventory (driver, CUDA, who holds each GPU) from the node agent's backend."""
    backend.open()
    try:
        return backend.sample(), backend.inventory()
    finally:
        backend.close()


def check_gpus(resolved: Resolved, backend: Any, kernel: kernel_log.KernelXids | None = None) -> list[Check]:
    return gpu_checks(resolved, *read_gpus(backend), kernel)


def gpu_checks(resolved: Resolved, reading: Any, inventory: dict[str, Any],
               kernel: kernel_log.KernelXids | None = None) -> list[Check]:
    """`kernel`: the kernel log's XIDs still to judge (read from /dev/kmsg, counting since boot, if None)."""
    c = resolved.cluster
    gpus = inventory.get("gpus") or []
    checks: list[Check] = []
    error = reading.nvml_error or inventory.get("nvml_error")
    if error and c.gpus_per_node:
        return [Check("nvml", False, f"NVML does not work here: {error.get('name')}: {error.get('message')}")]
    if c.gpus_per_node:
        names = sorted({str(g.get("name")) for g in gpus})
        found = f"{len(gpus)} × {', '.join(names) or 'no GPU'}"
        ok = len(gpus) == c.gpus_per_node and all(c.gpu_model in n for n in names)
        want = f"{c.gpus_per_node} × {c.gpu_model or 'any model'}"
        checks.append(Check("gpu-count", ok, f"{found} (cluster file: {want})"))
    if gpus:
        checks.append(Check("driver", True, f"driver {inventory.get('driver')}, CUDA {inventory.get('cuda')}",
                            facts={"driver": inventory.get("driver"), "cuda": inventory.get("cuda"),
                                   "gpu": ", ".join(sorted({str(g.get("name")) for g in gpus}))}))
    bus = {_bus(str(g.get("pci_bus_id", ""))): g.get("index") for g in reading.gpus}
    for g in reading.gpus:
        i = g.get("index")
        if (g.get("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") or 0) > 0:
            checks.append(Check("gpu-ecc", False, f"GPU {i}: {g['DCGM_FI_DEV_ECC_DBE_VOL_TOTAL']} uncorrectable "
                                "ECC errors since the driver loaded (reset the GPU or drain the node)", hard=True))
        if g.get("DCGM_FI_DEV_ROW_REMAP_FAILURE"):
            checks.append(Check("gpu-remap", False, f"GPU {i}: a row remap failed (the GPU needs replacing)",
                                hard=True))
        elif g.get("DCGM_FI_DEV_ROW_REMAP_PENDING"):
            checks.append(Check("gpu-remap", False, f"GPU {i}: a row remap is pending (a GPU reset applies it)"))
    for g in gpus:
        action = g.get("recovery_action")
        if action:  # NVML_GPU_RECOVERY_ACTION_NONE is 0
            checks.append(Check("gpu-recovery", False, f"GPU {g.get('index')}: the driver asks for recovery "
                                f"action {action} (1 reset, 2 node reboot, 3/4 drain)", hard=True))
        for p in g.get("processes") or []:
            used = f", {p['used_mib']} MiB" if p.get("used_mib") else ""
            # Checked after the chunk's clean-up ended what earlier incarnations left: this one will not die.
            checks.append(Check("gpu-free", False, f"GPU {g.get('index')} is held by pid {p['pid']} "
                                f"({_command_of(int(p['pid']))}{used})", hard=True))
    if gpus:
        kernel = kernel or kernel_log.kernel_xids()
        bad = sorted({(bus.get(_bus(b), b), x) for b, x in kernel.xids if x in XID_CRITICAL}, key=str)
        if kernel.error:
            checks.append(Check("gpu-xid", True, f"kernel log not readable ({kernel.error}): recent XIDs unknown",
                                warning=True))
        elif bad:
            checks.append(Check("gpu-xid", False, f"XIDs {kernel.since} that need a reset or reboot: "
                                + ", ".join(f"GPU {g} XID {x}" for g, x in bad), hard=True))
        else:
            checks.append(Check("gpu-xid", True, f"no XID {kernel.since} that needs a reset or reboot"))
    if not any(not k.ok for k in checks) and gpus:
        checks.append(Check("gpu-health", True, f"{len(gpus)} GPUs free, no ECC, remap or recovery flag"))
    return checks


# -- the host ----------------------------------------------------------------------------------------------


def gb_text(n: float) -> str:
    """GB with enough digits that a small filesystem does not read as "0.0 GB"."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e9:.4f} GB"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: what Slurm's task/cgroup or task/affinity left it)."""
    return len(os.sched_getaffinity(0))


def cpus_check(have: int, want: int) -> Check:
    if have >= want:
        return Check("cpus", True, f"this node task may use {have} CPUs (cluster.cpus_per_node: {want})")
    # Slurm 22.05-23.02's srun does not inherit the batch step's --cpus-per-task: under task/cgroup every node
    # task (raylet, FSDP workers, vLLM engines) then shares one CPU.
    return Check("cpus", False, f"this node task may use {have} CPU{'s' if have != 1 else ''}, the cluster file "
                 f"asks {want} (cluster.cpus_per_node): srun did not pass --cpus-per-task; export "
                 "SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK in the job script (Slurm 22.05–23.02)")


def check_host(resolved: Resolved, run_dir: Path) -> list[Check]:
    c = resolved.cluster
    checks: list[Check] = [cpus_check(usable_cpus(), c.cpus_per_node)]
    shm = Path(os.environ.get(SHM_ENV, "/dev/shm"))
    try:
        free = shutil.disk_usage(shm).free
        need = c.min_shm_gb * 1e9
        checks.append(Check("shm", free >= need, f"{shm} has {gb_text(free)} free (cluster.min_shm_gb: {c.min_shm_gb:g})"))
    except OSError as exc:
        checks.append(Check("shm", False, f"{shm}: {exc.strerror}"))
    paths = RunPaths(run_dir)
    probe = paths.control / f".preflight-{node_name()}-{os.getpid()}"
    try:
        probe.write_text("ok")
        with open(probe) as fh:
            os.fsync(fh.fileno())
        probe.unlink()
        free = shutil.disk_usage(paths.checkpoints).free
        need = c.min_free_disk_gb * 1e9
        checks.append(Check("run-folder", free >= need,
                            f"{run_dir} writable, {gb_text(free)} free (cluster.min_free_disk_gb: {c.min_free_disk_gb:g})"))
    except OSError as exc:
        checks.append(Check("run-folder", False, f"{run_dir} is not writable from this node: {exc.strerror}"))
    return checks


# -- a compiler, where the recipe compiles ---------------------------------------------------------------


def compile_users(resolved: Resolved) -> list[str]:
    """What compiles on the node by the recipe's settings (verl 0.9.1's and vLLM's defaults: both on)."""
    r = resolved.recipe
    settings = {**r.hyperparameters, **r.scale_down}
    users = []
    key = "actor_rollout_ref.actor.fsdp_config.use_torch_compile"  # the engine's torch.compile of the entropy
    if settings.get(key, True):
        users.append(f"verl's torch.compile ({key})")
    key = "actor_rollout_ref.rollout.enforce_eager"
    if settings.get("actor_rollout_ref.rollout.name", "vllm") == "vllm" and not settings.get(key, False):
        users.append(f"vLLM's compiled graphs ({key}: false)")
    return users


def find_compiler(language: str, env: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """The compiler the build would run, and where it was looked for. As Triton looks for its C compiler
    (its CUDA launcher is built at the first kernel): $CC as given, else gcc, else clang; as inductor looks for
    its C++ one (CPU kernels): $CXX, else g++, else clang++."""
    env = os.environ if env is None else env
    var, names = ("CC", ("gcc", "clang")) if language == "c" else ("CXX", ("g++", "clang++"))
    path = env.get("PATH", os.defpath)
    if env.get(var):
        return shutil.which(env[var], path=path), f"{var}={env[var]}"
    found = next((w for n in names if (w := shutil.which(n, path=path))), None)
    return found, f"{var} unset, no {' or '.join(names)} on PATH"


_PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def python_include() -> Path:
    """Where the compiled modules' Python.h is looked for (Triton's rule: the default scheme's include, Debian's
    posix_local read as posix_prefix)."""
    scheme = sysconfig.get_default_scheme()
    return Path(sysconfig.get_paths(scheme="posix_prefix" if scheme == "posix_local" else scheme)["include"])


def check_compiler(resolved: Resolved) -> list[Check]:
    users = compile_users(resolved)
    if not users:
        return []
    language = "c++" if resolved.recipe.device == "cpu" else "c"
    compiler, where = find_compiler(language)
    header = python_include() / "Python.h"
    missing = [] if compiler else [f"no {language.upper()} compiler ({where})"]
    missing += [] if header.is_file() else [f"no {header}"]
    if not missing:
        return [Check("compiler", True, f"{compiler}, {header}")]
    return [Check("compiler", False, f"{' and '.join(missing)}; {' and '.join(users)} need them: install gcc and "
                  f"the Python {_PY} headers (python{_PY}-dev or -devel) on the compute nodes, or load "
                  "their modules in the cluster file's setup:")]


# -- the trainer's stack ---------------------------------------------------------------------------------

_PROBE = r"""
import importlib, json, sys
out = {}
for name in sys.argv[1].split(","):
    try:
        mod = importlib.import_module(name)
        out[name] = {"ok": True, "version": str(getattr(mod, "__version__", ""))}
    except BaseException as exc:  # an import that crashes is as bad as a missing one
        out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
if out.get("torch", {}).get("ok"):
    import torch
    out["torch"]["cuda_build"] = torch.version.cuda  # None for a CPU build
if sys.argv[2] == "cuda" and out.get("torch", {}).get("ok"):
    out["cuda"] = {"ok": torch.cuda.is_available(), "devices": torch.cuda.device_count(),
                   "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None}
print(json.dumps(out))
"""


def stack_modules(resolved: Resolved) -> tuple[list[str], bool]:
    """What the trainer imports that an install can lack, and whether it needs CUDA."""
    r = resolved.recipe
    rollout = r.hyperparameters.get("actor_rollout_ref.rollout.name", "vllm")
    trackers = list(r.trackers)  # each tracker's module has the tracker's name (verl imports it by that)
    if r.device == "cpu" or rollout == CPU_ROLLOUT:
        return ["torch", "transformers", "ray", "verl", "justrl_hpc.dev.verl_cpu", *trackers], False
    attn = r.hyperparameters.get("+actor_rollout_ref.model.override_config.attn_implementation", "flash_attention_2")
    mods = ["torch", "transformers", "ray", "verl", str(rollout), *trackers]
    if attn == "flash_attention_2":
        mods.append("flash_attn")
    return mods, True


def install_key(mods: list[str], cuda: bool, *also: object) -> str | None:
    """What the import probe's answer depends on, cheaply: the interpreter and where each module resolves
    from (a module shadowed or reinstalled resolves elsewhere or has a new mtime), and `also` (the driver's
    versions). None if one is missing."""
    import hashlib
    import importlib.util

    parts = [PROBE_FORMAT, sys.executable, os.environ.get("PYTHONPATH", ""), str(cuda), *map(str, also)]
    for name in mods:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        if spec is None or spec.origin is None:
            return None
        origin = Path(spec.origin)
        try:
            parts += [name, str(origin), str(origin.stat().st_mtime_ns), str(origin.parent.stat().st_mtime_ns)]
        except OSError:
            return None
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]


def check_stack(resolved: Resolved, timeout_s: float = IMPORT_TIMEOUT_S, cache: Path | None = PROBE_CACHE,
                nvml: Mapping[str, Any] | None = None) -> list[Check]:
    """`nvml`: the GPUs' inventory (its driver and CUDA versions), to check the stack's CUDA against."""
    mods, cuda = stack_modules(resolved)
    driver = (nvml.get("driver"), nvml.get("cuda")) if nvml is not None and cuda else None
    key = install_key(mods, cuda, driver)
    # Importing torch, verl and vLLM takes seconds of CPU: a node whose install and driver passed once,
    # unchanged since, is not probed again (the cache is the node's own /tmp).
    hit = cache / f"{key}.json" if cache is not None and key else None
    if hit is not None and hit.is_file():
        try:
            return [Check(**c) for c in json.loads(hit.read_text())]
        except (OSError, ValueError, TypeError):
            pass
    checks = _probe(resolved, mods, cuda, timeout_s, driver)
    if hit is not None and all(k.ok for k in checks):
        try:
            hit.parent.mkdir(parents=True, exist_ok=True)
            hit.write_text(json.dumps([asdict(k) for k in checks]))
        except OSError:
            pass  # a cache that cannot be written only costs the next chunk the probe
    return checks


def cuda_version(text: object) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", str(text or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_driver_check(driver_cuda: str | None, stack_cuda: str | None, *, driver: str | None = None,
                      stack: str = "torch") -> Check:
    """Can the driver (the CUDA version NVML says it runs) run the stack (the CUDA torch was built for)? Within
    one major, CUDA's minor-version compatibility runs a newer runtime on an older driver; across majors not."""
    have, need = cuda_version(driver_cuda), cuda_version(stack_cuda)
    if need is None:
        return Check("cuda-driver", False, f"{stack} is not a CUDA build (torch.version.cuda: {stack_cuda}): "
                     "install the CUDA build verl's vllm extra pins")
    if have is None:
        return Check("cuda-driver", True, f"NVML does not say which CUDA the driver runs; {stack} is built for "
                     f"CUDA {stack_cuda}: not compared", warning=True)
    name = f"driver {driver}" if driver else "the driver"
    branch = f"R{DRIVER_FOR_CUDA[need[0]]}" if need[0] in DRIVER_FOR_CUDA else "newer"
    if have[0] >= need[0]:
        return Check("cuda-driver", True, f"{name} runs CUDA {driver_cuda}; {stack} is built for CUDA {stack_cuda}")
    return Check("cuda-driver", False, f"{name} runs CUDA up to {driver_cuda}, {stack} is built for CUDA "
                 f"{stack_cuda}: install an {branch}+ driver, the cuda-compat-"
                 f"{need[0]}-{need[1]} package (forward compatibility, data-centre GPUs), or a cu{have[0]} build "
                 "of torch and vLLM")


def import_failures(got: Mapping[str, Any], mods: list[str]) -> str | None:
    """The failed import line, naming how to install what has a known install step; None when all imported."""
    missing = [m for m in mods if not got.get(m, {}).get("ok")]
    if not missing:
        return None
    line = "cannot import " + "; ".join(f"{m} ({got.get(m, {}).get('error', 'not probed')})" for m in missing)
    if "flash_attn" in missing:
        line += f"; install flash-attn after torch: {FLASH_ATTN_INSTALL}"
    return line


def _probe(resolved: Resolved, mods: list[str], cuda: bool, timeout_s: float,
           driver: tuple[Any, Any] | None = None) -> list[Check]:
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, ",".join(mods), "cuda" if cuda else "cpu"],
                             capture_output=True, text=True, timeout=timeout_s)
        got = json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return [Check("imports", False, f"importing {', '.join(mods)} took over {timeout_s:.0f} s (a cold shared "
                      "filesystem? the next try reads it warm)", transient=True)]
    except (ValueError, IndexError):
        return [Check("imports", False, f"the import probe failed: {out.stderr.strip()[-300:]}")]
    torch = got.get("torch", {})
    checks = []
    if driver is not None and torch.get("ok"):
        # First: a driver too old for the stack also breaks what imports or sees CUDA after it.
        checks.append(cuda_driver_check(driver[1], torch.get("cuda_build"), driver=driver[0],
                                        stack=f"torch {torch.get('version')}"))
    failed = import_failures(got, mods)
    versions = {m: got[m].get("version") for m in mods if not m.startswith("justrl_hpc") and got.get(m, {}).get("ok")}
    if torch.get("ok"):
        versions["torch_cuda"] = torch.get("cuda_build")
    versions["python"] = ".".join(map(str, sys.version_info[:3]))
    checks.append(Check("imports", failed is None, failed or
                        ", ".join(f"{m} {got[m]['version']}".rstrip() for m in mods), facts=versions))
    if cuda and failed is None:
        info = got.get("cuda", {})
        checks.append(Check("cuda", bool(info.get("ok")) and info.get("devices", 0) >= resolved.cluster.gpus_per_node,
                            f"torch sees {info.get('devices')} CUDA devices, NCCL {info.get('nccl')}",
                            facts={"nccl": info.get("nccl")}))
    return checks


# -- the node's result, and the driver's view of every node's -------------------------------------------


def backend_for(spec: str) -> Any:
    """The node agent's own NVML reader (auto, nvml, none or replay:FILE, as the cluster file says)."""
    from justrl_hpc.monitor.agent.sampler import make_backend

    return make_backend(spec)


def run_checks(resolved: Resolved, run_dir: Path, backend: Any,
               kernel: kernel_log.KernelXids | None = None) -> list[Check]:
    reading, inventory = read_gpus(backend)
    checks = check_host(resolved, run_dir) + gpu_checks(resolved, reading, inventory, kernel)
    checks += check_stack(resolved, nvml=inventory if resolved.cluster.gpus_per_node else None)
    checks += check_compiler(resolved)  # after the stack: a driver too old for it is the first thing to fix
    checks += [Check("timing", True, w, warning=True) for w in timing_warnings(resolved)]
    return checks


def summary(checks: list[Check], seconds: float) -> dict[str, Any]:
    failed = [k for k in checks if not k.ok]
    return {
        "node": node_name(),
        "ok": not failed,
        "failed": [f"{k.name}: {k.detail}" for k in failed],
        # Every failure here may pass on another try: the chunk is requeued, not the run failed.
        "transient": bool(failed) and all(k.transient for k in failed),
        "warnings": [f"{k.name}: {k.detail}" for k in checks if k.warning],
        "hard": [f"{k.name}: {k.detail}" for k in failed if k.hard],
        "passed": [k.name for k in checks if k.ok and not k.warning],
        "seconds": round(seconds, 2),
        # What the node runs (driver, CUDA, GPU model, torch, vLLM, verl, transformers, NCCL): the monitor's
        # E1-env-drift compares it across the run's chunks.
        "env": {k: v for c in checks if c.facts for k, v in c.facts.items() if v not in (None, "")},
    }


def result_file(control: Path, job_id: str, restart: int, rank: int) -> Path:
    return control / f"preflight-{job_id}-{restart}-{rank}.json"


def publish(control: Path, job_id: str, restart: int, rank: int, result: dict[str, Any]) -> None:
    path = result_file(control, job_id, restart, rank)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)


def gather_timeout_s(resolved: Resolved) -> float:
    """How long rank 0 waits for the other nodes' results: long enough that a node whose import probe runs to
    IMPORT_TIMEOUT_S still reports (its transient failure requeues the chunk instead of going unheard)."""
    return max(float(resolved.cluster.ray_wait_timeout_s), IMPORT_TIMEOUT_S + 120.0)


def gather(control: Path, job_id: str, restart: int, nodes: int, timeout_s: float) -> list[dict[str, Any]]:
    """Every other rank's result, as far as they arrive within the timeout (a node that never reports is
    one Ray will not see either: the driver's wait for Ray says so)."""
    deadline = time.monotonic() + timeout_s
    got: dict[int, dict[str, Any]] = {}
    while len(got) < nodes - 1 and time.monotonic() < deadline:
        for rank in range(1, nodes):
            path = result_file(control, job_id, restart, rank)
            if rank not in got and path.is_file():
                try:
                    got[rank] = json.loads(path.read_text())
                except ValueError:
                    pass  # caught mid-rename on a slow shared filesystem
        time.sleep(0.2)
    return [got[r] for r in sorted(got)]



def on_this_node(resolved: Resolved, run_dir: Path, ledger: Any, job_id: str, chunk: int | None, rank: int) -> dict[str, Any]:
    """Run every check, write this node's `preflight` event (with the CPUs it may use and the kernel log's
    mark for the next chunk's XID check), and return its summary."""
    t0 = time.monotonic()
    node, boot = node_name(), kernel_log.boot_id()
    mark = kernel = None
    try:
        mark = kernel_log.previous_mark(ledger.read(), node, boot)
        kernel = kernel_log.kernel_xids(mark=mark)
        checks = run_checks(resolved, run_dir, backend_for(resolved.cluster.nvml_backend), kernel)
    except Exception as exc:  # a check that crashes must not read as a healthy node
        checks = [Check("preflight", False, f"the preflight itself failed: {type(exc).__name__}: {exc}")]
    result = summary(checks, time.monotonic() - t0)
    # The mark moves only past XIDs this preflight judged (not when NVML saw no GPU to judge them for).
    judged = kernel is not None and any(k.name == "gpu-xid" and not k.warning for k in checks)
    seq = kernel.last_seq if judged and kernel is not None else mark
    ledger.append("preflight", job_id=job_id, chunk=chunk, node=result["node"], rank=rank, ok=result["ok"],
                  failed=result["failed"] or None, transient=result["transient"] or None,
                  warnings=result["warnings"] or None, passed=",".join(result["passed"]), seconds=result["seconds"],
                  cpus=usable_cpus(), kmsg_boot=boot if seq is not None else None, kmsg_seq=seq,
                  env=result["env"] or None)
    return result


def transient(results: list[dict[str, Any]]) -> bool:
    """True when a node failed and every failed node's failures may pass on another try (an import that
    outlasted IMPORT_TIMEOUT_S): the driver requeues the chunk, counted as one without progress, instead of
    failing the run."""
    bad = [r for r in results if not r["ok"]]
    return bool(bad) and all(r.get("transient") for r in bad)


def hard_evidence(results: list[dict[str, Any]]) -> dict[str, str]:
    """Per failed node, the evidence against the node itself: a hard check (GPU recovery action, ECC, a failed
    remap, a critical XID, a GPU held), or an import that failed there while it passed on another node (a
    broken install on that node only). A node that failed only softly (shared memory, a slow import) is not
    in it: leaving it out would be a guess."""
    def passed(r: dict[str, Any]) -> list[str]:
        p = r.get("passed") or []
        return p.split(",") if isinstance(p, str) else list(p)

    imported = any("imports" in passed(r) for r in results)
    out = {}
    for r in results:
        if r.get("ok") or r.get("transient"):
            continue
        hard = list(r.get("hard") or [])
        if imported:
            hard += [f for f in r.get("failed") or [] if f.startswith("imports:")]
        if hard:
            out[str(r["node"])] = hard[0]
    return out


def policy_facts(results: list[dict[str, Any]], nodes: int, excluded: tuple[str, ...], cluster: Any) -> dict[str, Any]:
    """What chunk_policy needs of a failed preflight: transient or not, the evidence against each node, the
    nodes that failed, the allocation's size, the nodes already left out, and the cluster's exclusion rules."""
    return {"transient": transient(results), "hard": tuple(hard_evidence(results).items()), "alloc_nodes": nodes,
            "failed_nodes": tuple(str(r["node"]) for r in results if not r["ok"] and not r.get("transient")),
            "excluded": excluded, "max_excluded": cluster.max_excluded_nodes, "exclude_policy": cluster.exclude_policy}


def verdict(results: list[dict[str, Any]], run_dir: Path) -> str | None:
    """None when every node passed; else the reason: which nodes, the first failed check, and the resubmission
    that leaves them out (when transient(results), the reason the chunk is requeued for)."""
    bad = [r for r in results if not r["ok"]]
    if not bad:
        return None
    if transient(results):
        nodes = ",".join(sorted({r["node"] for r in bad}))
        return f"preflight on {nodes} may pass on another try: {bad[0]['failed'][0]}"
    bad = [r for r in bad if not r.get("transient")]  # a node that was only slow is no node to leave out
    nodes = ",".join(sorted({r["node"] for r in bad}))
    if len(bad) == len(results) > 1:
        # Every node: the install or the cluster file, not a node; leaving them all out is no advice.
        return f"preflight failed on every node ({nodes}): {bad[0]['failed'][0]}; fix it, then resubmit: " \
               f"python -m justrl_hpc.launch --resume {run_dir}"
    return (f"preflight failed on {nodes}: {bad[0]['failed'][0]}; fix it or leave the node out: "
            f"python -m justrl_hpc.launch --resume {run_dir} --exclude {nodes}")
