"""Any verl run folder: one that holds only verl's own TensorBoard events (verl run by hand, its default
`tensorboard_log/<project>/<experiment>/`; the events here were written by verl's own tracker in a rehearsal,
tests/data/rehearsal-run) or only its console log. The daemon, `scan` and the dashboard (in a real terminal)
all take it; what such a folder cannot show is marked absent, not an error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from helpers import REPO
from test_tui import Tmux, _dashboard_cmd, _quit_and_exit_0, tmux_factory  # noqa: F401  (the fixture)

from justrl_hpc.monitor.dashboard.snapshot import load_view

DATA = Path(__file__).resolve().parents[1] / "data"


def by_hand(tmp_path: Path) -> Path:
    folder = tmp_path / "by-hand"
    exp = folder / "tensorboard_log" / "justrl" / "rehearsal"
    exp.mkdir(parents=True)
    for f in (DATA / "rehearsal-run" / "tensorboard").glob("events.out.tfevents.*"):
        shutil.copy(f, exp / f.name)
    return folder


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def test_the_daemon_watches_a_bare_verl_folder_and_the_dashboard_shows_it(
    tmp_path: Path, tmux_factory: Callable[[int, int, Path], Tmux]  # noqa: F811
) -> None:
    folder = by_hand(tmp_path)
    daemon = subprocess.Popen([sys.executable, "-m", "justrl_hpc.monitor.cli", "daemon", str(folder),
                               "--interval", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            beat = folder / "monitor.heartbeat"
            if beat.exists() and json.loads(beat.read_text()).get("step") == 120:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the daemon never reached step 120")
        view = load_view(folder, use_slurm=False)
        assert view.bare and view.step == 120 and view.status == "verl folder"
        assert view.metrics_from == "TensorBoard tensorboard_log/justrl/rehearsal"
        assert view.curve("entropy").band is None  # JustRL's band means nothing for a task not known
        assert not view.notes, view.notes  # nothing is "missing": the suite's files are absent by design
        t = tmux_factory(80, 24, tmp_path)
        t.type(_dashboard_cmd("--interval", "1", str(folder)))
        screen = t.frame(lambda s: "VERL FOLDER" in s, "the bare folder's frame")
        assert "step 120/?" in screen and "entropy" in screen and "monitor ok" in screen, screen
        assert "metrics: TensorBoard tensorboard_log/justrl/rehearsal" in screen, screen
        assert "absent: not a suite run" in screen and "Traceback" not in screen, screen
        _quit_and_exit_0(t, None)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, out
    assert "metrics from TensorBoard events" in out and "tensorboard_log" in out
    # Its own state beside verl's files; verl's experiment folder untouched.
    assert (folder / "monitor.db").exists()
    assert sorted(p.name for p in (folder / "tensorboard_log" / "justrl" / "rehearsal").iterdir()) == sorted(
        p.name for p in (DATA / "rehearsal-run" / "tensorboard").glob("events.out.tfevents.*"))


def test_the_dashboard_reads_a_console_log_given_as_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "log-only"
    folder.mkdir()
    log = folder / "train.log"
    shutil.copy(DATA / "real_verl_logs" / "retool_opd_qwen25_3b_length_growth.log", log)
    out = subprocess.run([sys.executable, "-m", "justrl_hpc.monitor.cli", "--once", str(log)], capture_output=True,
                         text=True, timeout=120, env=dict(_env(), COLUMNS="100", LINES="24"))
    assert out.returncode == 0, out.stderr
    assert "VERL FOLDER" in out.stdout and "step 159/?" in out.stdout and "5,007" in out.stdout, out.stdout
    assert not list(folder.glob("monitor.*")), "the dashboard only reads"
    missing = subprocess.run([sys.executable, "-m", "justrl_hpc.monitor.cli", "--once", str(tmp_path / "x")],
                             capture_output=True, text=True, timeout=120, env=_env())
    assert missing.returncode != 0 and missing.stderr.startswith("error: RUN"), missing.stderr
