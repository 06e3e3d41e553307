"""Following a trainer from outside: its console step lines, its tracker file, its exit."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

from justrl_hpc.jobs.train.trainer_process import TrainerProcess, classify_exit

# A real verl console line (verl/utils/logger/aggregate_logger.py format, via Ray's actor prefix).
VERL_LINE = (
    "(TaskRunner pid=812) step:12 - actor/entropy:1.31 - critic/score/mean:-0.2 - "
    "timing_s/step:301.2 - response_length/mean:7421.5"
)
VAL_LINE = "(TaskRunner pid=812) step:50 - val-core/aime24/acc/mean@32:0.29"


def test_follows_steps_and_tracker_of_a_real_process(tmp_path):
    script = textwrap.dedent(f"""
        import time, os
        print({VAL_LINE!r}, flush=True)
        for s in (1, 2, 3):
            print(f"step:{{s}} - actor/entropy:1.3 - timing_s/step:0.1", flush=True)
            time.sleep(0.05)
        os.makedirs({str(tmp_path / "ckpt")!r}, exist_ok=True)
        open({str(tmp_path / "ckpt" / "latest_checkpointed_iteration.txt")!r}, "w").write("3")
        print("step:4 - actor/entropy:1.3 - timing_s/st", end="", flush=True)  # a line cut mid-write
        time.sleep(0.3)
        print("ep:0.1", flush=True)
    """)
    t = TrainerProcess(
        [sys.executable, "-c", script], tmp_path / "logs" / "trainer.log", tmp_path / "ckpt", dict(os.environ)
    )
    t.start()
    seen: list[int] = []
    while t.poll() is None:
        seen += t.new_steps()
    seen += t.new_steps()
    assert seen == [1, 2, 3, 4]  # the validation line at step 50 is not a training step
    assert t.tracker_step() == 3
    assert t.poll() == 0


def test_stop_ends_the_whole_process_group(tmp_path):
    script = "import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(300)']); time.sleep(300)"
    t = TrainerProcess([sys.executable, "-c", script], tmp_path / "t.log", tmp_path, dict(os.environ))
    t.start()
    import time

    import psutil

    time.sleep(1.0)
    children = psutil.Process(t.pid).children(recursive=True)
    assert children
    code = t.stop(grace_s=2)
    assert code is not None
    psutil.wait_procs(children, timeout=5)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_step_line_matches_verl():
    from justrl_hpc.jobs.train.trainer_process import STEP_LINE

    assert STEP_LINE.search(VERL_LINE).group(1) == "12"
    assert STEP_LINE.search(VAL_LINE) is None


def test_classify_exit():
    assert classify_exit(0, True, "") == "finished"
    assert classify_exit(0, False, "") == "exited-early"  # a "resume" that trained nothing is no success
    assert classify_exit(1, False, "torch.OutOfMemoryError: CUDA out of memory.") == "crashed-oom"
    assert classify_exit(1, False, "[Rank 3] Watchdog caught collective operation timeout") == "crashed-nccl"
    disk_full = "OSError: [Errno 28] No space left on device\nray.exceptions.ActorDiedError: The actor died"
    assert classify_exit(1, False, disk_full) == "crashed-disk"  # not a node crash: the disk filled up
    assert classify_exit(1, False, "ray.exceptions.NodeDiedError: node abc died") == "crashed-node"
    # What the rehearsal printed when test_faults killed a node under it (Ray's actor on that node gone).
    lost = ("ray.exceptions.ActorUnavailableError: The actor d3e5bd6c is unavailable: The actor is temporarily "
            "unavailable: RpcError: RPC error: failed to connect to all addresses")
    assert classify_exit(1, False, lost) == "crashed-node"
    # Ray's death messages name the OOM killer as a *possible* cause; CI once read a lost node as OOM from them.
    hedged = (
        "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task. The actor is dead "
        "because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly "
        "exits with a connection error code 2. End of file. Some common causes include: (1) the process was killed "
        "by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the worker crashed "
        "unexpectedly due to SIGSEGV or another unexpected error.\n"
        "Termination is unexpected. Possible reasons include: (1) SIGKILL by the user or system OOM killer, (2) "
        "Invalid memory access from Raylet causing SIGSEGV or SIGBUS, (3) Other termination signals."
    )
    assert classify_exit(1, False, hedged) == "crashed-node"
    # Definite OOMs still read as OOM: Ray's memory monitor, the kernel's own line.
    ray_oom = "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory."
    assert classify_exit(1, False, ray_oom + "\n" + hedged) == "crashed-oom"
    assert classify_exit(-9, False, "Out of memory: Killed process 4242 (python)") == "crashed-oom"
    assert classify_exit(-9, False, "python invoked oom-killer: gfp_mask=0x140dca, order=0") == "crashed-oom"
    assert classify_exit(-9, False, "step:5 - timing_s/step:1.0") == "crashed-other"


def test_a_killed_worker_and_a_lost_node_read_apart_in_recorded_real_tails():
    tails = Path(__file__).resolve().parents[1] / "data" / "ray_crash_tails"
    worker = (tails / "worker_killed.log").read_text(errors="replace")
    node = (tails / "node_lost.log").read_text(errors="replace")
    assert classify_exit(1, False, worker) == "crashed-worker"
    assert classify_exit(1, False, node) == "crashed-node"
    # Slurm's own word for a lost node wins over the worker deaths it causes.
    assert classify_exit(1, False, worker, "srun: error: Node failure on n2") == "crashed-node"


def test_node_agent_stops_cleanly_when_its_chunk_task_is_killed(tmp_path):
    """A requeue kills the other ranks' tasks outright; their node agents (own session) must not linger."""
    import json
    import signal
    import subprocess
    import time
    from pathlib import Path

    (tmp_path / "logs").mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from justrl_hpc.jobs.train.driver import ChunkInfo, start_agent
            info = ChunkInfo(Path({str(tmp_path)!r}), "77", 0, 1, 2, ["n1", "n2"])
            print(start_agent(info).pid, flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, SLURMD_NODENAME="n2", PYTHONPATH=str(Path(__file__).resolve().parents[2])),
    )
    agent = int(parent.stdout.readline())
    telemetry = tmp_path / "telemetry" / "n2.jsonl"
    deadline = time.monotonic() + 60
    while not (telemetry.exists() and telemetry.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline, "the agent wrote no sample"
        time.sleep(0.2)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{agent}") and "Z" not in open(f"/proc/{agent}/stat").read().split()[2]:
        assert time.monotonic() < deadline, "the agent outlived its chunk task"
        time.sleep(0.2)
    last = json.loads(telemetry.read_text().splitlines()[-1])
    assert last.get("final") is True  # it stopped the clean way, so the monitor does not call it silent
