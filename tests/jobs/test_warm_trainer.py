"""The trainer process that imports verl while Ray comes up (in_worker/warm_main.py, TrainerProcess.warm):
it runs its module as `python -m` would, only once the chunk says go, with the command and environment of
then; a warm process that died or waits for another module gives way to a fresh one. Every chunk of the
cluster tests runs verl's main_ppo this way; these pin the hand-over itself, with a module that records it."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from helpers import REPO

from justrl_hpc.jobs.train.trainer_process import TrainerProcess, start_trainer

MODULE = '''
import json, os, sys, time
with open(os.path.join(os.environ["MARK_DIR"], "imported"), "a") as fh:
    fh.write(__name__ + "\\n")
if os.environ.get("FAIL_IMPORT"):
    raise SystemExit(3)
if __name__ == "__main__":
    with open(os.path.join(os.environ["MARK_DIR"], "ran.json"), "w") as fh:
        json.dump({"argv": sys.argv, "go_only": os.environ.get("GO_ONLY"),
                   "warm_only": os.environ.get("WARM_ONLY"), "cwd": os.getcwd()}, fh)
'''


def setup(tmp_path: Path, name: str, **extra: str) -> tuple[dict[str, str], Path]:
    mods = tmp_path / "mods"
    mods.mkdir(exist_ok=True)
    (mods / f"{name}.py").write_text(MODULE)
    marks = tmp_path / f"marks-{name}"
    marks.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FAIL_IMPORT", "GO_ONLY", "WARM_ONLY")}
    env.update(PYTHONPATH=os.pathsep.join([str(mods), str(REPO)]), MARK_DIR=str(marks), **extra)
    return env, marks


def wait_for(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_module_is_imported_first_then_run_as_main_with_the_command_and_environment_of_the_go(tmp_path):
    env, marks = setup(tmp_path, "warmmod", WARM_ONLY="1")
    go_file, log = tmp_path / "control" / "go.json", tmp_path / "logs" / "trainer.log"
    go_file.parent.mkdir()
    warm = TrainerProcess.warm("warmmod", go_file, log, tmp_path / "ckpt", env, cwd=tmp_path)
    try:
        wait_for(lambda: (marks / "imported").exists())
        time.sleep(0.5)
        assert warm.waiting_for() == "warmmod" and not (marks / "ran.json").exists()  # imported, not run
        go_env = {k: v for k, v in env.items() if k != "WARM_ONLY"} | {"GO_ONLY": "yes"}
        command = [sys.executable, "-m", "warmmod", "a=1", "trainer.nnodes=2"]
        trainer = start_trainer(warm, command, log, tmp_path / "ckpt", go_env, cwd=tmp_path)
        assert trainer is warm and trainer.waiting_for() is None
        assert trainer.proc is not None and trainer.proc.wait(timeout=30) == 0
    finally:
        warm.stop(grace_s=2.0)
    ran = json.loads((marks / "ran.json").read_text())
    assert ran["argv"][0].endswith("warmmod.py") and ran["argv"][1:] == ["a=1", "trainer.nnodes=2"], ran
    assert ran["go_only"] == "yes" and ran["warm_only"] is None  # the go's environment, whole
    assert (marks / "imported").read_text().split() == ["warmmod", "__main__"]
    assert not go_file.exists()
    text = log.read_text()
    assert "===== trainer start" in text and "(imports done ahead): " + " ".join(command) in text


def test_a_warm_process_that_died_or_waits_for_another_module_gives_way_to_a_fresh_trainer(tmp_path):
    env, marks = setup(tmp_path, "brokenmod", FAIL_IMPORT="1")
    log, ckpt = tmp_path / "trainer.log", tmp_path / "ckpt"
    dead = TrainerProcess.warm("brokenmod", tmp_path / "go-dead.json", log, ckpt, env)
    assert dead.proc is not None and dead.proc.wait(timeout=30) == 3
    env2, marks2 = setup(tmp_path, "goodmod")
    fresh = start_trainer(dead, [sys.executable, "-m", "goodmod", "x=1"], log, ckpt, env2)
    assert fresh is not dead and fresh.proc is not None and fresh.proc.wait(timeout=30) == 0
    assert json.loads((marks2 / "ran.json").read_text())["argv"][1:] == ["x=1"]

    other = TrainerProcess.warm("goodmod", tmp_path / "go-other.json", log, ckpt, env2)
    wait_for(lambda: other.waiting_for() == "goodmod" and "goodmod" in (marks2 / "imported").read_text().split())
    env3, marks3 = setup(tmp_path, "thirdmod")
    fresh = start_trainer(other, [sys.executable, "-m", "thirdmod"], log, ckpt, env3)
    assert fresh is not other and other.poll() is not None  # stopped, not left waiting
    assert fresh.proc is not None and fresh.proc.wait(timeout=30) == 0 and (marks3 / "ran.json").exists()


def test_a_warm_process_never_told_to_go_ends_by_itself(tmp_path):
    env, _ = setup(tmp_path, "idlemod", JUSTRL_WARM_WAIT_S="1")
    warm = TrainerProcess.warm("idlemod", tmp_path / "go.json", tmp_path / "trainer.log", tmp_path / "ckpt", env)
    assert warm.proc is not None and warm.proc.wait(timeout=30) == 1
    assert "no go file" in (tmp_path / "trainer.log").read_text()
