"""A hung trainer's Python stacks, from every process of the incarnation on every node, before anything is killed.

The driver asks (`request`), dumps its own node and waits for the other nodes' tasks, which look for the request
while they wait for the chunk to end (`answer`). On each node, every process carrying this incarnation's run
mark is asked two ways: faulthandler on the spare signal, for the processes that registered it (every Ray worker
of verl's, through the worker setup hook: in_worker/deadline_hook.py), and `py-spy dump --nonblocking` where
py-spy is installed and ptrace is allowed (it also reads a stopped process, a vLLM EngineCore and verl's own
driver, which no hook reaches). The result is one folder per hang, `logs/stacks/<UTC time>/`:
`<node>-<pid>.txt` (faulthandler), `<node>-<pid>.py-spy.txt`, and `index-<node>.json` (pid, kind, state,
command line, what answered). NCCL's own flight recorder is set up by the chunk's environment on GPU runs
(submission.chunk_env) and writes beside them when NCCL's watchdog times out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from justrl_hpc.jobs.train import cleanup
from justrl_hpc.jobs.train.in_worker.deadline_hook import STACKS_DIR, STACKS_SIGNAL, stacks_file

WAIT_S = 5.0  # for the signalled processes to write (faulthandler writes at once unless the process is stopped)
PY_SPY_TIMEOUT_S = 20.0


def _request_file(control: Path, job_id: str, restart: int) -> Path:
    return control / f"stacks-request-{job_id}-{restart}.json"


def py_spy() -> str | None:
    """py-spy from PATH or beside this Python (a venv's bin/ is not always on a task's PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def forget_registrations(control: Path, job_id: str, restart: int) -> None:
    """The driver's side, at its start: the files of earlier incarnations' processes (all gone by now) go."""
    keep = f"{job_id}-{restart}-"
    for old in (control / STACKS_DIR).glob("*.txt"):
        if not old.name.startswith(keep):
            old.unlink(missing_ok=True)


def _describe(proc: psutil.Process) -> dict[str, Any]:
    try:
        cmdline = " ".join(proc.cmdline())
        return {"pid": proc.pid, "kind": cleanup.kind_of(proc), "status": proc.status(), "cmdline": cmdline[:300],
                "python": _is_python(cmdline)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {"pid": proc.pid, "kind": "gone", "status": "gone", "cmdline": "", "python": False}


def dump_node(mark: cleanup.Mark, control: Path, folder: Path, wait_s: float = WAIT_S) -> dict[str, Any]:
    """Ask every process of this incarnation on this node for its stacks; what answered, for the index."""
    folder.mkdir(parents=True, exist_ok=True)
    procs = [p for p, _ in cleanup.ours(mark)]
    rows = {p.pid: _describe(p) for p in procs}
    sizes: dict[int, tuple[Path, int]] = {}
    for proc in procs:
        reg = stacks_file(control, mark.job_id, mark.restart, mark.node, proc.pid)
        if not reg.is_file():
            continue
        try:
            sizes[proc.pid] = (reg, reg.stat().st_size)
            os.kill(proc.pid, STACKS_SIGNAL)
        except OSError:
            sizes.pop(proc.pid, None)
    spy = py_spy()
    for proc in procs:
        if spy is None or not rows[proc.pid]["python"]:
            continue
        try:
            out = subprocess.run([spy, "dump", "--pid", str(proc.pid), "--nonblocking"], capture_output=True,
                                 text=True, timeout=PY_SPY_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            rows[proc.pid]["py_spy"] = f"failed: {exc}"
            continue
        if out.returncode == 0 and out.stdout.strip():
            (folder / f"{mark.node}-{proc.pid}.py-spy.txt").write_text(out.stdout)
            rows[proc.pid]["py_spy"] = "ok"
        else:
            rows[proc.pid]["py_spy"] = f"failed: {(out.stderr or out.stdout).strip()[:200]}"
    deadline = time.monotonic() + wait_s
    pending = dict(sizes)
    while pending and time.monotonic() < deadline:
        for pid, (reg, before) in list(pending.items()):
            if _grown(reg, before):
                pending.pop(pid)
        if pending:
            time.sleep(0.2)
    time.sleep(0.3)  # a handler still writing its last threads
    for pid, (reg, before) in sizes.items():
        with open(reg, "rb") as fh:
            fh.seek(before)
            text = fh.read().decode(errors="replace")
        rows[pid]["faulthandler"] = "ok" if text.strip() else "no answer (stopped, or gone)"
        if text.strip():
            (folder / f"{mark.node}-{pid}.txt").write_text(
                f"# node {mark.node} pid {pid} ({rows[pid]['kind']}, {rows[pid]['status']}): "
                f"{rows[pid]['cmdline']}\n{text}")
    index = {"node": mark.node, "job_id": mark.job_id, "restart": mark.restart, "py_spy": spy is not None,
             "processes": sorted(rows.values(), key=lambda r: r["pid"])}
    (folder / f"index-{mark.node}.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def _is_python(cmdline: str) -> bool:
    """By the program, not the whole line: Ray's raylet and gcs_server live under site-packages/ (the soak saw
    py-spy asked for them and fail); a Ray worker or vLLM engine renames itself."""
    first = cmdline.split(" ", 1)[0]
    return os.path.basename(first).startswith("python") or first.startswith(("ray::", "VLLM", "EngineCore"))


def _grown(path: Path, before: int) -> bool:
    try:
        return path.stat().st_size > before
    except OSError:
        return True


def request(control: Path, job_id: str, restart: int, folder: Path) -> None:
    """The driver's side: ask the other nodes' tasks for their stacks, into `folder`."""
    path = _request_file(control, job_id, restart)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"folder": str(folder), "asked": time.time()}))
    os.replace(tmp, path)


def answer(mark: cleanup.Mark, control: Path, answered: set[str]) -> str | None:
    """A node's side, between its looks at the chunk's end: dump once for each request not yet answered."""
    try:
        folder = json.loads(_request_file(control, mark.job_id, mark.restart).read_text())["folder"]
    except (OSError, ValueError, KeyError):
        return None
    if folder in answered:
        return None
    answered.add(folder)
    dump_node(mark, control, Path(folder))
    return folder


def wait_for_nodes(folder: Path, nodes: int, timeout_s: float) -> int:
    """Index files written so far (the driver's own included), waiting up to timeout_s for all `nodes`."""
    deadline = time.monotonic() + timeout_s
    while len(list(folder.glob("index-*.json"))) < nodes and time.monotonic() < deadline:
        time.sleep(0.5)
    return len(list(folder.glob("index-*.json")))


def summary(folder: Path) -> dict[str, Any]:
    """What the `hang` ledger event says of a folder: files written, and the processes that answered neither way."""
    silent = []
    for index in folder.glob("index-*.json"):
        try:
            data = json.loads(index.read_text())
        except (OSError, ValueError):
            continue
        silent += [f"{data['node']}:{r['pid']}({r['kind']},{r['status']})" for r in data["processes"]
                   if r.get("python") and r.get("faulthandler") != "ok" and r.get("py_spy") != "ok"]
    return {"stack_files": len(list(folder.glob("*.txt"))), "nodes_answered": len(list(folder.glob("index-*.json"))),
            "silent": silent[:20] or None}
