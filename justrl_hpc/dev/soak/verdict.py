"""The soak's judgement, from the run folder alone (ledger, checkpoints, TensorBoard, alerts.jsonl) plus the
soak's own records beside it (the schedule, the faults fired, what the webhook received).

- finished: the ledger says `finished` at the target step.
- steps: every step 1..target is in verl's TensorBoard files; a step logged more than once is retrained work,
  allowed only where a chunk's trainer ended without a save of its newest step (a kill, a lost node, a full
  disk, a SIGTERM, an outside requeue), and then at most the steps since that chunk's last verified save. A
  planned stop (the limit's signal, USR2, save-now) may lose none. `justrl-hpc report` must count the same.
- resumes: each trainer started from step 0 (the first) or from a step with a `saved` (verified) event.
- alerts: every chunk that retrained steps has its S7-steps-retrained alert; every alert is one the faults
  explain, except the training-curve rules (T2–T8), which judge the toy task's curves, not the faults: those are
  counted in `alerts_training` and listed, not failed on (a NaN, T1, is always unexpected); so are G12's
  host-RAM trends (`alerts_shared_host`: the four simulated nodes share one host); every firing line of
  alerts.jsonl reached the webhook, once (a post in flight when the daemon was killed may come twice: the
  webhook is at-least-once).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from justrl_hpc.dev.soak.schedule import IN_JOB, LOSSY, Fault
from justrl_hpc.jobs.train.logged_steps import EVENTS_GLOB

PLANNED = ("stopped",)  # trainer-exited reasons of a stop that saved and logged its step (stopped-unlogged is not)
# Alerts a fault explains (rule → the fault kinds that may raise it); anything else is unexpected.
EXPLAINED: dict[str, tuple[str, ...]] = {
    "S7-steps-retrained": LOSSY,
    # The rule counts starts after any stop but the limit's and save-now's: a USR2 preemption (and the soak's
    # own paced signal, which is one to the driver) counts like a crash.
    "S4-restart-storm": (*LOSSY, "usr2-preemption", "paced-limit-signal", "bad-node"),
    "S4-no-progress": (*LOSSY, "bad-node"),  # the chunk whose preflight left the node out trained nothing
    "S5-agent-silent": ("node-lost", "kill9-trainer", "kill9-in-save", "disk-full"),
    "S7-resume-behind": (),
    "S7-step-repeated": IN_JOB,  # a step logged again by the trainer restarted in the same chunk
    "S1-hang-stacks": ("hang",),
    "E2-node-excluded": ("bad-node",),
    "G4-row-remap": ("bad-node",),  # the planted evidence, replayed by that node's agent
    "E1-env-drift": ("driver-upgrade",),
}
DAEMON_KILL_SLACK_S = 15.0


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def tensorboard_steps_all(tb_dir: Path) -> list[int]:
    """Every step verl logged critic/score/mean at, across its event files (duplicates kept)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(tb_dir.glob(EVENTS_GLOB)):
        for event in EventFileLoader(str(path)).Load():
            if any(v.tag == "critic/score/mean" for v in event.summary.value):
                steps.append(int(event.step))
    return steps


def _one_line(a: dict[str, Any]) -> str:
    where = "".join(f" {k}={a[k]}" for k in ("step", "node", "gpu") if a.get(k) is not None)
    return f"[{a['severity']}] {a['run']}: {a['rule']} {a['state']}{where}: {a['message']}"


def _recovery(led: list[dict[str, Any]], fired: list[dict[str, Any]]) -> dict[str, float]:
    """Per fault kind that ends a trainer, the longest time from the fault to the first step of the next trainer
    started after it (restarted in the job or in a later chunk)."""
    from justrl_hpc.core.ledger import parse_time

    out: dict[str, float] = {}
    for f in fired:
        if f["kind"] in ("daemon-restart", "ctld-restart"):
            continue
        start = next((parse_time(e["time"]) for e in led if e["event"] == "trainer-started"
                      and parse_time(e["time"]) > f["time"]), None)
        nxt = [parse_time(e["time"]) for e in led if e["event"] == "step" and start is not None
               and parse_time(e["time"]) > start]
        if nxt:
            out[f["kind"]] = round(max(out.get(f["kind"], 0.0), min(nxt) - f["time"]), 1)
    return dict(sorted(out.items()))


def _exclusions(led: list[dict[str, Any]]) -> tuple[int, int]:
    """Nodes the chunks left out over the run, and the most out at one time (readmissions and expiries let
    them back in)."""
    from justrl_hpc.core.exclusions import active
    from justrl_hpc.core.ledger import parse_time

    ever: set[str] = set()
    most = 0
    for i, e in enumerate(led):
        if e["event"] in ("excluded", "readmitted"):
            if e["event"] == "excluded":
                ever.update(n for n in str(e.get("nodes") or "").split(",") if n)
            most = max(most, len(active(led[: i + 1], parse_time(e["time"]))))
    return len(ever), most


def _hang_stacks(run_dir: Path, led: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Stack folders the hangs left that hold stacks from every node of their chunk, and what is wrong with the rest."""
    good, notes = 0, []
    for e in led:
        if e["event"] != "hang":
            continue
        folder = run_dir / str(e.get("stacks"))
        files = list(folder.glob("*.txt")) if folder.is_dir() else []
        nodes = len(list(folder.glob("index-*.json"))) if folder.is_dir() else 0
        verl = any("ray_trainer.py" in p.read_text(errors="replace") for p in files)
        if files and nodes >= 2 and verl:
            good += 1
        else:
            notes.append(f"hang at step {e.get('step')}: {folder} has {len(files)} stack files from {nodes} "
                         f"nodes{'' if verl else ', none showing verl’s ray_trainer.py'}")
    return good, notes


def judge(run_dir: Path, root: Path, target: int, schedule: list[Fault], chunks_wanted: int) -> dict[str, Any]:
    led = _jsonl(run_dir / "ledger.jsonl")
    notes: list[str] = []
    fired = _jsonl(root / "faults.jsonl")
    kinds = Counter(f["kind"] for f in fired)
    finished = any(e["event"] == "finished" and e.get("step") == target for e in led)
    chunks = sum(1 for e in led if e["event"] == "started")

    # Retrained work, chunk by chunk: a trainer's newest logged step against where the next one resumed.
    starts = [e for e in led if e["event"] == "trainer-started"]
    exits = [e for e in led if e["event"] == "trainer-exited"]
    saved = {e["step"] for e in led if e["event"] == "saved"}
    lost_unexpected = retrained = 0
    for ex in exits:
        nxt = next((s for s in starts if s["time"] > ex["time"]), None)
        if nxt is None or ex.get("step") is None:
            continue
        lost = max(0, ex["step"] - nxt["step"])
        retrained += lost
        allowed = 0 if ex.get("reason") in PLANNED else max(0, ex["step"] - (ex.get("last_saved") or 0))
        if lost > allowed:
            lost_unexpected += lost - allowed
            notes.append(f"job {ex['job_id']} chunk {ex['chunk']} ({ex.get('reason')}): {lost} steps retrained, "
                         f"{allowed} allowed")
    unverified = [s["step"] for s in starts if s["step"] and s["step"] not in saved]
    if unverified:
        notes.append(f"resumed from steps without a verified save: {unverified}")
    tb = tensorboard_steps_all(run_dir / "tensorboard")
    missing = sorted(set(range(1, target + 1)) - set(tb))
    if missing:
        notes.append(f"steps missing from TensorBoard: {missing}")
    dupes = len(tb) - len(set(tb))
    duplicated = max(0, dupes - retrained)
    if duplicated:
        notes.append(f"{dupes} steps logged twice in TensorBoard, {retrained} retrained")
    rep = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "report", str(run_dir), "--json"],
                         capture_output=True, text=True, timeout=120)
    report = json.loads(rep.stdout) if rep.returncode == 0 else {}
    report_lost = sum(c.get("steps_lost", 0) for c in report.get("chunks", []))
    if report_lost != retrained:
        notes.append(f"justrl-hpc report counts {report_lost} steps lost, the ledger {retrained}")

    # Alerts.
    alerts = _jsonl(run_dir / "alerts.jsonl")
    firing = [a for a in alerts if a.get("state") == "firing"]
    retraining_chunks = set()
    for s in starts[1:]:
        before = [e["step"] for e in led if e["event"] == "step" and e["time"] < s["time"]]
        if before and s["step"] < max(before):
            retraining_chunks.add(f"{s['job_id']}:{s['chunk']}")
    have = {a["key"].split(":", 1)[1] for a in firing if a["rule"] == "S7-steps-retrained" and ":" in a["key"]}
    missing_alerts = sorted(retraining_chunks - have)
    if missing_alerts:
        notes.append(f"no S7-steps-retrained alert for the retraining chunks {missing_alerts}")
    unexpected, training, shared_host = [], [], []
    for a in firing:
        if a["rule"].startswith("T") and a["rule"] != "T1-nonfinite":
            training.append(f"{a['rule']} step {a.get('step')}: {a['message']}")
            continue
        if a["rule"] == "G12-memory" and a["key"].endswith(":ram-trend"):
            # The dev cluster's four nodes are one host: each agent reads the RAM all of them use, which rises
            # and falls with every chunk's Ray and verl start-up (a chunk here lasts ~2 minutes, not hours), so
            # the trend rule's line through a saw-tooth is no leak of any one node. Reported, not failed on;
            # the level rule (RAM used above its fraction) still fails.
            shared_host.append(f"{a['key']}: {a['message']}")
            continue
        causes = EXPLAINED.get(a["rule"])
        if causes is None or not any(kinds.get(k) for k in causes):
            unexpected.append(f"{a['rule']} {a['key']}")
    posts = Counter(p["text"] for p in _jsonl(root / "webhook.jsonl"))
    lines = Counter(_one_line(a) for a in alerts)
    undelivered = sorted(t for t in lines if posts[t] < lines[t])
    extra = sorted(t for t in posts if posts[t] > lines.get(t, 0))
    kills = _jsonl(root / "faults.jsonl")
    kill_times = [f["time"] for f in kills if f["kind"] == "daemon-restart"]
    repeats_explained = [t for t in extra if lines.get(t) and kill_times]
    extra = [t for t in extra if t not in repeats_explained]
    if undelivered:
        notes.append(f"alerts.jsonl lines never posted to the webhook: {undelivered[:3]}")
    if extra:
        notes.append(f"webhook posts not in alerts.jsonl (or repeated): {extra[:3]}")
    if unexpected:
        notes.append(f"alerts no fault explains: {unexpected[:5]}")
    for line in training:
        notes.append(f"training-curve alert on the toy task (reported, not a fault's): {line}")
    for line in shared_host:
        notes.append(f"host RAM trend over the dev cluster's one shared host (reported, not a leak): {line}")
    excluded, most_excluded = _exclusions(led)
    hang_stacks, hang_notes = _hang_stacks(run_dir, led)
    notes += hang_notes
    steps_lost_unexpected = lost_unexpected + len(missing) + abs(report_lost - retrained) + len(unverified)
    result = {
        "finished": finished,
        "chunks": chunks,
        "faults": dict(sorted(kinds.items())),
        "faults_skipped": len(schedule) - sum(1 for f in fired if f["kind"] != "paced-limit-signal"),
        "steps_target": target,
        "steps_retrained": retrained,
        "steps_lost_unexpected": steps_lost_unexpected,
        "steps_duplicated": duplicated,
        "alerts_missing": len(missing_alerts) + len(undelivered),
        "alerts_unexpected": len(unexpected) + len(extra),
        "alerts": dict(Counter(a["rule"] for a in firing)),
        "alerts_training": len(training),
        "alerts_shared_host": len(shared_host),
        "goodput": report.get("goodput"),
        "recovery_s": _recovery(led, fired),
        "in_job_restarts": sum(1 for e in led if e["event"] == "restarted-in-job"),
        "nodes_excluded": excluded,
        "max_nodes_excluded_at_once": most_excluded,
        "hang_stacks": hang_stacks,
    }
    if chunks < chunks_wanted:
        notes.append(f"{chunks} chunks, fewer than the {chunks_wanted} asked for")
    if most_excluded > 1:
        notes.append(f"{most_excluded} nodes out at once; a 2-node job may leave out one")
    result["passed"] = bool(finished and chunks >= chunks_wanted and not (
        steps_lost_unexpected or duplicated or result["alerts_missing"] or result["alerts_unexpected"]
        or hang_notes or most_excluded > 1))
    result["notes"] = notes
    return result
