"""Clock skew between nodes in telemetry: a node whose clock runs behind must not look silent, one whose
clock runs ahead must not hide its silence, and the skew itself is an alert.

The tail's estimate is checked on explicit clocks first; then real node agents run under libfaketime
(Debian's `faketime` package preloaded: a real shifted CLOCK_REALTIME for the whole process) beside an unshifted one, watched by
the real daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

from justrl_hpc.monitor.rules import gpu as gpu_rules
from justrl_hpc.monitor.sources.telemetry import TelemetryTail

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, times: list[float], host: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        for t in times:
            fh.write(json.dumps({"time": t, "host": host, "interval": 1.0, "gpus": []}) + "\n")


def test_tail_brackets_each_node_clock_and_puts_samples_on_the_monitors(tmp_path: Path) -> None:
    tel = tmp_path / "telemetry"
    skews = {"sync": 0.0, "behind": -600.0, "ahead": 300.0}
    tail = TelemetryTail(tel)
    t = 1_800_000_000.0
    # A backlog before the first poll, then one line per node per second, polled every 3 s. The synced
    # node's lines show up as late as the slack allows (a shared filesystem's delay).
    for host, skew in skews.items():
        write(tel / f"{host}.jsonl", [t - 5 + skew, t - 4 + skew], host)
        os.utime(tel / f"{host}.jsonl", (t - 4, t - 4))  # the filesystem's clock: last written 4 s ago
    # A node that died 15 minutes ago with its clock 600 s behind: its backlog is old by both clocks.
    write(tel / "dead.jsonl", [t - 900 - 600], "dead")
    os.utime(tel / "dead.jsonl", (t - 900, t - 900))
    first = tail.poll(now=t)
    assert tail.cursors["sync"].skew == 0.0 and tail.cursors["behind"].skew == 0.0  # no bracket yet
    assert 296.0 <= tail.cursors["ahead"].skew <= 300.0  # from the future: bounded at once
    # A backlog arrived when its file last changed: the behind node is live, the dead one is not.
    assert all(s["arrived"] == t - 4 for s in first.samples["behind"])
    assert first.samples["dead"][0]["arrived"] == t - 900
    st = gpu_rules.GpuRuleSettings(silent_min_s=30)
    silent = [f.node for f in gpu_rules.evaluate(first.samples, t, st) if f.rule == "S5-agent-silent"]
    assert silent == ["dead"], silent
    for _ in range(5):
        for host, skew in skews.items():
            lag = 4.9 if host == "sync" else 0.0
            write(tel / f"{host}.jsonl", [t + i - lag + skew for i in (1.0, 2.0, 3.0)], host)
        t += 3.0
        batch = tail.poll(now=t)
    assert tail.cursors["sync"].skew == 0.0
    # The slack that spares a late shared filesystem leaves a behind clock's estimate up to 5 s short.
    assert -600.0 <= tail.cursors["behind"].skew <= -594.0
    assert 297.0 <= tail.cursors["ahead"].skew <= 303.0
    for host, skew in skews.items():
        newest = batch.samples[host][-1]
        assert abs(newest["time"] - t) <= 6.0, (host, newest)
        if skew:
            assert newest["host_time"] == t + skew and newest["clock_skew_s"] == round(
                tail.cursors[host].skew, 1
            )
        else:
            assert "host_time" not in newest and "clock_skew_s" not in newest
    # A restarted monitor keeps what it learnt.
    again = TelemetryTail.from_state(tel, json.loads(json.dumps(tail.state())))
    assert again.cursors["behind"].skew == tail.cursors["behind"].skew
    # NTP fixes the node's clock: the next bracket pulls the estimate back to about 0.
    write(tel / "behind.jsonl", [t + 1.0, t + 2.0], "behind")
    t += 3.0
    again.poll(now=t)
    assert -1.0 <= again.cursors["behind"].skew <= 0.0


def test_rules_judge_silence_on_the_monitors_clock_and_flag_the_skew() -> None:
    st = gpu_rules.GpuRuleSettings(silent_min_s=30, clock_skew_s=30)
    now = 1_800_000_000.0
    # Behind by 600 s, corrected by the tail: live, and S6 says so.
    live_behind = [{"time": now - 2, "host_time": now - 602, "clock_skew_s": -600.0, "arrived": now - 1,
                    "interval": 5.0, "gpus": []}]
    found = gpu_rules.evaluate({"n2": live_behind}, now, st)
    assert [f.rule for f in found] == ["S6-clock-skew"]
    assert found[0].value == -600 and "600 s behind" in found[0].message and found[0].node == "n2"
    # Before any bracket: the sample looks 600 s old, but the monitor read it a second ago.
    unbracketed = [{"time": now - 601, "arrived": now - 1, "interval": 5.0, "gpus": []}]
    assert gpu_rules.evaluate({"n2": unbracketed}, now, st) == []
    # Silent on both clocks: S5.
    dead = [{"time": now - 601, "arrived": now - 45, "interval": 5.0, "gpus": []}]
    (f,) = gpu_rules.evaluate({"n2": dead}, now, st)
    assert f.rule == "S5-agent-silent" and f.value == 45
    # A small skew is not an alert.
    small = [{"time": now, "clock_skew_s": 12.0, "arrived": now, "interval": 5.0, "gpus": []}]
    assert gpu_rules.evaluate({"n1": small}, now, st) == []


# -- real agents with shifted clocks, the real daemon ---------------------------------------------------------

CONFIG = """
daemon:
  interval_s: 0.5
  cooldown_s: 0
  slurm_every_s: 3600
gpu:
  silent_min_s: 4
  clock_skew_s: 30
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUSTRL_")}
    env.update(PYTHONPATH=str(REPO), SLURM_JOB_ID="777", **extra)
    return env


def _agent(run: Path, host: str, shift: str | None, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "justrl_hpc.monitor.agent", "--run-dir", str(run), "--host", host,
           "--interval", "0.5", "--backend", "none"]
    env = _env()
    if shift is not None:
        # The library itself, not the `faketime` wrapper: the wrapper forks, and the kill must reach the agent.
        env.update(LD_PRELOAD=str(_libfaketime()), FAKETIME=shift, FAKETIME_DONT_FAKE_MONOTONIC="1")
    return subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def _libfaketime() -> Path:
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    if not found:
        pytest.fail("libfaketime is not installed (apt-get install faketime; scripts/install.sh does)")
    return found[0]


def _alerts(run: Path, rule: str) -> list[dict[str, Any]]:
    path = run / "alerts.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r["rule"] == rule and r["state"] == "firing"]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.timeout(180)
def test_agents_with_skewed_clocks_neither_fake_nor_hide_silence(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text(CONFIG)
    log = tmp_path / "procs.log"
    agents = {"n1": _agent(run, "n1", None, log), "n2": _agent(run, "n2", "-600s", log),
              "n3": _agent(run, "n3", "+300s", log)}
    daemon = None
    try:
        tel = run / "telemetry"
        wait_for(lambda: all(_lines(tel / f"{h}.jsonl") >= 2 for h in agents), 60, "two samples per agent")
        first = json.loads((tel / "n2.jsonl").read_text().splitlines()[0])
        assert first["time"] < time.time() - 590  # faketime really shifted the agent's clock
        daemon = subprocess.Popen(
            [sys.executable, "-m", "justrl_hpc.monitor.cli", "daemon", str(run), "--config", str(cfg)],
            env=_env(), stdout=open(log, "ab"), stderr=subprocess.STDOUT,
        )
        wait_for(lambda: {a["node"] for a in _alerts(run, "S6-clock-skew")} >= {"n2", "n3"}, 60, "S6 for n2 and n3")
        skew = {a["node"]: a["value"] for a in _alerts(run, "S6-clock-skew")}
        assert set(skew) == {"n2", "n3"}, skew
        assert -606 <= skew["n2"] <= -594 and 294 <= skew["n3"] <= 306, skew
        time.sleep(8)  # twice the silence limit, every agent writing
        assert _alerts(run, "S5-agent-silent") == [], "a live agent with a shifted clock was called silent"
        killed = time.monotonic()
        for host in ("n2", "n3"):
            agents[host].send_signal(signal.SIGKILL)
            agents[host].wait(10)
        wait_for(lambda: {a["node"] for a in _alerts(run, "S5-agent-silent")} == {"n2", "n3"}, 40, "S5 for n2, n3")
        took = time.monotonic() - killed
        # The limit (4 s) plus a cycle or two; n3's clock 300 s ahead would have hidden it for 5 minutes.
        assert took < 20, took
        ages = {a["node"]: a["value"] for a in _alerts(run, "S5-agent-silent")}
        assert all(4 <= v <= 20 for v in ages.values()), ages
        assert not [a for a in _alerts(run, "S5-agent-silent") if a["node"] == "n1"]
        assert "Traceback" not in log.read_text()
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(20)
        for p in agents.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
