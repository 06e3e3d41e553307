"""Helpers shared by several test files (not tests themselves): launching a rehearsal on the dev cluster and
reading its run folder, waiting for a condition, the local HTTP server's script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def launch_args(data: Path, run_dir: Path, *extra: str, steps: int = 24, time_limit: int = 5) -> list[str]:
    """A rehearsal launch on the dev cluster. 5-minute chunks unless said otherwise: a test that is not about
    the limit should not cross one (on a slow machine a 2-minute chunk may end before its first step)."""
    files = [f"recipe.model_path={data / 'model'}", f"recipe.train_files=[{data / 'train.parquet'}]",
             f"recipe.val_files=[{data / 'val.parquet'}]", f"recipe.total_training_steps={steps}"]
    sets = [arg for item in files for arg in ("--set", item)]
    return [sys.executable, "-m", "justrl_hpc.launch", "--recipe", "rehearsal", "--cluster", "dev", "--nodes", "2",
            "--name", run_dir.name, "--run-dir", str(run_dir), "--time-limit", str(time_limit), *sets, *extra]


def run_launch(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def ledger(run_dir: Path) -> list[dict]:
    path = run_dir / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events(run_dir: Path, name: str) -> list[dict]:
    return [e for e in ledger(run_dir) if e["event"] == name]


def tb_steps(run_dir: Path, tag: str = "critic/score/mean") -> list[int]:
    """Every step at which a tag was logged, across all event files of the run (duplicates kept)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        if "monitor" in path.parts or "eval" in path.parts:
            continue
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    steps.append(event.step)
    return steps


def wait_for_event(run_dir: Path, name: str, timeout: float, **match: object) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "ledger.jsonl").exists():
            for e in ledger(run_dir):
                if e["event"] == name and all(e.get(k) == v for k, v in match.items()):
                    return e
        time.sleep(0.5)
    raise AssertionError(f"no {name} {match} in {timeout} s; ledger: {[e['event'] for e in ledger(run_dir)]}")


def assert_each_step_once(run_dir: Path, target: int) -> None:
    steps = tb_steps(run_dir)
    assert sorted(steps) == list(range(1, target + 1)), f"steps logged: {sorted(steps)}"


def final_state(job_id: str, timeout: float) -> str | None:
    """The state a job ends in, watched until it ends: the dev cluster forgets an ended job after MinJobAge
    (60 s), so reading it once much later finds nothing (CI, 2026-12-07, on a slower machine)."""
    from justrl_hpc.core import slurm

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        st = slurm.job_state(job_id)
        if st is None:
            return last
        last = st.state
        if not st.active:
            return last
        time.sleep(1)
    return last


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition", poll_s: float = 0.05) -> Any:
    """The predicate's first truthy value (an event found, a flag), polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        time.sleep(poll_s)
    return got


class Hook:
    """What the local server answers: a script of statuses, optionally blocking until released."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[tuple[str, str, bytes]] = []
        self.block = threading.Event()
        self.blocking = False
        self.entered = threading.Event()


def wandb_offline_runs(run_dir: Path) -> list[tuple[str, list[int]]]:
    """(run id, history steps) of each offline W&B run directory under run_dir/wandb, oldest first, read from
    the `.wandb` file the real library wrote (its records are W&B's protobufs in LevelDB's log framing:
    a 7-byte ':W&B' header, 32 KiB blocks, each record a 7-byte header of crc, length and type)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    def records(data: bytes):
        assert data[:4] == b":W&B", data[:7]
        pos, buf = 7, b""
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:
                pos += 32768 - pos % 32768
                continue
            _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if n == 0 and kind == 0:
                break
            chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
            if kind == 1:
                yield chunk
            elif kind == 2:
                buf = chunk
            elif kind == 3:
                buf += chunk
            elif kind == 4:
                yield buf + chunk

    out = []
    for d in sorted((run_dir / "wandb").glob("offline-run-*")):
        run_id, steps = "", []
        for f in d.glob("*.wandb"):
            for raw in records(f.read_bytes()):
                rec = pb.Record()
                rec.ParseFromString(raw)
                kind = rec.WhichOneof("record_type")
                if kind == "run":
                    run_id = rec.run.run_id
                elif kind == "history":
                    steps.append(rec.history.step.num)
        out.append((run_id, steps))
    return out


def assert_one_wandb_run(run_dir: Path, run_id: str, target: int, min_chunks: int) -> None:
    """One W&B run across the chunks: one offline directory per chunk, one id, every step 1..target in it, the
    last ones before each stop included (the chunk asks verl's logging actor to end its W&B run before it
    stops the trainer). Step 0 is the first chunk's validation. A step logged after the last save is trained
    again by the next chunk: only there may a step come twice (W&B's sync keeps the first; TensorBoard
    replaces it)."""
    tracked = wandb_offline_runs(run_dir)
    starts = events(run_dir, "trainer-started")
    assert len(tracked) == len(starts) >= min_chunks, tracked
    assert {rid for rid, _ in tracked} == {run_id}, tracked
    assert {s for _, steps in tracked for s in steps} >= set(range(1, target + 1)), tracked
    for (_, before), (_, after) in zip(tracked, tracked[1:], strict=False):
        assert before == sorted(set(before)) and after[0] >= before[-1] - 2, (before, after)


def stop_each_chunk_after(run_dir: Path, proc: subprocess.Popen, steps: int, ways: list[str], timeout: float) -> str:
    """Stop the n-th chunk in the n-th way once it has trained `steps` steps: "signal" is the pre-limit USR2
    (what Slurm's --signal delivers at the limit), "save-now" the CLI. Returns the launcher's output. With a
    wall-clock limit the number of chunks hung on the machine's speed: CI's slow machine got 2-minute chunks
    with no step in them at all."""
    stopped: list[int] = []
    env = dict(os.environ, PYTHONPATH=str(REPO))
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        led = ledger(run_dir) if (run_dir / "ledger.jsonl").exists() else []
        starts = [i for i, e in enumerate(led) if e["event"] == "trainer-started"]
        if starts and len(stopped) < len(ways):
            since = led[starts[-1]:]
            chunk = since[0]["chunk"]
            trained = sum(1 for e in since if e["event"] == "step")
            stopping = any(e["event"] in ("stop-requested", "trainer-exited", "finished") for e in since)
            if chunk not in stopped and trained >= steps and not stopping:
                if ways[len(stopped)] == "signal":
                    job = str(events(run_dir, "submitted")[0]["job_id"])
                    subprocess.run(["scancel", "--signal=USR2", job], check=True)
                else:
                    said = subprocess.run([sys.executable, "-m", "justrl_hpc.cli", "save-now", str(run_dir)],
                                          capture_output=True, text=True, timeout=60, env=env)
                    assert said.returncode == 0, said.stderr
                stopped.append(chunk)
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
    return out
