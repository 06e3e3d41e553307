"""Is this node fit to train? Every node of every chunk asks before Ray starts, in seconds, so that a bad node
costs one short allocation and one clear line instead of a crashed chunk, or a chain of them.

Checks: the GPUs the cluster file promises (count, model) with the driver's and CUDA's versions; their health
through the node agent's own NVML code (uncorrectable ECC, row remaps, the driver's recovery action, XIDs in
the kernel log since boot); that no process holds a GPU (a leftover is named with its pid and command);
room in /dev/shm and on the run folder's filesystem, and that this node can write the run folder; that the
trainer's stack imports (torch with CUDA and NCCL, vLLM, the recipes' attention implementation; on the CPU
backend torch, verl and the backend). Each node writes a `preflight` ledger event; a failure ends the chunk
and the run says which node and check, and how to resubmit without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from justrl_hpc.core.config import Resolved
from justrl_hpc.core.paths import RunPaths
from justrl_hpc.core.recipe import CPU_ROLLOUT, timing_warnings
from justrl_hpc.jobs.train.environment import node_name
from justrl_hpc.monitor.schema import XID_CRITICAL

IMPORT_TIMEOUT_S = 120.0
PROBE_CACHE = Path("/tmp/justrl-preflight")
SHM_ENV = "JUSTRL_SHM_DIR"  # where the node's shared memory is mounted, if not /dev/shm
_XID = re.compile(r"NVRM: Xid \(PCI:([0-9A-Fa-f:.]+)\): (\d+)")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # reported with the node's result; never fails it


# -- GPUs ------------------------------------------------------------------------------------------------


def _command_of(pid: int) -> str:
    import psutil

    try:
        return " ".join(psutil.Process(pid).cmdline())[:160] or psutil.Process(pid).name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "not visible from this node's namespace"


def kernel_xids(kmsg: Path = Path("/dev/kmsg")) -> tuple[list[tuple[str, int]], str | None]:
    """(PCI bus id, XID) pairs the kernel logged since boot, and why they could not be read (or None)."""
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return [], f"{kmsg}: {exc.strerror}"
    chunks: list[bytes] = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break  # the end of the ring buffer
            except OSError:  # EPIPE: a record was overwritten while reading; the next read goes on
                continue
            if not record:
                break
            chunks.append(record)
    finally:
        os.close(fd)
    return parse_xids(b"".join(chunks).decode(errors="replace")), None


def parse_xids(text: str) -> list[tuple[str, int]]:
    return [(m.group(1).lower(), int(m.group(2))) for m in _XID.finditer(text)]


def _bus(pci: str) -> str:
    """bus:device, as both the kernel ("0000:07:00") and NVML ("00000000:07:00.0") spell a GPU's address."""
    return ":".join(pci.lower().split(":")[-2:]).split(".")[0]


def check_gpus(resolved: Resolved, backend: Any) -> list[Check]:
    c = resolved.cluster
    backend.open()
    try:
        reading = backend.sample()
        inventory = backend.inventory()
    finally:
        backend.close()
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
        checks.append(Check("driver", True, f"driver {inventory.get('driver')}, CUDA {inventory.get('cuda')}"))
    bus = {_bus(str(g.get("pci_bus_id", ""))): g.get("index") for g in reading.gpus}
    for g in reading.gpus:
        i = g.get("index")
        if (g.get("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") or 0) > 0:
            checks.append(Check("gpu-ecc", False, f"GPU {i}: {g['DCGM_FI_DEV_ECC_DBE_VOL_TOTAL']} uncorrectable "
                                "ECC errors since the driver loaded (reset the GPU or drain the node)"))
        if g.get("DCGM_FI_DEV_ROW_REMAP_FAILURE"):
            checks.append(Check("gpu-remap", False, f"GPU {i}: a row remap failed (the GPU needs replacing)"))
        elif g.get("DCGM_FI_DEV_ROW_REMAP_PENDING"):
            checks.append(Check("gpu-remap", False, f"GPU {i}: a row remap is pending (a GPU reset applies it)"))
    for g in gpus:
        action = g.get("recovery_action")
        if action:  # NVML_GPU_RECOVERY_ACTION_NONE is 0
            checks.append(Check("gpu-recovery", False, f"GPU {g.get('index')}: the driver asks for recovery "
                                f"action {action} (1 reset, 2 node reboot, 3/4 drain)"))
        for p in g.get("processes") or []:
            used = f", {p['used_mib']} MiB" if p.get("used_mib") else ""
            checks.append(Check("gpu-free", False, f"GPU {g.get('index')} is held by pid {p['pid']} "
                                f"({_command_of(int(p['pid']))}{used})"))
    if gpus:
        xids, why = kernel_xids()
        bad = sorted({(bus.get(_bus(b), b), x) for b, x in xids if x in XID_CRITICAL}, key=str)
        if why:
            checks.append(Check("gpu-xid", True, f"kernel log not readable ({why}): XIDs since boot unknown",
                                warning=True))
        elif bad:
            checks.append(Check("gpu-xid", False, "XIDs since boot that need a reset or reboot: "
                                + ", ".join(f"GPU {g} XID {x}" for g, x in bad)))
    if not any(not k.ok for k in checks) and gpus:
        checks.append(Check("gpu-health", True, f"{len(gpus)} GPUs free, no ECC, remap or recovery flag"))
    return checks


# -- the host ----------------------------------------------------------------------------------------------


def gb_text(n: float) -> str:
    """GB with enough digits that a small filesystem does not read as "0.0 GB"."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e9:.4f} GB"


def check_host(resolved: Resolved, run_dir: Path) -> list[Check]:
    c = resolved.cluster
    checks: list[Check] = []
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
if sys.argv[2] == "cuda" and out.get("torch", {}).get("ok"):
    import torch
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


def install_key(mods: list[str], cuda: bool) -> str | None:
    """What the import probe's answer depends on, cheaply: the interpreter and where each module resolves
    from (a module shadowed or reinstalled resolves elsewhere or has a new mtime). None if one is missing."""
    import hashlib
    import importlib.util

    parts = [sys.executable, os.environ.get("PYTHONPATH", ""), str(cuda)]
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


def check_stack(resolved: Resolved, timeout_s: float = IMPORT_TIMEOUT_S, cache: Path | None = PROBE_CACHE) -> list[Check]:
    mods, cuda = stack_modules(resolved)
    key = install_key(mods, cuda)
    # Importing torch, verl and vLLM takes seconds of CPU: a node whose install passed once, unchanged since,
    # is not probed again (the cache is the node's own /tmp).
    hit = cache / f"{key}.json" if cache is not None and key else None
    if hit is not None and hit.is_file():
        try:
            return [Check(**c) for c in json.loads(hit.read_text())]
        except (OSError, ValueError, TypeError):
            pass
    checks = _probe(resolved, mods, cuda, timeout_s)
    if hit is not None and all(k.ok for k in checks):
        try:
            hit.parent.mkdir(parents=True, exist_ok=True)
            hit.write_text(json.dumps([asdict(k) for k in checks]))
        except OSError:
            pass  # a cache that cannot be written only costs the next chunk the probe
    return checks


def _probe(resolved: Resolved, mods: list[str], cuda: bool, timeout_s: float) -> list[Check]:
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, ",".join(mods), "cuda" if cuda else "cpu"],
                             capture_output=True, text=True, timeout=timeout_s)
        got = json.loads(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return [Check("imports", False, f"importing {', '.join(mods)} took over {timeout_s:.0f} s")]
    except (ValueError, IndexError):
        return [Check("imports", False, f"the import probe failed: {out.stderr.strip()[-300:]}")]
    missing = [f"{m} ({got[m]['error']})" for m in mods if not got.get(m, {}).get("ok")]
    checks = [Check("imports", not missing, "cannot import " + "; ".join(missing) if missing else
                    ", ".join(f"{m} {got[m]['version']}".rstrip() for m in mods))]
    if cuda and not missing:
        info = got.get("cuda", {})
        checks.append(Check("cuda", bool(info.get("ok")) and info.get("devices", 0) >= resolved.cluster.gpus_per_node,
                            f"torch sees {info.get('devices')} CUDA devices, NCCL {info.get('nccl')}"))
    return checks


# -- the node's result, and the driver's view of every node's -------------------------------------------


def backend_for(spec: str) -> Any:
    """The node agent's own NVML reader (auto, nvml, none or replay:FILE, as the cluster file says)."""
    from justrl_hpc.monitor.agent.sampler import make_backend

    return make_backend(spec)


def run_checks(resolved: Resolved, run_dir: Path, backend: Any) -> list[Check]:
    checks = check_host(resolved, run_dir) + check_gpus(resolved, backend) + check_stack(resolved)
    checks += [Check("timing", True, w, warning=True) for w in timing_warnings(resolved)]
    return checks


def summary(checks: list[Check], seconds: float) -> dict[str, Any]:
    failed = [k for k in checks if not k.ok]
    return {
        "node": node_name(),
        "ok": not failed,
        "failed": [f"{k.name}: {k.detail}" for k in failed],
        "warnings": [f"{k.name}: {k.detail}" for k in checks if k.warning],
        "passed": [k.name for k in checks if k.ok and not k.warning],
        "seconds": round(seconds, 2),
    }


def result_file(control: Path, job_id: str, restart: int, rank: int) -> Path:
    return control / f"preflight-{job_id}-{restart}-{rank}.json"


def publish(control: Path, job_id: str, restart: int, rank: int, result: dict[str, Any]) -> None:
    path = result_file(control, job_id, restart, rank)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, path)


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
    """Run every check, write this node's `preflight` event, and return its summary."""
    t0 = time.monotonic()
    try:
        checks = run_checks(resolved, run_dir, backend_for(resolved.cluster.nvml_backend))
    except Exception as exc:  # a check that crashes must not read as a healthy node
        checks = [Check("preflight", False, f"the preflight itself failed: {type(exc).__name__}: {exc}")]
    result = summary(checks, time.monotonic() - t0)
    ledger.append("preflight", job_id=job_id, chunk=chunk, node=result["node"], rank=rank, ok=result["ok"],
                  failed=result["failed"] or None, warnings=result["warnings"] or None,
                  passed=",".join(result["passed"]), seconds=result["seconds"])
    return result


def verdict(results: list[dict[str, Any]], run_dir: Path) -> str | None:
    """None when every node passed; else the failed event's reason: which nodes, the first failed check,
    and the resubmission that leaves them out."""
    bad = [r for r in results if not r["ok"]]
    if not bad:
        return None
    nodes = ",".join(sorted({r["node"] for r in bad}))
    if len(bad) == len(results) > 1:
        # Every node: the install or the cluster file, not a node; leaving them all out is no advice.
        return f"preflight failed on every node ({nodes}): {bad[0]['failed'][0]}; fix it, then resubmit: " \
               f"python -m justrl_hpc.launch --resume {run_dir}"
    return (f"preflight failed on {nodes}: {bad[0]['failed'][0]}; fix it or leave the node out: "
            f"python -m justrl_hpc.launch --resume {run_dir} --exclude {nodes}")
