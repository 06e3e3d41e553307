"""verl's console log as a metric source: the formats real logs have, read incrementally as a live run writes,
and where the monitor finds a folder's metrics (sources.locate)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import REPO

from justrl_hpc.monitor.sources.console_log import ConsoleLogTail, parse_step_line, parse_value
from justrl_hpc.monitor.sources.locate import locate

LOGS = Path(__file__).resolve().parents[1] / "data" / "real_verl_logs"


def test_values_as_verl_prints_them():
    assert parse_value("np.float64(0.35)") == 0.35
    assert parse_value("np.int64(3)") == 3.0
    assert parse_value("tensor(0.5, device='cuda:0')") == 0.5
    assert parse_value("1e-05") == 1e-05
    assert math.isnan(parse_value("nan")) and parse_value("-inf") == -math.inf
    assert parse_value("True") is None and parse_value("[1, 2]") is None and parse_value("'text'") is None


def test_a_ray_prefixed_coloured_line_and_a_validation_line():
    line = ("\x1b[36m(TaskRunner pid=4242)\x1b[0m step:17 - actor/entropy:np.float64(0.3125) - "
            "actor/grad_norm:0.41 - critic/score/mean:-0.25 - timing_s/step:31.5 - training/epoch:0\n")
    assert parse_step_line(line) == (17, {"actor/entropy": 0.3125, "actor/grad_norm": 0.41,
                                          "critic/score/mean": -0.25, "timing_s/step": 31.5, "training/epoch": 0.0})
    assert parse_step_line("Training from scratch") is None
    assert parse_step_line("(TaskRunner pid=1) step:0 - val-core/math/acc/mean@1:np.float64(0.5)") == (
        0, {"val-core/math/acc/mean@1": 0.5})


def test_a_line_cut_at_4096_characters_drops_its_cut_field():
    head = "step:3 - actor/entropy:0.25 - "
    filler = " - ".join(f"k{i}:0.123456" for i in range(400))
    line = (head + filler)[:4096]
    step, values = parse_step_line(line)
    assert step == 3 and values["actor/entropy"] == 0.25
    last = line.rsplit(" - ", 1)[-1]
    assert last.split(":")[0] not in values  # maybe cut short: not read as a value


def test_every_real_log_reads_with_its_steps_and_entropy_name():
    for name, steps, tag in (
        ("retool_opd_qwen3_4b_fast_collapse.log", 262, "actor/entropy"),
        ("retool_opd_qwen25_3b_healthy.log", 180, "actor/entropy"),
        ("retool_opd_qwen25_3b_length_growth.log", 160, "actor/entropy"),
        ("ppo_qwen25_05b_gsm8k_slow_entropy_decay.log", 435, "actor/entropy_loss"),
    ):
        new = ConsoleLogTail(LOGS / name).poll().new
        assert len({s for pts in new.values() for s, _, _ in pts}) == steps, name
        assert len(new[(".", tag)]) >= steps - 1, name


def test_a_live_log_is_tailed_line_by_line_and_a_resume_replaces_its_steps(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("(TaskRunner pid=1) step:1 - actor/entropy:0.3\n(TaskRunner pid=1) step:2 - actor/entr")
    tail = ConsoleLogTail(log, tags=["actor/entropy"])
    first = tail.poll()
    assert first.new == {(".", "actor/entropy"): [(1, os.stat(log).st_mtime, 0.3)]}
    with open(log, "a") as fh:  # the rest of the half-written line, then a requeue re-logs step 2
        fh.write("opy:0.29\n===== trainer start\n(TaskRunner pid=2) step:2 - actor/entropy:0.28\n")
    # Carried over a restart of the reader through its state.
    tail = ConsoleLogTail.from_state(log, tail.state(), tags=["actor/entropy"])
    second = tail.poll()
    assert [p[0] for p in second.new[(".", "actor/entropy")]] == [2]
    assert second.new[(".", "actor/entropy")][0][2] == 0.28
    assert second.replaced_from[(".", "*")] == 2
    # A rewritten file (a new run into the same name) is read from the start.
    log.write_text("step:1 - actor/entropy:0.5\n")
    again = ConsoleLogTail.from_state(log, tail.state()).poll()
    assert [p[2] for p in again.new[(".", "actor/entropy")]] == [0.5]


def test_locate_finds_verls_output_wherever_it_is(tmp_path):
    suite = tmp_path / "suite"
    (suite / "tensorboard").mkdir(parents=True)
    (suite / "run.yaml").write_text("run: {}\n")
    assert locate(suite).path == suite / "tensorboard"  # before its first event too
    bare = tmp_path / "bare"
    exp = bare / "tensorboard_log" / "proj" / "exp"
    exp.mkdir(parents=True)
    (exp / "events.out.tfevents.1.host").write_bytes(b"")
    (bare / "tensorboard" / "monitor").mkdir(parents=True)  # only the monitor's own scalars: not verl's
    found = locate(bare)
    assert found.kind == "tensorboard" and found.path == exp
    assert locate(exp).path == exp
    logs = tmp_path / "logs_only"
    logs.mkdir()
    (logs / "notes.txt").write_text("nothing here\n")
    shutil.copy(LOGS / "retool_opd_qwen25_3b_healthy.log", logs / "train.log")
    assert locate(logs).kind == "console" and locate(logs).path == logs / "train.log"
    assert locate(tmp_path / "logs_only" / "nothing") is None


def _monitor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "justrl_hpc.monitor.cli", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_scan_reads_a_console_log_given_as_a_file_or_by_flag(tmp_path):
    folder = tmp_path / "by-hand"
    folder.mkdir()
    log = folder / "train.log"
    shutil.copy(LOGS / "retool_opd_qwen3_4b_fast_collapse.log", log)
    out = _monitor("scan", str(log))
    assert out.returncode == 0, out.stderr
    assert '"T3-entropy-collapse"' in out.stdout and "metrics from console log" in out.stderr
    other = tmp_path / "elsewhere"
    other.mkdir()
    out = _monitor("scan", str(other), "--console-log", str(log))
    assert out.returncode == 0 and '"T3-entropy-collapse"' in out.stdout, out.stderr
    bad = _monitor("scan", str(other), "--console-log", str(tmp_path / "missing.log"))
    assert bad.returncode != 0 and bad.stderr.startswith("error: --console-log") and "Traceback" not in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = _monitor("scan", str(empty))
    assert bad.returncode != 0 and bad.stderr.startswith("error: RUN") and not list(empty.iterdir()), bad.stderr
