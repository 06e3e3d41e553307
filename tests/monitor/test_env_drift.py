"""E1-env-drift: a node's versions changed between chunks of one run (a table over ledger events)."""

from __future__ import annotations

import pytest

from justrl_hpc.monitor.rules.environment import evaluate_environment

A800 = {"driver": "535.104.05", "cuda": "12.2", "gpu": "NVIDIA A800-SXM4-80GB", "torch": "2.11.0",
        "torch_cuda": "13.0", "vllm": "0.24.0", "verl": "0.9.1", "transformers": "4.57.1", "nccl": "2.27.3"}


def preflight(job: str, chunk: int, node: str, **changed: str | None) -> dict:
    env = {**A800, **changed}
    return {"event": "preflight", "job_id": job, "chunk": chunk, "node": node, "ok": True,
            "env": {k: v for k, v in env.items() if v is not None}}


def chunk(job: str, n: int, nodes: tuple[str, ...] = ("n1", "n2"), **on: dict[str, str]) -> list[dict]:
    return [{"event": "started", "job_id": job, "chunk": n}] + [preflight(job, n, node, **on.get(node, {}))
                                                                  for node in nodes]


CASES = [
    # (what, ledger, {node: message fragments})
    ("one chunk: nothing to compare", chunk("10", 1), {}),
    ("same versions", chunk("10", 1) + chunk("10", 2), {}),
    ("torch upgraded on one node", chunk("10", 1) + chunk("10", 2, n2={"torch": "2.11.1"}),
     {"n2": ["torch 2.11.0 → 2.11.1", "job 10 chunk 2", "job 10 chunk 1"]}),
    ("driver and NCCL on both nodes, a new job id (a resubmission)",
     chunk("10", 1) + chunk("11", 2, n1={"driver": "550.54.15", "nccl": "2.28.1"},
                            n2={"driver": "550.54.15", "nccl": "2.28.1"}),
     {"n1": ["driver 535.104.05 → 550.54.15", "nccl 2.27.3 → 2.28.1"], "n2": ["driver 535.104.05 → 550.54.15"]}),
    ("a node new to the run is compared with every node before",
     chunk("10", 1) + chunk("10", 2, nodes=("n1", "n3"), n3={"vllm": "0.25.0"}),
     {"n3": ["vllm 0.24.0 → 0.25.0"]}),
    ("a new node like the others raises nothing", chunk("10", 1) + chunk("10", 2, nodes=("n3", "n4")), {}),
    ("only the newest two chunks count: an old change is history",
     chunk("10", 1) + chunk("10", 2, n1={"torch": "2.11.1"}, n2={"torch": "2.11.1"})
     + chunk("10", 3, n1={"torch": "2.11.1"}, n2={"torch": "2.11.1"}), {}),
    ("chunks whose preflight recorded no versions (an older suite) are skipped",
     chunk("10", 1) + [{"event": "preflight", "job_id": "10", "chunk": 2, "node": "n1", "ok": True}]
     + chunk("10", 3, n1={"transformers": "4.58.0"}),
     {"n1": ["transformers 4.57.1 → 4.58.0", "job 10 chunk 3", "job 10 chunk 1"]}),
    ("a version the node no longer reports is no drift (its preflight fails instead)",
     chunk("10", 1) + chunk("10", 2, n1={"vllm": None}), {}),
    ("a GPU model swapped under the run",
     chunk("10", 1) + chunk("10", 2, n2={"gpu": "NVIDIA A100-SXM4-80GB"}),
     {"n2": ["gpu NVIDIA A800-SXM4-80GB → NVIDIA A100-SXM4-80GB"]}),
]


@pytest.mark.parametrize(("what", "events", "expect"), CASES, ids=[c[0] for c in CASES])
def test_env_drift(what: str, events: list[dict], expect: dict[str, list[str]]) -> None:
    found = evaluate_environment(events)
    assert {f.node: f.key for f in found} == {n: f"E1-env-drift:{n}" for n in expect}
    for f in found:
        assert f.severity == "warn" and f.rule == "E1-env-drift"
        for fragment in expect[f.node]:
            assert fragment in f.message, f.message


def test_two_real_preflights_with_different_drivers_raise_the_alert_in_scan(tmp_path) -> None:
    """Each chunk's own preflight (the real import probe, NVML read through the node agent's replay backend from
    recorded A800 readings: driver 535, then the same node after a driver upgrade) writes its versions to the
    ledger; `justrl-monitor scan` then says what changed, where and when."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from justrl_hpc.core.config_files import resolve
    from justrl_hpc.core.ledger import Ledger
    from justrl_hpc.jobs.train import preflight

    repo = Path(__file__).resolve().parents[2]
    old = repo / "tests" / "data" / "nvml_a800_8gpu_driver535.jsonl"
    lines = old.read_text().splitlines()
    header = json.loads(lines[0])
    header["inventory"]["driver"], header["inventory"]["cuda"] = "550.54.15", "12.4"
    new = tmp_path / "after-upgrade.jsonl"
    new.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")

    run = tmp_path / "run"
    for sub in ("control", "checkpoints"):
        (run / sub).mkdir(parents=True)
    ledger = Ledger(run)
    for chunk, recording in ((1, old), (2, new)):
        ledger.append("started", job_id="77", chunk=chunk)
        res = resolve("rehearsal", "dev", [f"cluster.nvml_backend=replay:{recording}"])
        preflight.on_this_node(res, run, ledger, "77", chunk, 0)
    envs = [e["env"] for e in ledger.read() if e["event"] == "preflight"]
    assert envs[0]["driver"] == "535.183.01" and envs[1]["driver"] == "550.54.15"
    assert envs[0]["verl"] == "0.9.1" and envs[0]["torch"] == envs[1]["torch"]

    cfg = tmp_path / "monitor.yaml"
    cfg.write_text("daemon:\n  cooldown_s: 0\n")
    out = subprocess.run([sys.executable, "-m", "justrl_hpc.monitor.cli", "scan", str(run), "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120, env={**__import__("os").environ,
                                                                            "PYTHONPATH": str(repo)})
    assert out.returncode in (0, 1), out.stderr
    alerts = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    drift = [a["message"] for a in alerts if a["rule"] == "E1-env-drift"]
    assert len(drift) == 1, out.stdout
    assert "driver 535.183.01 → 550.54.15" in drift[0] and "cuda 12.2 → 12.4" in drift[0], drift[0]
    assert "and job 77 chunk 2" in drift[0]


def test_a_node_left_out_is_said_while_it_is_out() -> None:
    from justrl_hpc.monitor.rules.environment import evaluate_exclusions

    now = 1_000_000.0
    events = [{"event": "excluded", "job_id": "9", "chunk": 4, "nodes": "n3", "exclude": "n3", "until": now + 7200,
               "evidence": "n3: gpu-remap: GPU 2: a row remap failed"}]
    (f,) = evaluate_exclusions(events, now)
    assert (f.key, f.severity, f.node) == ("E2-node-excluded:n3", "warn", "n3")
    assert "left out of job 9 at chunk 4 for 2.0 h more: n3: gpu-remap" in f.message
    assert evaluate_exclusions(events, now + 7201) == []  # expired: readmitted at the next release
    readmitted = [*events, {"event": "readmitted", "nodes": "n3", "exclude": ""}]
    assert evaluate_exclusions(readmitted, now) == []
