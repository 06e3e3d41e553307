"""The layout's rules, read off the source: which layer may import which, no cycle, no module over 600 lines.

Layers (README "Layout"): core (shared by every side) · launcher (the login node) · jobs.<kind> (inside the
allocation) · monitor (reads RUN/, never acts) · dev (this machine only). Every import counts, including
the ones inside functions that keep the CLI fast: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "justrl_hpc"
MAX_LINES = 600

# What the launcher may take from the jobs: each kind's submit-side module (resources, settings, the
# named entry point), never a job's body. evaluate/export run in-process with --local, so their CLI too.
LAUNCHER_MAY_USE = {
    "justrl_hpc.jobs.train.submission",
    "justrl_hpc.jobs.evaluate.job",
    "justrl_hpc.jobs.export.job",
    # `monitor-job` checks a rules file on the login node, before a link reads it on a compute node.
    "justrl_hpc.monitor.settings",
}
# The node-side monitor code a chunk's preflight reads GPUs with (the agent's own NVML reader and the
# telemetry schema): it runs on the same nodes, and a second NVML reader would be a second truth.
PREFLIGHT = "justrl_hpc.jobs.train.preflight"
PREFLIGHT_MAY_USE = ("justrl_hpc.monitor.agent", "justrl_hpc.monitor.schema")
# Files verl loads by path or imports in its own workers: nothing of the suite, so they work from any snapshot.
IN_WORKER = "justrl_hpc.jobs.train.in_worker"
# The monitor's parts that must not do I/O of their own (rules are pure functions of what they are given).
IO_MODULES = {"subprocess", "socket", "sqlite3", "urllib", "http", "smtplib", "shutil", "psutil", "pynvml"}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every justrl_hpc module `name` imports (`from pkg import mod` counts as pkg.mod when that is a module)."""
    tree = ast.parse(MODULES[name].read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("justrl_hpc"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("justrl_hpc"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
    return {m for m in out if m != name}


def external_imports_of(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in ("cli", "launch"):
        return "entry"  # the verb table and `python -m justrl_hpc.launch`: they may name anything
    if parts[1] == "jobs" and len(parts) > 2:
        return f"jobs.{parts[2]}"
    return parts[1]


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def allowed(src: str, dst: str) -> bool:
    s, d = layer(src), layer(dst)
    if within(src, IN_WORKER):
        return False  # runs inside verl's processes: standard library only
    if s in ("entry", "dev"):
        return True  # the verb table names every verb; dev drives the whole suite on this machine
    if s == "monitor":
        return d in ("core", "monitor") and monitor_allowed(src, dst)
    if d == "core" or s == d:
        return True
    if s == "launcher":
        return dst in LAUNCHER_MAY_USE
    if s == "jobs.evaluate":
        return d == "jobs.export"  # it evaluates the merged shards export reassembles
    if src == PREFLIGHT:
        return any(within(dst, m) for m in PREFLIGHT_MAY_USE)
    return False


def monitor_allowed(src: str, dst: str) -> bool:
    if dst == "justrl_hpc.core.slurm_act":
        return False
    if within(src, "justrl_hpc.monitor.dashboard") and within(dst, "justrl_hpc.monitor.daemon"):
        return False
    if within(src, "justrl_hpc.monitor.rules"):
        # pure: findings, the telemetry schema, each other, and core's plain helpers
        return within(dst, "justrl_hpc.monitor.rules") or dst in (
            "justrl_hpc.monitor.findings", "justrl_hpc.monitor.schema"
        ) or layer(dst) == "core"
    if within(src, "justrl_hpc.monitor.agent"):
        # on the compute nodes, beside the trainer: only what it samples with
        return within(dst, "justrl_hpc.monitor.agent") or dst == "justrl_hpc.monitor.schema" or layer(dst) == "core"
    return True


def test_every_import_follows_the_layer_rules() -> None:
    bad = sorted(f"{src} → {dst}" for src, dsts in GRAPH.items() for dst in dsts if not allowed(src, dst))
    assert not bad, "imports against the layout's rules:\n" + "\n".join(bad)


def test_only_the_verb_table_tests_and_benchmarks_import_dev() -> None:
    users = sorted(src for src, dsts in GRAPH.items() for dst in dsts
                   if layer(dst) == "dev" and layer(src) not in ("dev", "entry"))
    assert not users


def test_the_monitor_cannot_reach_a_job_acting_call_through_any_chain() -> None:
    """Not only directly: nothing the monitor imports imports slurm_act either (the never-intervene rule)."""
    seen: set[str] = set()
    todo = [m for m in MODULES if within(m, "justrl_hpc.monitor")]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(GRAPH.get(m, ()))
    assert "justrl_hpc.core.slurm_act" not in seen
    assert not {m for m in seen if layer(m) in ("launcher", "entry") or layer(m).startswith("jobs.")}


def test_code_inside_verls_workers_is_standard_library_only() -> None:
    import sys

    for name in MODULES:
        if within(name, IN_WORKER):
            assert not GRAPH[name], f"{name} imports {GRAPH[name]}"
            # what verl's own workers already import (the reward is DAPO's verifier in verl.utils.reward_score)
            third_party = external_imports_of(name) - set(sys.stdlib_module_names) - {"__future__", "verl"}
            assert not third_party, f"{name}: {third_party}"


@pytest.mark.parametrize("prefix", ["justrl_hpc.monitor.rules"])
def test_rules_do_no_io(prefix: str) -> None:
    for name in MODULES:
        if within(name, prefix):
            got = external_imports_of(name) & IO_MODULES
            src = MODULES[name].read_text()
            assert not got, f"{name} imports {got}"
            assert "open(" not in src and ".read_text(" not in src and ".read_bytes(" not in src, name


def test_there_is_no_import_cycle() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_module_is_over_600_lines() -> None:
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_checker_itself_sees_a_forbidden_import() -> None:
    """The rules above must be able to fail: a monitor module importing slurm_act, the core importing the
    launcher, a rule reading a file."""
    assert not allowed("justrl_hpc.monitor.daemon.service", "justrl_hpc.core.slurm_act")
    assert not allowed("justrl_hpc.core.config", "justrl_hpc.launcher.launch")
    assert not allowed("justrl_hpc.monitor.dashboard.app", "justrl_hpc.monitor.daemon.store")
    assert not allowed("justrl_hpc.jobs.train.driver", "justrl_hpc.monitor.daemon.service")
    assert not allowed("justrl_hpc.launcher.submit", "justrl_hpc.jobs.train.driver")
    assert not allowed("justrl_hpc.jobs.train.in_worker.reward", "justrl_hpc.core.errors")
    assert not allowed("justrl_hpc.monitor.agent.sampler", "justrl_hpc.monitor.rules.gpu")
    assert allowed("justrl_hpc.launcher.submit", "justrl_hpc.jobs.train.submission")
    assert allowed(PREFLIGHT, "justrl_hpc.monitor.agent.nvml")
    assert not allowed(PREFLIGHT, "justrl_hpc.monitor.rules.gpu")
    assert allowed("justrl_hpc.monitor.daemon.service", "justrl_hpc.core.slurm")
