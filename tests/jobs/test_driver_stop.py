"""How the chunk's driver stops its trainer: a trainer that has saved and logged its last step is let end by
itself (verl ends its W&B run as `fit` returns; a stop during that finish lost the run's last W&B step in CI),
any other is asked to end its W&B run and then interrupted.

The driver is the real one, on a real run folder made by `justrl_hpc.launch --create-only`. The trainer here
is a plain process standing in for verl's main_ppo only as a process: it exits by itself after a few seconds,
or at SIGINT, and says which; what verl does inside is proven by the cluster tests.
"""

from __future__ import annotations

import sys
import time

from helpers import launch_args, run_launch

from justrl_hpc.jobs.train.driver import Driver
from justrl_hpc.jobs.train.environment import ChunkInfo
from justrl_hpc.jobs.train.in_worker.deadline_hook import FINISH_TRACKERS
from justrl_hpc.jobs.train.trainer_process import TrainerProcess

ENDS_BY_ITSELF = (
    "import signal, sys, time\n"
    "out = sys.argv[1]\n"
    "def interrupted(*_):\n"
    "    open(out, 'w').write('interrupted'); sys.exit(130)\n"
    "signal.signal(signal.SIGINT, interrupted)\n"
    "time.sleep(4)\n"
    "open(out, 'w').write('ended by itself')\n"
)


def test_a_trainer_at_its_last_step_ends_by_itself_any_other_is_stopped(rehearsal_data, tmp_path):
    run_dir = tmp_path / "stop"
    made = run_launch(launch_args(rehearsal_data, run_dir, "--create-only", "--set", "recipe.trackers=[wandb]",
                                  steps=4), timeout=120)
    assert made.returncode == 0, made.stderr
    driver = Driver(ChunkInfo(run_dir, job_id="424242", restart=0, rank=0, nodes=1, hostnames=["n1"]))
    control = driver.info.control
    control.mkdir(parents=True, exist_ok=True)
    for saved, expected in (([2, 4], "ended by itself"), ([2, 3], "interrupted")):
        (control / FINISH_TRACKERS).unlink(missing_ok=True)
        said = tmp_path / f"said-{saved[-1]}"
        driver.saved_steps, driver.logged_step, driver.start_step = saved, saved[-1], 0
        driver.trainer = TrainerProcess([sys.executable, "-c", ENDS_BY_ITSELF, str(said)], tmp_path / "trainer.log",
                                        run_dir / "checkpoints", env={})
        driver.trainer.start()
        time.sleep(1)  # its SIGINT handler is set
        code = driver._stop_trainer(grace_s=8)
        assert said.read_text() == expected, code
        # Only a trainer that is being stopped is asked to end its W&B run first.
        asked = (control / FINISH_TRACKERS).exists()
        assert (code, asked) == ((0, False) if saved[-1] == 4 else (130, True)), (saved, code, asked)
    # What the trainer-exited line calls the stop: only a save of a logged step after the stop is `stopped`;
    # a wait that ran out with only an unlogged save retrains that step in the next chunk (the soak saw it
    # named `stopped`, a lossy ending under a planned name).
    driver.stop_requested_at_step = 4
    for saved, logged, ok, expected in (([5], 5, True, "stopped"), ([5, 6], 5, True, "stopped"),
                                        ([6], 5, True, "stopped-unlogged"), ([], 5, False, "stopped-unsaved")):
        driver.saved_steps, driver.trainer.last_step = saved, logged
        assert driver._stopped_as(ok) == expected, (saved, logged)


def test_a_trainer_that_ended_before_the_limit_signal_has_its_exit_in_the_ledger_once(rehearsal_data, tmp_path):
    """The soak's seed 2 (2026-12-07): the trainer died of a full disk, and the pre-limit signal came while the
    driver was still reading that ending (Ray's node verdict takes up to 40 s). The handler requeued; the ledger
    had no trainer-exited for that chunk (and the soak never freed its disk). Now the handler writes it, once."""
    from justrl_hpc.core.ledger import Ledger
    from justrl_hpc.jobs.train import slurm_log

    run_dir = tmp_path / "ended"
    made = run_launch(launch_args(rehearsal_data, run_dir, "--create-only", steps=4), timeout=120)
    assert made.returncode == 0, made.stderr
    driver = Driver(ChunkInfo(run_dir, job_id="434343", restart=0, rank=0, nodes=1, hostnames=["n1"]))
    driver.chunk, driver.start_step, driver.trainer_started_at = 1, 0, time.time()
    driver.slurm_marks = slurm_log.marks(driver.info.paths, driver.info.job_id)  # what run() sets first
    log = tmp_path / "trainer.log"
    crash = "import sys; print('RuntimeError: basic_ios::clear: iostream error'); sys.exit(1)"
    driver.trainer = TrainerProcess([sys.executable, "-c", crash], log, run_dir / "checkpoints", env={})
    driver.trainer.start()
    deadline = time.monotonic() + 30
    while driver.trainer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert driver.trainer.poll() == 1
    assert driver.stop_for_requeue()  # requeued: no save, a first chunk's crash is not yet a crash loop
    driver._exited_event(1, "crashed-other")  # the interrupted reading, reaching the same point: no second line
    events = [e for e in Ledger(run_dir).read() if e.get("job_id") == "434343"]
    kinds = [e["event"] for e in events]
    assert kinds.count("trainer-exited") == 1 and kinds.index("trainer-exited") < kinds.index("requeued"), kinds
    exited = events[kinds.index("trainer-exited")]
    assert exited["exit_code"] == 1 and exited["reason"].startswith("crashed"), exited
