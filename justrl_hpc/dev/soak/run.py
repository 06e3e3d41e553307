"""`python -m justrl_hpc.dev.soak [--seed S] [--chunks C]`: the chaos soak's runner (scripts/soak.sh).

It prepares the toy data, brings the dev cluster up, creates a rehearsal run whose checkpoints live on their
own small tmpfs (so "disk full" is a real ENOSPC that touches nothing else), starts the monitor daemon with
its webhook pointed at a local HTTP server, launches, and while the run goes on fires the seeded schedule's
faults at the chunks they name. At the end verdict.py judges the run from its folder; the last stdout line is
the verdict as one JSON object, and the exit status is 0 only when it passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from justrl_hpc.dev.soak import schedule as sched
from justrl_hpc.dev.soak.inject import INJECT, Target, Undo

REPO = Path(__file__).resolve().parents[3]
# Recorded A800 telemetry (labelled as such in tests/data), one copy per dev node: the node agents and the
# preflight read it through the replay backend, and the bad-node fault plants its evidence in one copy.
NVML_RECORDING = REPO / "tests" / "data" / "nvml_a800_8gpu.jsonl"
# Its inventory (driver 535, CUDA 12.2, the eight GPUs) from the same node's driver-535 recording: what each
# preflight records as the node's driver, and what the driver-upgrade fault changes.
NVML_INVENTORY = REPO / "tests" / "data" / "nvml_a800_8gpu_driver535.jsonl"
HEALTHY_READINGS = 48  # 12 minutes at the recording's 15 s (tests/monitor/test_monitor_gpu_rules.py HEALTHY)
VIOLATION_COUNTERS = ("DCGM_FI_DEV_POWER_VIOLATION", "DCGM_FI_DEV_THERMAL_VIOLATION")
HANG_MIN_S = 30  # the rehearsal's steps take seconds: 30 s without one is a hang here (run.hang_min_s)
STEPS_PER_CHUNK = 5  # the target step is chunks × this: faults make chunks short, so the run needs ≥ C of them
TMPFS_MB = 64
DAEMON_INTERVAL_S = 5.0


def say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} soak: {msg}", flush=True)


class Webhook:
    """A Slack-style incoming webhook on 127.0.0.1: every POST body's text, with its arrival time, in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lock = threading.Lock()
        sink = path

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    text = json.loads(body).get("text")
                except ValueError:
                    text = body.decode(errors="replace")
                with lock, open(sink, "a") as fh:
                    fh.write(json.dumps({"time": time.time(), "text": text}) + "\n")
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


class Daemon:
    """The monitor daemon on the run, restartable (the daemon-restart fault kills it with -9)."""

    def __init__(self, run_dir: Path, env: dict[str, str], rules: Path) -> None:
        self.run_dir, self.env, self.rules = run_dir, env, rules
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills: list[float] = []

    def start(self) -> int:
        log_path = self.run_dir / "logs" / "monitor.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "justrl_hpc.monitor.cli", "daemon", str(self.run_dir), "--interval",
               str(DAEMON_INTERVAL_S), "--until-ended", "--config", str(self.rules)]
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=self.env)
        return self.proc.pid

    def restart(self) -> int:
        assert self.proc is not None
        self.kills.append(time.time())
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        time.sleep(3)
        return self.start()

    def stop(self, grace_s: float = 60) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)


def write_rules(path: Path) -> Path:
    """monitor/rules.yaml with the run folder's free-space thresholds (H2) at this machine's scale: they are
    set for a 1.5B model's ~20 GB checkpoints (warn under 100 GiB free); the rehearsal's are 2 MB, and this
    machine's disk holds less than 100 GiB free. Every other rule is as shipped."""
    from justrl_hpc.monitor.settings import DEFAULT_RULES

    text = DEFAULT_RULES.read_text()
    for key, value in (("disk_free_warn_gib", "1"), ("disk_free_critical_gib", "0.25")):
        lines = [f"  {key}: {value}" if line.strip().startswith(f"{key}:") else line for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    path.write_text(text)
    return path


def write_recordings(folder: Path, nodes: tuple[str, ...] = ("n1", "n2", "n3", "n4")) -> Path:
    """One replayed NVML recording per dev node (the run's cluster.nvml_backend reads `nvml-{node}.jsonl`)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = NVML_RECORDING.read_text().splitlines()
    header = {**json.loads(lines[0]),
              "inventory": json.loads(NVML_INVENTORY.read_text().splitlines()[0])["inventory"]}
    # The soak's nodes are healthy ones: the recording's first 12 minutes (after them a GPU runs hot and another
    # logs XID 79: cases for the rule tests; a chunk here restarts its agent's replay well within them), with
    # the violation counters kept at their first values (GPU 6 throttles on power: seed 2 raised G8 from it).
    readings = [json.loads(line) for line in lines[1:HEALTHY_READINGS + 1]]
    for reading in readings[1:]:
        for gpu in reading["gpus"]:
            for key in VIOLATION_COUNTERS:
                gpu.pop(key, None)
    body = [json.dumps(r) for r in readings]
    for node in nodes:
        (folder / f"nvml-{node}.jsonl").write_text("\n".join([json.dumps(header), *body]) + "\n")
    return folder


def _ledger(run_dir: Path) -> list[dict[str, Any]]:
    try:
        lines = (run_dir / "ledger.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out


def _launch(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "justrl_hpc.launch", *args], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)


def _job_gone(job_id: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        if not out.stdout.strip():
            return
        time.sleep(1)



def undo_due(kind: str, chunk: int, led: list[dict[str, Any]]) -> bool:
    """When a fault's damage is repaired. A full disk: once that chunk ended, however it ended (seed 2, 2026-12-07:
    a requeue whose trainer-exited was never written kept the disk full for the rest of the run), or a later chunk
    started. A lost node comes back once a later chunk has started (on the nodes left); an armed save-kill that
    did not fire is disarmed at the chunk's end; a bad node is repaired once the chunks left it out (or two later
    chunks never met it)."""
    later = any(e["event"] == "started" and (e.get("chunk") or 0) > chunk for e in led)
    if kind == "bad-node":
        return any(e["event"] == "excluded" and (e.get("chunk") or 0) > chunk for e in led) or any(
            e["event"] == "started" and (e.get("chunk") or 0) > chunk + 2 for e in led)
    if kind == "node-lost":
        return later
    return later or any(e["event"] in ("trainer-exited", "chunk-failed", "requeued", "failed")
                        and e.get("chunk") == chunk for e in led)

class Soak:
    def __init__(self, seed: int, chunks: int, time_limit: int, root: Path) -> None:
        self.seed, self.chunks, self.time_limit = seed, chunks, time_limit
        self.root = root
        self.run_dir = root / "run"
        self.faults = sched.draw(seed, chunks)
        self.by_chunk = {f.chunk: f for f in self.faults}
        self.injected: list[dict[str, Any]] = []
        self.undo: list[tuple[str, int, Undo]] = []  # (kind, chunk it hit, undo)
        self.paced: set[int] = set()
        self.fired_chunks: dict[int, float] = {}  # chunk → when its fault fired
        self.fired_wall: dict[int, float] = {}
        # A stop saves at the next step or two, and a chunk's steps arrive in bursts: seed 2 cut at 3 steps
        # had 5–7 per chunk and 7 chunks for 40 steps.
        self.pace_steps = max(1, STEPS_PER_CHUNK - 3)

    def prepare(self, data: Path) -> dict[str, str]:
        from justrl_hpc.dev.devcluster import cluster as dc
        from justrl_hpc.dev.toy.prepare import prepare

        self.status = dc.up()
        if not (data / "model" / "config.json").is_file():
            prepare(data)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "schedule.json").write_text(sched.dumps(self.faults))
        say(f"seed {self.seed}: {len(self.faults)} faults over {self.chunks} chunks (schedule in "
            f"{self.root / 'schedule.json'})")
        for f in self.faults:
            say(f"  chunk {f.chunk:>2}: {f.kind} at {f.moment} + {f.delay_s:g} s")
        self.webhook = Webhook(self.root / "webhook.jsonl")
        env = dict(os.environ, JUSTRL_ALERT_WEBHOOK_URL=self.webhook.url, JUSTRL_SOAK="1",
                   VERL_USE_EXTERNAL_MODULES="justrl_hpc.dev.soak.save_fault", SLURM_CONF=str(self.status.conf))
        target = self.chunks * STEPS_PER_CHUNK
        self.nvml = write_recordings(self.root / "nvml")
        sets = [f"cluster.nvml_backend=replay:{self.nvml}/nvml-{{node}}.jsonl", f"run.hang_min_s={HANG_MIN_S}",
                f"recipe.model_path={(data / 'model').resolve()}",
                f"recipe.train_files=[{(data / 'train.parquet').resolve()}]",
                f"recipe.val_files=[{(data / 'val.parquet').resolve()}]",
                f"recipe.total_training_steps={target}", "cluster.min_free_disk_gb=0"]
        args = ["--recipe", "rehearsal", "--cluster", "dev", "--nodes", "2", "--name", f"soak-{self.seed}",
                "--run-dir", str(self.run_dir), "--time-limit", str(self.time_limit), "--create-only"]
        for s in sets:
            args += ["--set", s]
        out = subprocess.run([sys.executable, "-m", "justrl_hpc.launch", *args], capture_output=True, text=True,
                             env=env, timeout=180)
        if out.returncode:
            raise SystemExit(f"error: soak: the run was not created: {out.stderr.strip()}")
        ckpt = self.run_dir / "checkpoints"
        ckpt.mkdir(exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(ckpt)], check=True)
        self.target = target
        return env

    def _target(self, started: dict[str, Any], trainer_pid: int | None) -> Target:
        return Target(self.run_dir, str(started["job_id"]), str(started.get("hosts", "")).split(","), trainer_pid,
                      self.status.scratch, self.daemon.restart, self.run_dir / "checkpoints" / ".soak-filler",
                      self.nvml)

    def _fire(self, fault: sched.Fault, started: dict[str, Any], trainer_pid: int | None) -> None:
        what, undo = INJECT[fault.kind](self._target(started, trainer_pid))
        self.fired_chunks.setdefault(fault.chunk, time.monotonic())
        self.fired_wall.setdefault(fault.chunk, time.time())
        record = {"time": time.time(), "chunk": fault.chunk, "job_id": str(started["job_id"]), "kind": fault.kind,
                  "moment": fault.moment, "what": what}
        self.injected.append(record)
        with open(self.root / "faults.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        say(f"chunk {fault.chunk} job {started['job_id']}: {fault.kind}: {what}")
        if undo is not None:
            self.undo.append((fault.kind, fault.chunk, undo))

    def _undo_due(self, led: list[dict[str, Any]]) -> None:
        keep = []
        for kind, chunk, undo in self.undo:
            if undo_due(kind, chunk, led):
                undo()
                say(f"chunk {chunk}: {kind} undone")
            else:
                keep.append((kind, chunk, undo))
        self.undo = keep

    def _pace(self, cur: dict[str, Any], led: list[dict[str, Any]]) -> None:
        """Cut a chunk that has trained its share of steps with the pre-limit signal itself (USR2, what
        Slurm's `--signal=USR2@lead` sends): the run then has about C chunks on a machine of any speed, where
        a fixed wall clock would give a fast machine too few. A chunk whose own fault is still to come is
        left to it."""
        c = cur.get("chunk")
        if c in self.paced:
            return
        fault = self.by_chunk.get(c)
        if fault is not None and (c not in self.fired_chunks
                                  or time.monotonic() - self.fired_chunks[c] < sched.pace_wait_s(fault.kind)):
            return  # its fault first, and time for the fault to show in the ledger before the pace may follow
        mine = [e for e in led if e.get("chunk") == c and e.get("job_id") == cur["job_id"]]
        if any(e["event"] in ("stop-requested", "finished", "failed") for e in mine):
            return
        # Steps of the chunk's newest trainer: after an in-job restart the chunk is paced again from there, and
        # a fault that restarts in the job (a crash, a hang) is left to do so before the pace may cut the chunk.
        from justrl_hpc.core.ledger import parse_time

        starts = [i for i, e in enumerate(mine) if e["event"] == "trainer-started"]
        newest = starts[-1] if starts else 0
        if fault is not None and fault.kind in sched.IN_JOB and (
                not starts or parse_time(mine[newest]["time"]) < self.fired_wall.get(c, 0.0)):
            return
        if any(e["event"] == "trainer-exited" for e in mine[newest:]):
            return
        if sum(1 for e in mine[newest:] if e["event"] == "step") >= self.pace_steps:
            self.paced.add(c)
            self._fire(sched.Fault(c, "paced-limit-signal", "train", 0.0), cur, None)

    def _carry_over(self, current: int, done: set[int]) -> None:
        """A fault whose chunk went by between two looks (the chunk that leaves a bad node out ends within a
        second) moves to the current chunk, or the next one that has no fault of its own: every kind still fires."""
        for chunk, fault in sorted(self.by_chunk.items()):
            if chunk >= current or chunk in done or chunk in self.fired_chunks:
                continue
            done.add(chunk)
            target = sched.next_free(self.by_chunk, current - 1, self.chunks)
            if target is None:
                say(f"chunk {chunk}: ended before its {fault.kind} fired (skipped)")
                continue
            self.by_chunk[target] = sched.Fault(target, fault.kind, fault.moment, fault.delay_s)
            say(f"chunk {chunk}: ended before its {fault.kind} fired; moved to chunk {target}")

    def _move_on(self, chunk: int, fault: sched.Fault) -> None:
        """A chunk that ended before its fault fired (seed 3: the chunk that left the bad node out) hands the
        fault to the next chunk that has none of its own."""
        nxt = sched.next_free(self.by_chunk, chunk, self.chunks)
        if nxt is None:
            say(f"chunk {chunk}: ended before its {fault.kind} fired (skipped)")
            return
        self.by_chunk[nxt] = sched.Fault(nxt, fault.kind, fault.moment, fault.delay_s)
        say(f"chunk {chunk}: ended before its {fault.kind} fired; moved to chunk {nxt}")

    def watch(self, env: dict[str, str], deadline_s: float) -> None:
        log = self.root / "launch.log"
        self.daemon = Daemon(self.run_dir, env, write_rules(self.root / "rules.yaml"))
        say(f"daemon pid {self.daemon.start()}, webhook {self.webhook.url}")
        launch = _launch(["--resume", str(self.run_dir), "--wait"], env, log)
        done: set[int] = set()
        armed: dict[int, float] = {}  # chunk → when its fault fires
        t_end = time.monotonic() + deadline_s
        while time.monotonic() < t_end:
            led = _ledger(self.run_dir)
            self._undo_due(led)
            if any(e["event"] in ("finished", "failed") for e in led) and launch.poll() is not None:
                break
            starts = [e for e in led if e["event"] == "started"]
            if starts:
                cur = starts[-1]
                c = cur.get("chunk")
                self._carry_over(c, done)
                fault = self.by_chunk.get(c)
                if fault is not None and c not in done:
                    mine = [e for e in led if e.get("chunk") == c and e.get("job_id") == cur["job_id"]]
                    trainer = next((e for e in mine if e["event"] == "trainer-started"), None)
                    ended = any(e["event"] in ("trainer-exited", "chunk-failed", "finished", "failed") for e in mine)
                    steps = sum(1 for e in mine if e["event"] == "step")
                    stepped = steps > 0
                    if ended:
                        done.add(c)
                        self._move_on(c, fault)
                    elif c not in armed and (fault.moment == "start" or stepped):
                        armed[c] = time.monotonic() + fault.delay_s
                    elif c in armed and (time.monotonic() >= armed[c] or steps >= self.pace_steps):
                        # Or once the chunk trained its share: on a fast machine (1–2 s steps) an 18 s delay
                        # let a chunk train 18 steps, and 80 steps took 10 chunks for 16 asked.
                        done.add(c)
                        self._fire(fault, cur, trainer.get("pid") if trainer else None)
            if starts:
                self._pace(starts[-1], led)
            if launch.poll() is not None and not any(e["event"] in ("finished", "failed") for e in led):
                # The chain has no job left: after a SIGTERM-only preemption that is Slurm's answer (a SIGTERM
                # may be a cancel), and the one command a person runs continues it.
                last = starts[-1] if starts else None
                if last is not None:
                    subprocess.run(["scancel", str(last["job_id"])], capture_output=True)
                    _job_gone(str(last["job_id"]))
                say(f"the chain stopped (launch exit {launch.returncode}); launch --resume")
                self.resumes = getattr(self, "resumes", 0) + 1
                launch = _launch(["--resume", str(self.run_dir), "--wait"], env, log)
            time.sleep(0.5)
        if launch.poll() is None:
            launch.kill()
        for _kind, _chunk, undo in self.undo:
            undo()
        self.daemon.stop()
        self.webhook.close()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.run_dir / "checkpoints")], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/soak.sh", description="the chaos soak on the dev cluster")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chunks", type=int, default=16, help="at least this many chunks (default 16)")
    # Chunks are cut by the pace (their share of steps), not by this; it leaves a crashed or hung trainer
    # time for a restart in the job (a start-up and a step before the limit's signal).
    p.add_argument("--time-limit", type=int, default=6, metavar="MINUTES", help="wall clock per chunk")
    p.add_argument("--out", default=None, help="where the soak's run and records go (default soak/seed-S-<time>)")
    p.add_argument("--data", default="data/rehearsal")
    args = p.parse_args(argv)
    if args.chunks < 2:
        print("error: --chunks: at least 2 (the last chunk is left to finish); give --chunks 2 or more",
              file=sys.stderr)
        return 2
    from justrl_hpc.dev.soak import verdict

    root = Path(args.out or f"soak/seed-{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    t0 = time.time()
    soak = Soak(args.seed, args.chunks, args.time_limit, root)
    env = soak.prepare(Path(args.data))
    try:
        soak.watch(env, deadline_s=args.chunks * args.time_limit * 60 * 3 + 900)
        result = verdict.judge(soak.run_dir, root, soak.target, soak.faults, args.chunks)
    finally:
        soak.unmount()
    result["seed"] = args.seed
    # A `launch --resume` the soak had to run is a broken chain unless a SIGTERM-only preemption asked for it.
    by_hand = getattr(soak, "resumes", 0)
    result["chain_breaks"] = max(0, by_hand - result["faults"].get("sigterm-preemption", 0))
    result["passed"] = result["passed"] and result["chain_breaks"] == 0
    if result["chain_breaks"]:
        result["notes"].append(f"the chain broke {result['chain_breaks']} time(s): see {root / 'launch.log'}")
    result["seconds"] = round(time.time() - t0)
    (root / "verdict.json").write_text(json.dumps(result, indent=1))
    for line in result.pop("notes", []):
        say(line)
    print(json.dumps(result), flush=True)
    return 0 if result["passed"] else 1
