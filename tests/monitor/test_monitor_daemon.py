"""The monitoring daemon against real files and real processes: `justrl-monitor scan` and `daemon` as
subprocesses over telemetry written like the node agent writes it and TensorBoard events written with
tensorboard's own writer; kill -9 and restart; two daemons on one folder; a real webhook on 127.0.0.1;
the heartbeat the dashboard reads; the monitor's scalars read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

import ast
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers import Hook, wait_for

from justrl_hpc.monitor import settings as monitor_settings
from justrl_hpc.monitor.agent.sampler import samples_from_recording
from justrl_hpc.monitor.daemon.cycle import RunMonitor
from justrl_hpc.monitor.daemon.sinks import JsonlSink
from justrl_hpc.monitor.daemon.store import AlertBook, BookSettings, MonitorStore
from justrl_hpc.monitor.dashboard.sources import monitor_status
from justrl_hpc.monitor.findings import Finding

REPO = Path(__file__).resolve().parents[2]
RECORDING = Path(__file__).resolve().parents[1] / "data" / "nvml_a800_8gpu.jsonl"
HEALTHY = 48  # the recording's healthy part (see test_monitor_gpu_rules.py)
GIB = 1 << 30

# Fast cycles; no cool-down so a condition that ends resolves at the next evaluation; agents never "silent"
# within a test.
CONFIG = """
daemon:
  interval_s: 0.3
  cooldown_s: 0
  slurm_every_s: 3600
gpu:
  silent_min_s: 3600
"""


# -- helpers ---------------------------------------------------------------------------------------------------


def host_stats() -> dict[str, Any]:
    return {
        "cpu_percent": 12.0,
        "ram_total_bytes": 2048 * GIB,
        "ram_used_bytes": 310 * GIB,
        "ram_available_bytes": 1738 * GIB,
        "shm_total_bytes": 1024 * GIB,
        "shm_used_bytes": 60 * GIB,
        "shm_free_bytes": 964 * GIB,
        "run_dir_total_bytes": 100 * 1024 * GIB,
        "run_dir_used_bytes": 60 * 1024 * GIB,
        "run_dir_free_bytes": 40 * 1024 * GIB,
    }


def healthy_samples(host: str, n: int = 12, end: float | None = None) -> list[dict[str, Any]]:
    end = time.time() if end is None else end
    out = samples_from_recording(
        RECORDING, host=host, start=end - n, interval=1.0, limit=min(n, HEALTHY), host_stats=host_stats()
    )
    return out


def append(run: Path, host: str, samples: list[dict[str, Any]]) -> None:
    (run / "telemetry").mkdir(parents=True, exist_ok=True)
    with open(run / "telemetry" / f"{host}.jsonl", "a") as fh:
        for s in samples:
            fh.write(json.dumps(s) + "\n")


def plant_xid(run: Path, host: str, gpu: int, xid: int) -> None:
    """One more sample from `host`, now, carrying an XID event on `gpu`."""
    (s,) = healthy_samples(host, n=1)
    s["xid_events"] = [{"time": s["time"], "gpu": gpu, "xid": xid, "event_type": 8}]
    append(run, host, [s])


def make_run(tmp_path: Path, name: str = "run-a") -> tuple[Path, Path]:
    run = tmp_path / name
    run.mkdir()
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(CONFIG)
    return run, cfg


def env_with(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUSTRL_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "justrl_hpc.monitor.cli", *args],
        capture_output=True,
        text=True,
        env=env or env_with(),
        timeout=timeout,
    )


def start_daemon(run: Path, cfg: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    fh = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "justrl_hpc.monitor.cli", "daemon", str(run), "--config", str(cfg)],
        env=env,
        stdout=fh,
        stderr=fh,
    )


def jsonl(run: Path) -> list[dict[str, Any]]:
    path = run / "alerts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def outbox_size(run: Path) -> int:
    import sqlite3

    db = sqlite3.connect(f"file:{run / 'monitor.db'}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    finally:
        db.close()


def xid_keys(rows: list[dict[str, Any]]) -> list[str]:
    return [r["key"] for r in rows if r["rule"] == "G1-xid" and r["state"] == "firing"]


# -- scan --------------------------------------------------------------------------------------------------------


def test_scan_prints_each_planted_gpu_alert_once_and_healthy_prints_none(tmp_path: Path) -> None:
    run, cfg = make_run(tmp_path)
    append(run, "gpu-n1", healthy_samples("gpu-n1"))
    append(run, "gpu-n2", healthy_samples("gpu-n2"))
    out = cli("scan", str(run), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "", "a healthy trace raised alerts"

    plant_xid(run, "gpu-n2", 3, 79)
    out = cli("scan", str(run), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    a = json.loads(line)
    assert {k: a[k] for k in ("rule", "severity", "metric", "value", "node", "gpu", "state")} == {
        "rule": "G1-xid",
        "severity": "critical",
        "metric": "xid",
        "value": 79,
        "node": "gpu-n2",
        "gpu": 3,
        "state": "firing",
    }
    assert "step" in a and "XID 79" in a["message"] and a["alert_id"]
    assert "run run-a" in out.stderr or "run-a:" in out.stderr, "log lines name the run"

    # The next scan sees nothing new: the alert is still firing and is not sent again.
    out = cli("scan", str(run), "--config", str(cfg))
    assert out.returncode == 0 and out.stdout == "", out.stdout
    assert xid_keys(jsonl(run)) == ["G1-xid:gpu-n2:3:79"]


def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path: Path) -> None:
    run, cfg = make_run(tmp_path)
    append(run, "gpu-n1", healthy_samples("gpu-n1", n=2))
    cases = [
        (("scan",), "error: "),
        (("scan", str(tmp_path / "missing")), "error: RUN: "),
        (("scan", str(run), "--config", str(tmp_path / "nope.yaml")), "error: --config: "),
        (("daemon", str(run), "--interval", "0"), "error: --interval: "),
        (("scan", str(run), "--max-response-length", "-5"), "error: --max-response-length: "),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("daemon:\n  interval_s: fast\n")
    cases.append((("scan", str(run), "--config", str(bad)), "error: daemon.interval_s: must be a number"))
    bad2 = tmp_path / "bad2.yaml"
    bad2.write_text("daemon:\n  cooldown: 5\n")
    cases.append((("scan", str(run), "--config", str(bad2)), "error: daemon.cooldown: unknown setting"))
    bad3 = tmp_path / "bad3.yaml"
    bad3.write_text("gpu:\n  silent_intervals: x\n")
    cases.append(
        (("scan", str(run), "--config", str(bad3)), "error: gpu.silent_intervals: must be a number, got 'x'")
    )
    for args, prefix in cases:
        out = cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(prefix), (args, out.stderr)
    env = env_with(JUSTRL_ALERT_WEBHOOK_URL="ftp://x")
    out = cli("scan", str(run), env=env)
    assert out.returncode == 2 and out.stderr.strip() == (
        "error: JUSTRL_ALERT_WEBHOOK_URL: must start with http:// or https://"
    )
    assert sorted(p.name for p in run.iterdir()) == ["telemetry"], "bad input wrote to the run folder"


def test_help_is_fast_and_lazy() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); from justrl_hpc.monitor import cli\n"
        "try:\n    cli.main(['daemon', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('tensorboard', 'torch', 'rich', 'sqlite3') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_with())
    assert out.returncode == 0, out.stderr
    assert "justrl-monitor daemon" in out.stdout and out.stdout.strip().endswith("[]"), out.stdout


# -- the store and the book ------------------------------------------------------------------------------------


def finding(key: str, value: float = 1.0, severity: str = "warn") -> Finding:
    return Finding("T-test", severity, key, "m", value, 0.5, f"{key} is {value}")  # type: ignore[arg-type]


def test_book_fires_once_refires_resolves_and_survives_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "monitor.db"
    st = BookSettings(refire_s=100.0, cooldown_s=10.0)
    store = MonitorStore(db)
    book = AlertBook("r", st, store.open_alerts())
    seq: list[tuple[str, str]] = []

    def feed(at: float, keys: list[str], scope: str = "train") -> None:
        for a in book.update(scope, [finding(k) for k in keys], at):
            seq.append((a.key, a.state))

    feed(0, ["a"])
    feed(50, ["a"])  # still holding: nothing
    feed(60, ["a", "b"])
    store.commit({"cursor": 7}, book, ["jsonl"])
    store.close()

    store = MonitorStore(db)  # a restart: the open alerts and the cursor come back
    assert store.get("cursor") == 7 and set(store.open_alerts()) == {"a", "b"}
    book = AlertBook("r", st, store.open_alerts())
    feed(100, ["a", "b"])  # a: 100 s since it fired → re-fire
    feed(105, ["b"])  # a absent: cool-down starts, no resolve yet
    feed(108, ["a", "b"])  # back within the cool-down: no flap, no new alert
    feed(109, ["b"])
    feed(119, ["b"])  # a absent for 10 s → resolved
    feed(120, [], scope="gpu")  # another scope never resolves training keys
    feed(200, [])  # b resolves (absent since 200, cool-down 10 → not yet)
    feed(210, [])
    assert seq == [
        ("a", "firing"),
        ("b", "firing"),
        ("a", "firing"),
        ("a", "resolved"),
        ("b", "resolved"),
    ]
    alerts = store.commit({"cursor": 9}, book, ["jsonl", "webhook"])
    assert len(alerts) == 3 and len({a.alert_id for a in alerts}) == 3
    assert len(store.pending()) == 5, "2 + 3 transitions waiting for their sinks"
    hist = store.history()
    assert [(h["key"], h["state"]) for h in hist] == seq
    assert store.open_alerts() == {} and book.firing_counts() == {"info": 0, "warn": 0, "critical": 0}
    store.close()


def test_redelivery_after_a_crash_between_commit_and_delivery(
    tmp_path: Path,
    http: tuple[str, Hook],  # noqa: F811
) -> None:
    """Transitions committed, then the daemon dies: one alert already appended to alerts.jsonl, none sent
    to the webhook. The next daemon appends only the missing line and posts all of them, once."""
    url, hook = http
    run, cfg = make_run(tmp_path)
    append(run, "gpu-n1", healthy_samples("gpu-n1", n=4))
    plant_xid(run, "gpu-n1", 1, 48)
    plant_xid(run, "gpu-n1", 2, 79)
    config = monitor_settings.load(cfg)
    env = env_with(JUSTRL_ALERT_WEBHOOK_URL=url + "/hook")
    m = RunMonitor(run, config, env=env, write_scalars=False)
    assert m.start()
    # The crash point: the cycle commits, then the process dies before any sink is handed an alert.
    m.dispatcher.close()
    m.dispatcher.dispatch = lambda alert: None
    report = m.cycle()
    assert sorted(a.key for a in report.alerts) == ["G1-xid:gpu-n1:1:48", "G1-xid:gpu-n1:2:79"]
    JsonlSink(run).send(report.alerts[0])  # …the first one reached alerts.jsonl just before the end
    m.dispatcher = None
    m.close()
    assert hook.requests == []

    m2 = RunMonitor(run, config, env=env, write_scalars=False)
    assert m2.start()
    assert m2.dispatcher.flush(20)
    m2.cycle()  # nothing new: no alert raised again
    assert m2.dispatcher.flush(20)
    assert m2.store is not None and m2.store.pending() == []
    m2.close()
    assert sorted(xid_keys(jsonl(run))) == ["G1-xid:gpu-n1:1:48", "G1-xid:gpu-n1:2:79"]
    assert len([r for r in hook.requests if r[1] == "/hook"]) == 2


# -- kill -9, restart, two daemons ---------------------------------------------------------------------------


def test_kill9_at_random_points_then_restart_neither_repeats_nor_misses(
    tmp_path: Path,
    http: tuple[str, Hook],  # noqa: F811
) -> None:
    url, hook = http
    run, cfg = make_run(tmp_path)
    append(run, "gpu-n1", healthy_samples("gpu-n1"))
    env = env_with(JUSTRL_ALERT_WEBHOOK_URL=url + "/hook")
    log = tmp_path / "daemon.log"
    rng = random.Random(7)
    planted = []
    in_flight: set[str] = set()  # webhook posts the server had taken when a kill came
    plan = [(0, 48), (1, 79), (2, 95), (3, 74), (4, 119)]
    for i, (gpu, xid) in enumerate(plan):
        proc = start_daemon(run, cfg, env, log)
        if i == 0:
            wait_for(lambda: (run / "monitor.heartbeat").exists(), what="the first heartbeat")
        plant_xid(run, "gpu-n1", gpu, xid)
        planted.append(f"G1-xid:gpu-n1:{gpu}:{xid}")
        if i % 2 == 0:
            # kill at a random moment: before, during or after the cycle that reads the new line
            time.sleep(rng.uniform(0.0, 0.8))
        else:
            n = len(planted)
            wait_for(lambda n=n: len(xid_keys(jsonl(run))) >= n, what=f"alert {n} delivered")
            wait_for(lambda: outbox_size(run) == 0, what="every sink acknowledged")
        posts = [r for r in hook.requests if r[1] == "/hook"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if posts:
            in_flight.add(json.loads(posts[-1][2])["text"])
    proc = start_daemon(run, cfg, env, log)
    try:
        wait_for(lambda: len(xid_keys(jsonl(run))) >= len(planted), what="every planted alert")
        wait_for(lambda: outbox_size(run) == 0, what="every sink acknowledged")
        time.sleep(1.0)  # a few more cycles: nothing may be repeated
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    keys = xid_keys(jsonl(run))
    assert sorted(keys) == sorted(planted), keys  # alerts.jsonl: exactly once
    texts = [json.loads(b)["text"] for _, p, b in hook.requests if p == "/hook"]
    # The webhook: every alert arrived; a repeat only for a post the kill caught between the server taking
    # it and the daemon recording its success (the documented at-least-once window), and only once.
    assert {t.split(": ")[1].split(" firing")[0] for t in texts} == {"G1-xid"}
    assert len(set(texts)) == len(planted), texts
    repeated = {t for t in texts if texts.count(t) > 1}
    assert repeated <= in_flight and all(texts.count(t) == 2 for t in repeated), (repeated, in_flight)
    assert "state committed" in log.read_text()


def test_two_daemons_on_one_folder_alert_once_and_the_standby_takes_over(
    tmp_path: Path,
    http: tuple[str, Hook],  # noqa: F811
) -> None:
    url, hook = http
    run, cfg = make_run(tmp_path)
    append(run, "gpu-n1", healthy_samples("gpu-n1"))
    env = env_with(JUSTRL_ALERT_WEBHOOK_URL=url + "/hook")
    a = start_daemon(run, cfg, env, tmp_path / "a.log")
    wait_for(lambda: (run / "monitor.heartbeat").exists(), what="the leader's heartbeat")
    b = start_daemon(run, cfg, env, tmp_path / "b.log")
    try:
        wait_for(lambda: "standby" in (tmp_path / "b.log").read_text(), what="the second daemon in standby")
        plant_xid(run, "gpu-n1", 0, 48)
        plant_xid(run, "gpu-n1", 5, 79)
        wait_for(lambda: len(xid_keys(jsonl(run))) >= 2, what="two alerts")
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        plant_xid(run, "gpu-n1", 6, 95)
        wait_for(lambda: len(xid_keys(jsonl(run))) >= 3, what="the standby's alert")
        time.sleep(1.0)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
    assert sorted(xid_keys(jsonl(run))) == ["G1-xid:gpu-n1:0:48", "G1-xid:gpu-n1:5:79", "G1-xid:gpu-n1:6:95"]
    # The webhook is at-least-once: each alert arrived; the one post in flight at the kill -9 may come again
    # from the standby, or arrive cut (its headers without its body).
    posts = [r[2] for r in hook.requests if r[1] == "/hook"]
    delivered = b"\n".join(posts)
    assert all(f"XID {code}".encode() in delivered for code in (48, 79, 95)), posts
    assert 3 <= len(posts) <= 4 and sum(1 for b in posts if not b) <= 1, posts
    assert "leading as" in (tmp_path / "b.log").read_text()


# -- heartbeat, tensorboard scalars ------------------------------------------------------------------------


def test_heartbeat_is_fresh_while_running_and_stale_after(tmp_path: Path) -> None:
    run, cfg = make_run(tmp_path)
    append(run, "gpu-n1", healthy_samples("gpu-n1"))
    proc = start_daemon(run, cfg, env_with(), tmp_path / "d.log")
    try:
        wait_for(lambda: (run / "monitor.heartbeat").exists(), what="heartbeat")
        first = json.loads((run / "monitor.heartbeat").read_text())
        wait_for(
            lambda: json.loads((run / "monitor.heartbeat").read_text())["cycle"] > first["cycle"],
            what="a second beat",
        )
        status = monitor_status(run, time.time())
        assert not status.blind and status.text.startswith("monitor ok"), status
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    beat = json.loads((run / "monitor.heartbeat").read_text())
    assert beat["interval"] == 0.3 and beat["run"] == "run-a"
    status = monitor_status(run, beat["time"] + 120)
    assert status.blind and "monitor blind since" in status.text


def test_monitor_scalars_readable_with_event_accumulator(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, cfg = make_run(tmp_path)
    append(run, "gpu-n1", healthy_samples("gpu-n1"))
    plant_xid(run, "gpu-n1", 3, 79)
    out = cli("scan", str(run), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    acc = EventAccumulator(str(run / "tensorboard" / "monitor"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "alerts_firing/critical" in tags and "gpu_temperature_c/gpu-n1/gpu0" in tags
    (crit,) = acc.Scalars("alerts_firing/critical")
    assert crit.value == 1.0
    assert len(acc.Scalars("gpu_power_w/gpu-n1/gpu7")) == 1


# -- it never touches the job ---------------------------------------------------------------------------------


def _job_acting_names() -> set[str]:
    """The public functions of justrl_hpc.core.slurm_act: every call that acts on a Slurm job."""
    tree = ast.parse((REPO / "justrl_hpc" / "core" / "slurm_act.py").read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


def test_daemon_code_has_no_call_that_acts_on_a_job() -> None:
    """No module under justrl_hpc/monitor/ (daemon, sources, agent, rules, dashboard, cli) runs
    scancel/scontrol update/requeue/hold, calls a job-acting function of justrl_hpc.core.slurm_act, starts a
    process or writes to control/; the only justrl_hpc.core.slurm function any of them calls is the
    read-only job_state and controller_problem (scontrol ping)."""
    forbidden = {"requeue", "release_now", "cancel", "scancel", "hold", "update", "suspend", "signal_job"}
    acting = _job_acting_names()
    assert {"cancel", "requeue", "release_now"} <= acting, acting
    root = REPO / "justrl_hpc" / "monitor"
    files = sorted(root.rglob("*.py"))
    rels = {p.relative_to(root).as_posix() for p in files}
    assert {"cli.py", "daemon/cycle.py", "daemon/service.py", "daemon/store.py", "agent/sampler.py"} <= rels
    for path in files:
        name = path.relative_to(REPO).as_posix()
        src = path.read_text()
        tree = ast.parse(src)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "slurm":
                    assert node.attr in ("job_state", "controller_problem"), f"{name}: slurm.{node.attr}"
                assert node.value.id != "slurm_act", f"{name}: slurm_act.{node.attr}"
                if node.value.id == "os":
                    spawns = node.attr.startswith(("system", "popen", "exec", "spawn"))
                    assert not spawns, f"{name}: os.{node.attr}"
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert "slurm_act" not in module, f"{name}: from {module} import …"
                assert not any(a.name == "slurm_act" for a in node.names), f"{name}: imports slurm_act"
                if module == "justrl_hpc.core.slurm":
                    assert not acting & {a.name for a in node.names}, f"{name}: from {module} import …"
            if isinstance(node, ast.Import):
                assert not any("slurm_act" in a.name for a in node.names), f"{name}: imports slurm_act"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words = set(node.value.lower().replace("-", " ").split())
                assert not ({"scancel", "scontrol"} & words and words & forbidden), f"{name}: {node.value!r}"
        assert "subprocess" not in src, f"{name}: subprocess"
        assert "control/" not in src.replace("no file in control/", ""), f"{name}: control/"


# -- TensorBoard: verl's scalars, a folder with nothing else -----------------------------------------------


def write_tb(logdir: Path, steps: range, plant: dict[int, dict[str, float]] | None = None) -> None:
    """verl-named scalars, one simple_value Event per scalar as verl's SummaryWriter writes them, with
    tensorboard's own EventFileWriter; steps 60 s apart."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    logdir.mkdir(parents=True, exist_ok=True)
    w = EventFileWriter(str(logdir))
    rng = random.Random(3)
    t0 = time.time() - 60 * (steps.stop + 1)
    for step in steps:
        values = {
            "actor/entropy": 1.3 + rng.uniform(-0.05, 0.05),
            "actor/grad_norm": 0.5 + rng.uniform(-0.05, 0.05),
            "actor/pg_loss": rng.uniform(-0.02, 0.02),
            "critic/score/mean": -0.2 + 0.004 * step + rng.uniform(-0.02, 0.02),
            "response_length/mean": 7000 + rng.uniform(-100, 100),
            "response_length/max": 12000 + rng.uniform(-500, 500),
            "timing_s/step": 60 + rng.uniform(-2, 2),
        }
        values.update((plant or {}).get(step, {}))
        for tag, v in values.items():
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)])
            w.add_event(event_pb2.Event(wall_time=t0 + 60 * step, step=step, summary=summary))
    w.close()


def test_tensorboard_only_folder_planted_nan_at_its_step_and_healthy_is_quiet(tmp_path: Path) -> None:
    healthy, cfg = make_run(tmp_path, "healthy")
    write_tb(healthy / "tensorboard", range(1, 41))
    out = cli("scan", str(healthy), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "", out.stdout

    run, _ = make_run(tmp_path, "sick")
    write_tb(run / "tensorboard", range(1, 41), plant={30: {"actor/grad_norm": float("nan")}})
    out = cli("scan", str(run), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    alerts = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(a["rule"], a["state"], a["step"], a["metric"], a["severity"]) for a in alerts] == [
        ("T1-nonfinite", "firing", 30, "actor/grad_norm", "critical"),
        (
            "T1-nonfinite",
            "resolved",
            alerts[1]["step"] if len(alerts) > 1 else None,
            "actor/grad_norm",
            "critical",
        ),
    ], alerts
    assert alerts[1]["step"] > 30 and str(alerts[0]["value"]).lower() == "nan"
    # more steps appended: the next scan judges only them, and raises nothing again
    write_tb(run / "tensorboard", range(41, 46))
    out = cli("scan", str(run), "--config", str(cfg))
    assert out.returncode == 0 and out.stdout == "", out.stdout
    assert sorted(p.name for p in run.iterdir()) == [
        "alerts.jsonl",
        "monitor.db",
        "monitor.heartbeat",
        "monitor.lock",
        "tensorboard",
    ]
