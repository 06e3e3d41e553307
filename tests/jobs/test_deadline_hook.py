"""The stop file → verl's own deadline save, through verl's should_save_ckpt_esi and Ray's setup hook."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from justrl_hpc.jobs.train.in_worker import deadline_hook
from justrl_hpc.jobs.train.in_worker.deadline_hook import DEADLINE_ENV

REPO = Path(__file__).resolve().parents[2]


def esi(max_step_s: float, redundant: float = 0) -> bool:
    from verl.utils.checkpoint.checkpoint_manager import should_save_ckpt_esi

    return should_save_ckpt_esi(max_steps_duration=max_step_s, redundant_time=redundant)


def test_job_end_time_as_deadline_saves_only_near_the_end(monkeypatch):
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 3600))
    assert not esi(300, 120)
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 400))
    assert esi(300, 120)  # 400 s left ≤ 60 + 300 + 120


def test_stop_file_pulls_the_deadline_to_the_next_step(tmp_path, monkeypatch):
    monkeypatch.setenv(DEADLINE_ENV, str(time.time() + 86400))
    assert not deadline_hook.apply_once(tmp_path)
    assert not esi(5)
    (tmp_path / "stop").write_text("{}")
    assert deadline_hook.apply_once(tmp_path)
    assert esi(5)
    # The hook keeps the deadline ahead of now, so a step that takes long still sees time left > 0.
    assert float(os.environ[DEADLINE_ENV]) > time.time()


def test_installed_thread_reacts_within_seconds(tmp_path):
    code = textwrap.dedent(f"""
        import os, time
        os.environ["{deadline_hook.CONTROL_ENV}"] = {str(tmp_path)!r}
        from justrl_hpc.jobs.train.in_worker import deadline_hook
        from verl.utils.checkpoint.checkpoint_manager import should_save_ckpt_esi
        deadline_hook.install()
        deadline_hook.install()  # idempotent: one thread
        import threading
        assert sum(t.name == "justrl-deadline-hook" for t in threading.enumerate()) == 1
        assert not should_save_ckpt_esi(max_steps_duration=1.0)
        open({str(tmp_path / "stop")!r}, "w").write("x")
        for _ in range(50):
            if should_save_ckpt_esi(max_steps_duration=1.0):
                print("SAVE"); break
            time.sleep(0.1)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert "SAVE" in out.stdout, out.stderr


def test_without_control_dir_the_hook_does_nothing(monkeypatch):
    monkeypatch.delenv(deadline_hook.CONTROL_ENV, raising=False)
    deadline_hook.install()  # must not raise nor start a thread
    import threading

    assert not any(t.name == "justrl-deadline-hook" for t in threading.enumerate())


@pytest.mark.timeout(180)
def test_ray_worker_setup_hook_reaches_a_remote_actor(tmp_path):
    """What verl gets via ray_kwargs.ray_init.runtime_env: the hook runs in the actor that trains."""
    code = textwrap.dedent(f"""
        import os, time, ray
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
                 runtime_env={{"worker_process_setup_hook": "justrl_hpc.jobs.train.in_worker.deadline_hook.install",
                               "env_vars": {{"{deadline_hook.CONTROL_ENV}": {str(tmp_path)!r},
                                            "PYTHONPATH": {str(REPO)!r}}}}})

        @ray.remote
        class Trainer:
            def esi(self):
                from verl.utils.checkpoint.checkpoint_manager import should_save_ckpt_esi
                return should_save_ckpt_esi(max_steps_duration=1.0)

        t = Trainer.remote()
        before = ray.get(t.esi.remote())
        open({str(tmp_path / "stop")!r}, "w").write("x")
        after = False
        for _ in range(60):
            if ray.get(t.esi.remote()):
                after = True; break
            time.sleep(0.2)
        print("RESULT", before, after)
        ray.shutdown()
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=170, env=env)
    assert "RESULT False True" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


def test_a_finish_request_ends_this_processs_wandb_run_and_keeps_its_last_steps(tmp_path):
    """The real wandb library, offline: without the request a killed process loses the tail of its buffered
    file; with it the run ends cleanly and every step logged is in the file. A process without a W&B run does
    not answer (only verl's logging actor has one)."""
    script = tmp_path / "log_then_die.py"
    script.write_text(
        "import os, signal, sys, time, wandb\n"
        "from pathlib import Path\n"
        "from justrl_hpc.jobs.train.in_worker import deadline_hook as h\n"
        "control = Path(sys.argv[1]); control.mkdir(exist_ok=True)\n"
        "assert not h.finish_trackers_once(control)  # nothing asked yet\n"
        "run = wandb.init(project='p')\n"
        "for s in range(1, 41):\n"
        "    run.log({'actor/entropy': 1.0 / s}, step=s)\n"
        "if sys.argv[2] == 'ask':\n"
        "    (control / h.FINISH_TRACKERS).write_text('now')\n"
        "    assert h.finish_trackers_once(control) and wandb.run is None\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # what Ray does to the TaskRunner when verl's driver stops\n"
    )
    from helpers import REPO, wandb_offline_runs

    for how in ("kill", "ask"):
        folder = tmp_path / how
        env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="offline", WANDB_DIR=str(folder),
                   WANDB_RUN_ID=f"run-{how}", WANDB_SILENT="true")
        folder.mkdir()
        subprocess.run([sys.executable, str(script), str(folder / "control"), how], env=env, timeout=120)
        runs = wandb_offline_runs(folder)
        answered = list((folder / "control").glob(f"{deadline_hook.TRACKERS_FINISHED}.*"))
        if how == "kill":
            assert not answered and (not runs or len(runs[0][1]) < 40), runs
        else:
            assert len(answered) == 1 and runs == [("run-ask", list(range(1, 41)))], runs
