"""Slurm's own words for a crash: classified (trainer_process.classify_exit) and read where Slurm writes them,
the job's stderr files under the run's logs (jobs/train/slurm_log.py), never verl's trainer log.

The lines are Slurm's: cgroup v1 (`oom-kill event(s) in StepId=… cgroup`, and `in step …` before 21.08), cgroup
v2 (`oom_kill event in StepId=…`), srun's per-task summary, the memory enforcer, and the node-failure lines of
srun and slurmstepd.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from justrl_hpc.core.paths import RunPaths
from justrl_hpc.jobs.train import slurm_log
from justrl_hpc.jobs.train.trainer_process import classify_exit

OOM_V1 = ("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=1234.0 cgroup. Some of your processes may "
          "have been killed by the cgroup out-of-memory handler.")
OOM_BATCH = ("slurmstepd: error: Detected 1 oom-kill event(s) in StepId=1234.batch. Some of your processes may have "
             "been killed by the cgroup out-of-memory handler.")
OOM_OLD = ("slurmstepd: error: Detected 3 oom-kill event(s) in step 1234.0 cgroup. Some of your processes may have "
           "been killed by the cgroup out-of-memory handler.")
OOM_V2 = "slurmstepd: error: Detected 1 oom_kill event in StepId=1234.0. Some of the step tasks have been OOM Killed."
OOM_SRUN = "srun: error: n3: task 2: Out Of Memory"
OOM_LIMIT = "slurmstepd: error: StepId=1234.0 exceeded memory limit (1031865548800 > 1030792151040), being killed"
NODE_SRUN = "srun: error: Node failure on n3"
NODE_JOB = ("slurmstepd: error: *** JOB 1234 ON n1 CANCELLED AT 2026-12-06T10:00:00 DUE TO NODE FAILURE, SEE SLURMCTLD "
            "LOG FOR DETAILS ***")
NODE_STEP = "slurmstepd: error: *** STEP 1234.0 ON n1 CANCELLED AT 2026-12-06T10:00:00 DUE TO NODE FAILURE ***"
# What the ranks left behind print once Slurm has killed a process or lost a node: read alone, NCCL or a node.
NCCL_AFTER = "[Rank 3] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=88, OpType=ALLREDUCE)"
RAY_AFTER = ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task. Some common "
             "causes include: (1) the process was killed by the OOM killer due to high memory usage")


@pytest.mark.parametrize(
    ("slurm", "log", "reason"),
    [
        (OOM_V1, "", "crashed-oom"),  # alone: no `srun … Out Of Memory` line beside it
        (OOM_BATCH, "", "crashed-oom"),
        (OOM_OLD, "", "crashed-oom"),
        (OOM_V2, "", "crashed-oom"),
        (OOM_SRUN, "", "crashed-oom"),
        (OOM_LIMIT, "", "crashed-oom"),
        (NODE_SRUN, "", "crashed-node"),
        (NODE_JOB, "", "crashed-node"),
        (NODE_STEP, "", "crashed-node"),
        # Slurm's statement outranks what it caused in the trainer's log.
        (OOM_V1, RAY_AFTER, "crashed-oom"),
        (OOM_V1, NCCL_AFTER, "crashed-oom"),
        (NODE_SRUN + "\n" + NODE_JOB, NCCL_AFTER, "crashed-node"),
        # The same lines reach the classifier in a log tail too.
        ("", OOM_V1, "crashed-oom"),
        ("", NODE_SRUN, "crashed-node"),
        # Slurm's other endings are no crash class of their own.
        ("slurmstepd: error: *** JOB 1234 ON n1 CANCELLED AT 2026-12-06T10:00:00 DUE TO TIME LIMIT ***", "",
         "crashed-other"),
        ("slurmstepd: error: *** JOB 1234 ON n1 CANCELLED AT 2026-12-06T10:00:00 DUE TO PREEMPTION ***", "",
         "crashed-other"),
        ("", NCCL_AFTER, "crashed-nccl"),
    ],
)
def test_slurms_own_words_classify(slurm: str, log: str, reason: str) -> None:
    assert classify_exit(-9, False, log, slurm) == reason


def test_only_slurms_lines_are_kept_from_files_the_driver_also_writes() -> None:
    text = "\n".join(["chunk 2: trainer-exited reason=crashed-other", "MemoryError in the driver's own traceback",
                      OOM_V2, "submitit INFO (2026-12-06 10:00:00) - Starting with JobEnvironment", NODE_SRUN])
    assert slurm_log.slurm_lines(text) == [OOM_V2, NODE_SRUN]


def _append(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write("".join(f"{line}\n" for line in lines))


def test_reads_this_jobs_stderr_files_since_the_chunk_began(tmp_path: Path) -> None:
    """Job 1234 ran once (OOM-killed), was requeued (same id, same appended files), and this incarnation lost
    node n3. From the marks taken at its start only its own ending counts; without marks the files' tails still
    say how the earlier incarnation ended. Other jobs' files and verl's trainer log are not read."""
    paths = RunPaths(tmp_path / "run")
    submitit = paths.logs / "submitit" / "1234"
    batch, task1 = submitit / "1234_0_log.err", submitit / "1234_1_log.err"
    _append(batch, "submitit INFO - Starting", OOM_BATCH)
    _append(task1, OOM_V1)
    _append(paths.logs / "submitit" / "999" / "999_0_log.err", NODE_SRUN)  # another job of the run
    _append(paths.trainer_log, NODE_JOB)  # not where Slurm writes
    assert paths.slurm_stderr("1234") == [batch, task1]

    marks = slurm_log.marks(paths, "1234")
    assert slurm_log.slurm_said(paths, "1234", since=marks) == ""
    _append(batch, "submitit INFO - Starting", "driver: chunk 2 started", NODE_SRUN)
    task2 = submitit / "1234_2_log.err"  # a task file this incarnation made: read whole
    _append(task2, NODE_STEP)
    said = slurm_log.slurm_said(paths, "1234", since=marks)
    assert said.splitlines() == [NODE_SRUN, NODE_STEP]
    assert classify_exit(1, False, NCCL_AFTER, said) == "crashed-node"

    everything = slurm_log.slurm_said(paths, "1234")
    assert everything.splitlines() == [OOM_BATCH, NODE_SRUN, OOM_V1, NODE_STEP]
    assert classify_exit(None, False, "", everything) == "crashed-oom"
    # train.sbatch's layout: srun's per-task files under logs/sbatch/.
    _append(paths.sbatch_logs / "77_0_log.err", OOM_SRUN)
    assert slurm_log.slurm_said(paths, "77") == OOM_SRUN
    assert slurm_log.slurm_said(paths, "404") == ""


# Seen on this machine's dev cluster (Debian's Slurm 22.05.8, several slurmd on one host name their stepd
# `slurmstepd-<node>`), from a step that outgrew its 2000 MB job limit under ConstrainRAMSpace, 2026-12-07.
OOM_DEV_CLUSTER = ("slurmstepd-n1: error: Detected 1 oom-kill event(s) in StepId=3.2. Some of your processes may "
                   "have been killed by the cgroup out-of-memory handler.")


def test_a_chunk_killed_outright_is_told_by_the_next_from_slurms_lines(tmp_path: Path) -> None:
    from justrl_hpc.core.ledger import Ledger

    paths = RunPaths(tmp_path)
    led = Ledger(tmp_path)
    led.append("started", job_id="77", chunk=1)
    led.append("requeued", job_id="77", chunk=1, reason="time-limit")
    assert slurm_log.lost_chunk(led.read(), paths) is None  # it ended with a word of its own
    led.append("started", job_id="77", chunk=2)
    led.append("step", job_id="77", chunk=2, step=3)
    # Killed outright: no ending in the ledger, and nothing from Slurm either.
    assert slurm_log.lost_chunk(led.read(), paths) == {"job_id": "77", "chunk": 2, "reason": "killed",
                                                       "slurm_said": None}
    err = Path(str(paths.submitit).replace("%j", "77")) / "77_0_log.err"
    err.parent.mkdir(parents=True, exist_ok=True)
    err.write_text("a driver line\n" + OOM_DEV_CLUSTER + "\n")
    lost = slurm_log.lost_chunk(led.read(), paths)
    assert lost is not None and lost["reason"] == "crashed-oom" and lost["slurm_said"] == OOM_DEV_CLUSTER
    led.append("chunk-lost", **lost)
    assert slurm_log.lost_chunk(led.read(), paths) is None  # told once
