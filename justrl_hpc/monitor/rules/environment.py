"""E1-env-drift: what a node runs changed between two chunks of one run (from the ledger's `preflight` events).

Each node's preflight records its driver, CUDA, GPU model, torch, vLLM, verl, transformers, Ray, NCCL and
Python versions (`env`). A site that upgrades any of them in the middle of 15 days changes the run's numerics
without a word; this rule says what changed, on which node, at which chunk. It compares the newest chunk that
recorded versions with the one before it: a node seen in both is compared with itself, a node new to the run
with every node of the previous chunk. Pure: the ledger's events in, findings out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from justrl_hpc.core.exclusions import active
from justrl_hpc.monitor.findings import Finding

Chunk = tuple[Any, Any]  # (job_id, chunk)


def chunk_envs(events: Sequence[Mapping[str, Any]]) -> list[tuple[Chunk, dict[str, dict[str, Any]]]]:
    """Each chunk's recorded versions per node, oldest chunk first (chunks whose preflight recorded none left out)."""
    out: dict[Chunk, dict[str, dict[str, Any]]] = {}
    for e in events:
        if not isinstance(e, Mapping) or e.get("event") != "preflight":
            continue
        env = e.get("env")
        if not isinstance(env, Mapping) or not env:
            continue
        out.setdefault((e.get("job_id"), e.get("chunk")), {})[str(e.get("node"))] = dict(env)
    return list(out.items())


def changes(before: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Per node of `now`: `what old → new` for each version that differs from the previous chunk's."""
    found: dict[str, list[str]] = {}
    for node, env in sorted(now.items()):
        for key, value in env.items():
            if node in before:
                olds = {before[node][key]} if key in before[node] else set()
            else:
                olds = {e[key] for e in before.values() if key in e}
            if olds and value not in olds:
                found.setdefault(node, []).append(f"{key} {' / '.join(sorted(map(str, olds)))} → {value}")
    return found


def evaluate_environment(events: Sequence[Mapping[str, Any]]) -> list[Finding]:
    """E1-env-drift (warn), one per node whose versions differ from the previous chunk's; it holds while that
    chunk is the newest to have recorded versions."""
    chunks = chunk_envs(events)
    if len(chunks) < 2:
        return []
    (old_job, old_chunk), before = chunks[-2]
    (job, chunk), now = chunks[-1]
    out = []
    for node, what in changes(before, now).items():
        out.append(Finding.of(
            "E1-env-drift", "warn", node, "env", "; ".join(what), None,
            f"{node}: {', '.join(what)} between job {old_job} chunk {old_chunk} and job {job} chunk {chunk}; "
            "the run's numerics may change with it",
            node=node,
        ))
    return out


def evaluate_exclusions(events: Sequence[Mapping[str, Any]], now: float) -> list[Finding]:
    """E2-node-excluded (warn), one per node the chunks left out of the job (cluster.exclude_policy: act) while
    the exclusion is in force: which node, on what evidence, until when. The chunk acted; the monitor says so."""
    evs = [e for e in events if isinstance(e, Mapping)]
    out = []
    for node, until in sorted(active(evs, now).items()):
        e = next(e for e in reversed(evs) if e.get("event") == "excluded" and node in str(e.get("nodes")).split(","))
        left = (until - now) / 3600
        out.append(Finding.of(
            "E2-node-excluded", "warn", node, "excluded", node, None,
            f"{node} left out of job {e.get('job_id')} at chunk {e.get('chunk')} for {left:.1f} h more: "
            f"{e.get('evidence')}; the run goes on without it",
            node=node,
        ))
    return out
