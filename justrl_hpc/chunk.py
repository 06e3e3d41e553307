"""One chunk on the allocation: the submitit callable every task of the Slurm job runs.

Rank 0 (the driver) brings up Ray, verifies the checkpoint to resume from, runs the trainer with the job's end
time as verl's deadline, follows its steps and saves, and decides how the chunk ends: finished, stopped for a
requeue (pre-limit signal, preemption, save-now), or crashed (requeued until too many chunks make no progress).
Every other rank joins Ray and runs the node agent until the driver is done. Every transition is a ledger event.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from justrl_hpc import ray_cluster, slurm
from justrl_hpc.deadline_hook import CONTROL_ENV, DEADLINE_ENV
from justrl_hpc.ledger import Ledger
from justrl_hpc.recipe import ChunkContext, trainer_command
from justrl_hpc.rundir import atomic_write, load
from justrl_hpc.trainer import TrainerProcess, classify_exit, shield_from_slurm_signals

_ACTIVE: dict[str, Driver] = {}
POLL_S = 0.5


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} justrl-chunk: {msg}", flush=True)


@dataclass
class ChunkInfo:
    run_dir: Path
    job_id: str
    restart: int
    rank: int
    nodes: int
    hostnames: list[str]

    @classmethod
    def from_env(cls, run_dir: str) -> ChunkInfo:
        env = submitit.JobEnvironment()
        return cls(
            run_dir=Path(run_dir),
            # A requeued job keeps its id: the chain is one job id, its incarnations counted by Slurm.
            job_id=str(env.job_id).split("_")[0],
            restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            rank=env.global_rank,
            nodes=env.num_nodes,
            hostnames=list(env.hostnames),
        )

    @property
    def control(self) -> Path:
        return self.run_dir / "control"

    @property
    def done_file(self) -> Path:
        return self.control / f"done-{self.job_id}-{self.restart}"


class TrainChunk(submitit.helpers.Checkpointable):
    """What `launch` submits. Pickled by submitit; re-submitted as itself at every requeue."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        info = ChunkInfo.from_env(self.run_dir)
        if info.rank == 0:
            driver = Driver(info)
            _ACTIVE["driver"] = driver
            return driver.run()
        return run_node(info)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission | None:
        """submitit calls this on rank 0 when Slurm's pre-limit signal (or a USR2 preemption) arrives."""
        driver = _ACTIVE.get("driver")
        if driver is not None and not driver.stop_for_requeue():
            return None  # finished or failed for good: submitit then ends the job instead of requeueing
        if driver is not None and driver.successor is not None:
            return None  # no requeue on this cluster: the job ends and its chained successor takes over
        return submitit.helpers.DelayedSubmission(TrainChunk(self.run_dir))


def ignore_limit_signal(who: str) -> None:
    """From now on the pre-limit signal does nothing. SIG_IGN rather than a Python handler: Python puts its
    own handlers back to the default while the process exits, and a signal in that last moment would kill
    the task, which srun reports and Slurm turns into a FAILED job."""
    try:
        signal.signal(requeue_signal(), signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing of submitit's to keep out either
        return
    log(f"{who}: the run ended here; {requeue_signal().name} is ignored from now on")


def requeue_signal() -> signal.Signals:
    """The signal submitit's handler turns into checkpoint() + `scontrol requeue` (USR2 unless overridden)."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def ray_resources(resolved: Any) -> tuple[int, int]:
    """(CPUs, GPUs) each node's Ray advertises. On the CPU backend the GPUs are a count Ray schedules
    verl's workers by (nothing touches CUDA) and the CPUs logical: each of verl's placement bundles asks
    for several."""
    cpus, gpus = resolved.cluster.cpus_per_node, resolved.cluster.gpus_per_node
    if resolved.recipe.device == "cpu":
        return max(cpus, 16), resolved.recipe.ranks_per_node
    return cpus, gpus


def put_code_first(run_dir: Path) -> None:
    """The run's code snapshot ahead of whatever PYTHONPATH the job had, for every process this task
    starts from now on: `ray start`'s raylets pass it to verl's workers (the deadline hook, the backend)."""
    code = str(run_dir / "code")
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != code]
    os.environ["PYTHONPATH"] = os.pathsep.join([code, *parts])


def ip_of_this_node() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def start_agent(info: ChunkInfo) -> subprocess.Popen[bytes] | None:
    """The node telemetry agent (the monitor's eyes on this node); absent module → none, said once."""
    if importlib.util.find_spec("justrl_hpc.monitor.agent") is None:
        log("node agent not available in this code snapshot; no telemetry from this node")
        return None
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    logf = open(info.run_dir / "logs" / f"agent-{host}.log", "ab")
    parent = os.getpid()

    def preexec() -> None:
        shield_from_slurm_signals()
        # In its own session the agent outlives a chunk task that Slurm kills outright (a requeue ends the
        # other ranks within a second, before their cleanup runs) where process tracking is by process group:
        # it would sample a finished job's folder forever. Linux tells it when its parent goes (SIGINT = its
        # clean stop, the same as stop_process sends).
        _prctl_pdeathsig(signal.SIGINT)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "justrl_hpc.monitor.agent", "--run-dir", str(info.run_dir), "--host", host],
        stdout=logf,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=preexec,
    )
    logf.close()
    return proc


def _gb(n: float) -> str:
    """GB with enough digits that a small filesystem does not read as "0.0 GB"."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e9:.4f} GB"


def _prctl_pdeathsig(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG, sig): this process gets `sig` when the thread that forked it exits (Linux)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the agent then relies on stop_process and Slurm's process tracking


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # started ignoring SIGTERM
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def clean_stale(info: ChunkInfo) -> int:
    """End Ray left on this node by earlier incarnations of this job or by jobs that are gone."""
    active = set(slurm.active_job_ids())
    active.add(info.job_id)
    procs = ray_cluster.stale_processes(info.job_id, info.restart, active)
    if procs:
        log(f"ending {len(procs)} stale Ray processes left by earlier chunks on this node")
    return ray_cluster.kill_tree(procs)


def run_node(info: ChunkInfo) -> str:
    """Ranks ≥ 1: join the driver's Ray, run the node agent, wait until the driver is done."""
    resolved = load(info.run_dir)
    clean_stale(info)
    agent = start_agent(info)
    try:
        head = ray_cluster.read_head(
            info.control, info.job_id, info.restart, timeout_s=resolved.cluster.ray_wait_timeout_s
        )
        if head is None:
            log(f"rank {info.rank}: no Ray head published; the driver will report it")
            return "no-head"
        cpus, gpus = ray_resources(resolved)
        put_code_first(info.run_dir)
        own_ray = ray_cluster.join(
            head,
            info.rank,
            ip_of_this_node(),
            resolved.cluster.ray_port,
            cpus,
            gpus,
            info.run_dir / "logs" / f"ray-{info.job_id}.log",
        )
        while not info.done_file.exists():
            time.sleep(1.0)
        ignore_limit_signal(f"rank {info.rank} job {info.job_id}")
        ray_cluster.stop(own_ray)  # its own Ray: nothing of this chunk outlives it on this node
        return "done"
    finally:
        stop_process(agent)


class Driver:
    """Rank 0 of one chunk."""

    def __init__(self, info: ChunkInfo) -> None:
        self.info = info
        self.resolved = load(info.run_dir)
        self.ledger = Ledger(info.run_dir)
        events = self.ledger.read()
        self.chunk = 1 + sum(1 for e in events if e.get("event") == "started")
        self.first_chunk = not any(e.get("event") == "trainer-started" for e in events)
        self.target = self.resolved.recipe.total_training_steps
        self.trainer: TrainerProcess | None = None
        self.head: ray_cluster.RayHead | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.start_step: int | None = None
        self.saved_steps: list[int] = []
        self.logged_step: int | None = None  # the newest training step the trainer logged, this chunk
        self.stop_reason: str | None = None
        self.stop_requested_at_step: int | None = None
        self.ended = False
        self.end_time = slurm.job_end_time(info.job_id)
        self.successor: str | None = None  # the chained next chunk, on clusters that forbid requeue

    # -- ledger ---------------------------------------------------------------------------------------

    def event(self, name: str, step: int | None = None, **fields: Any) -> None:
        self.ledger.append(name, job_id=self.info.job_id, chunk=self.chunk, step=step, **fields)
        where = f" step {step}" if step is not None else ""
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("nodes_list",))
        log(
            f"run {self.resolved.run.name} job {self.info.job_id} chunk {self.chunk}: {name}{where} {extra}".rstrip()
        )
        if name in ("finished", "failed"):
            self._end_chain()

    # -- the dependency chain (clusters with requeue_allowed: false) ------------------------------------

    def _arm_successor(self) -> None:
        """Submit the next chunk now, to start once this job ends however it ends (afterany).

        Armed at the start rather than at the end so that a chunk killed outright (node failure, kill -9,
        preemption that cancels) still has a successor; a run that finishes or fails for good cancels it.
        """
        from justrl_hpc.submission import make_executor

        executor = make_executor(
            self.resolved, self.info.run_dir, self.info.nodes, dependency=f"afterany:{self.info.job_id}"
        )
        try:
            job = executor.submit(TrainChunk(str(self.info.run_dir)))
        except Exception as exc:  # sbatch's refusal arrives as a generic error from submitit
            lines = str(exc).strip().splitlines()
            self.event("chain-broken", reason=f"sbatch refused the next chunk: {lines[-1] if lines else exc}")
            return
        self.successor = str(job.job_id)
        # The successor's id as the event's job id: `launch --resume` and `status` see the live pending job.
        self.ledger.append("chained", job_id=self.successor, chunk=self.chunk, after=self.info.job_id)
        log(f"run {self.resolved.run.name} job {self.info.job_id} chunk {self.chunk}: chained job {self.successor}")

    def _end_chain(self) -> None:
        if self.successor is None:
            return
        successor, self.successor = self.successor, None
        ok = slurm.cancel(successor)
        self.ledger.append("chain-cancelled", job_id=successor, chunk=self.chunk, ok=ok)
        log(f"run {self.resolved.run.name} job {self.info.job_id}: cancelled chained job {successor} (ok={ok})")

    def _hand_over(self) -> None:
        """The chunk is done and the run goes on: requeue is Slurm's job, or the chained successor's."""
        if self.successor is None:
            spawn_releaser(self.info.job_id)

    # -- the chunk ------------------------------------------------------------------------------------

    def run(self) -> str:
        info, _res = self.info, self.resolved
        self.event(
            "started",
            restart=info.restart,
            nodes=info.nodes,
            hosts=",".join(info.hostnames),
            end_time=self.end_time,
        )
        signal.signal(signal.SIGTERM, self._on_sigterm)
        for name in ("stop", "save-now"):
            (info.control / name).unlink(missing_ok=True)
        if not self.resolved.cluster.requeue_allowed:
            self._arm_successor()
        clean_stale(info)
        self.agent = start_agent(info)
        try:
            outcome = self._bring_up_and_train()
        finally:
            if self.ended:
                self._ignore_late_limit_signal()
            self._teardown()
        return outcome

    def _ignore_late_limit_signal(self) -> None:
        """The run finished or failed for good: a pre-limit signal now (a chunk that ends near its limit)
        must not reach submitit, whose handler would raise inside the teardown, leave Ray running and end
        the job FAILED."""
        ignore_limit_signal(f"run {self.resolved.run.name} job {self.info.job_id}")

    def _bring_up_and_train(self) -> str:
        info, res = self.info, self.resolved
        t0 = time.time()
        cpus, gpus = ray_resources(res)
        put_code_first(info.run_dir)
        try:
            self.head = ray_cluster.start_head(
                info.job_id,
                info.restart,
                ip_of_this_node(),
                res.cluster.ray_port,
                cpus,
                gpus,
                info.run_dir / "logs" / f"ray-{info.job_id}.log",
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return self._crashed("crashed-node", f"Ray head did not start: {exc}")
        ray_cluster.publish_head(info.control, self.head, info.restart)
        seen, seen_gpus = ray_cluster.wait_for_nodes(
            self.head.address, info.nodes, gpus, res.cluster.ray_wait_timeout_s
        )
        if seen < info.nodes or seen_gpus < info.nodes * gpus:
            return self._crashed(
                "crashed-node",
                f"Ray saw {seen}/{info.nodes} nodes and {seen_gpus:g}/{info.nodes * gpus} GPUs after "
                f"{res.cluster.ray_wait_timeout_s} s",
            )
        self.event("ray-ready", nodes_seen=seen, gpus_seen=seen_gpus, seconds=round(time.time() - t0, 1))

        from justrl_hpc import checkpoints

        ckpt_dir = info.run_dir / "checkpoints"
        decision = checkpoints.prepare_resume(
            ckpt_dir, res.recipe.world_size, ledger=self.ledger, job_id=info.job_id, chunk=self.chunk
        )
        if not decision.ok:
            self.event("failed", reason=f"no checkpoint to resume from: {decision.reason}")
            return "failed"
        self.start_step = decision.step or 0
        if self.start_step >= self.target:
            # The previous chunk saved the target step as it was being stopped: nothing left to train.
            self.event("finished", step=self.start_step, note="target already saved")
            self.ended = True
            return "finished"
        if decision.step is None and not self.first_chunk:
            log("no checkpoint yet: the trainer starts from step 0")
        self._retention()
        need = int(checkpoints.newest_size(ckpt_dir, res.recipe.world_size) * 1.1 + res.cluster.min_free_disk_gb * 1e9)
        ok, free = checkpoints.disk_check(ckpt_dir, need)
        if not ok:
            # A save into a full filesystem tears the checkpoint; better to stop and say so than to train on.
            self.event("failed", step=self.start_step,
                       reason=f"{ckpt_dir} has {_gb(free)} free; the next checkpoint plus "
                       f"cluster.min_free_disk_gb needs {_gb(need)}: free space there, then "
                       "`python -m justrl_hpc.launch --resume RUN`")
            self.ended = True
            return "failed"

        chunk_ctx = ChunkContext(first_chunk=self.first_chunk, deadline_epoch=self.end_time)
        env = dict(os.environ)
        env.update(
            {
                "RAY_ADDRESS": self.head.address,
                CONTROL_ENV: str(info.control),
                "TENSORBOARD_DIR": str(info.run_dir / "tensorboard"),
            }
        )
        if self.end_time:
            env[DEADLINE_ENV] = str(int(self.end_time))
        cmd = trainer_command(res, info.run_dir, chunk_ctx)
        cmd[0] = sys.executable
        self.trainer = TrainerProcess(cmd, info.run_dir / "logs" / "trainer.log", ckpt_dir, env,
                                      cwd=info.run_dir / "logs")
        self.trainer.start()
        self.event(
            "trainer-started",
            step=self.start_step,
            pid=self.trainer.pid,
            seconds_since_start=round(time.time() - t0, 1),
        )
        return self._supervise()

    def _supervise(self) -> str:
        assert self.trainer is not None
        while True:
            self._follow()
            if (self.info.control / "save-now").exists() and self.stop_reason is None:
                self.request_stop("save-now")
            if self.stop_reason and self._saved_since_stop():
                return self._requeue_self()
            code = self.trainer.poll()
            if code is not None:
                self._follow()
                return self._trainer_exited(code)
            time.sleep(POLL_S)

    def _follow(self) -> None:
        """Ledger events for steps logged and checkpoints written since the last look."""
        assert self.trainer is not None
        for step in self.trainer.new_steps():
            self.event("step", step=step)
            self.logged_step = step if self.logged_step is None else max(self.logged_step, step)
        tracked = self.trainer.tracker_step()
        if tracked is not None and tracked not in self.saved_steps and tracked > (self.start_step or 0):
            from justrl_hpc import checkpoints

            step_dir = self.info.run_dir / "checkpoints" / f"global_step_{tracked}"
            verdict = checkpoints.verify(step_dir, self.resolved.recipe.world_size)
            if verdict.ok:
                self.saved_steps.append(tracked)
                self.event("saved", step=tracked, bytes=verdict.bytes)
                self._retention()

    def _saved_since_stop(self) -> bool:
        """Some verified save after the step in flight when the stop came, whose step is logged.

        Any such save, not the newest: after a stop request verl saves every step, so a fast trainer's
        newest save is always one step ahead of its log, and waiting for the newest to be logged never ends.
        """
        if not self.saved_steps or self.trainer is None:
            return False
        asked = self.stop_requested_at_step if self.stop_requested_at_step is not None else -1
        logged = self.trainer.last_step or 0
        return any(asked < s <= logged for s in self.saved_steps)

    def _retention(self) -> None:
        from justrl_hpc import checkpoints

        run = self.resolved.run
        deleted = checkpoints.apply_retention(
            self.info.run_dir / "checkpoints",
            self.resolved.recipe.world_size,
            run.keep_last,
            run.keep_every,
            protect=set(),
        )
        if deleted:
            log(f"retention deleted checkpoints {deleted}")

    # -- stopping -------------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.stop_requested_at_step = self.trainer.last_step if self.trainer else None
        atomic_write(self.info.control / "stop", json.dumps({"reason": reason, "time": time.time()}))
        self.event("stop-requested", step=self.stop_requested_at_step, reason=reason)

    def wait_for_save(self, budget_s: float) -> bool:
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            self._follow()
            if self._saved_since_stop():
                return True
            if self.trainer is None or self.trainer.poll() is not None:
                self._follow()
                return self._saved_since_stop()
            time.sleep(POLL_S)
        return False

    def _save_budget(self, grace_s: float | None = None) -> float:
        left = (
            (self.end_time - time.time() - 10)
            if self.end_time
            else float(self.resolved.cluster.signal_lead_s)
        )
        if grace_s is not None:
            left = min(left, grace_s - 10)
        return max(left, 0.0)

    def stop_for_requeue(self) -> bool:
        """Pre-limit signal or USR2 preemption: save at the next step, stop, and let submitit requeue.

        Returns False when the run must not be requeued (it already finished or failed for good).
        """
        if self.ended:
            return False
        timed_out = (
            self.end_time is not None
            and time.time() >= self.end_time - self.resolved.cluster.signal_lead_s - 90
        )
        if self.trainer is not None and self.trainer.poll() is None:
            self.request_stop("time-limit" if timed_out else "preempted")
            saved = self.wait_for_save(self._save_budget())
            code = self.trainer.stop()
            self._follow()
            self._exited_event(code, "stopped" if saved else "stopped-unsaved")
        if self._reached_target():
            self.event("finished", step=self._last_saved())
            self.ended = True
            self._teardown()
            return False
        if not self.saved_steps and self._give_up(self.stop_reason or "signal", "the chunk ended before a save"):
            self._teardown()
            return False
        via = {"chained_to": self.successor} if self.successor else {}
        self.event("requeued", step=self._last_saved(), reason=self.stop_reason or "signal", **via)
        self.ended = True
        self._teardown()
        self._hand_over()
        return True

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """SIGTERM-only preemption (submitit ignores SIGTERM): save within the grace, stop, exit.

        Slurm requeues a preempted job itself when the partition says so; a cancelled job stays cancelled.
        """
        if self.ended:
            return
        if self.trainer is not None and self.trainer.poll() is None:
            self.request_stop("sigterm")
            saved = self.wait_for_save(self._save_budget(self.resolved.cluster.preempt_grace_s))
            code = self.trainer.stop(grace_s=5)
            self._follow()
            self._exited_event(code, "stopped" if saved else "stopped-unsaved")
        self.ended = True
        self._teardown()
        # A preemption with PreemptMode=REQUEUE brings the job back after Slurm's hold; release it early.
        self._hand_over()
        sys.exit(143)

    def _requeue_self(self) -> str:
        """save-now: the save is done; stop the trainer and requeue through submitit's own path (USR2)."""
        assert self.trainer is not None
        code = self.trainer.stop()
        self._follow()
        self._exited_event(code, "stopped")
        self.trainer = None
        if self._reached_target():
            self.event("finished", step=self._last_saved())
            self.ended = True
            return "finished"
        os.kill(os.getpid(), requeue_signal())
        time.sleep(60)  # submitit's handler requeues and exits the process
        return "requeued"

    # -- endings --------------------------------------------------------------------------------------

    def _reached_target(self) -> bool:
        return (self._last_saved() or 0) >= self.target

    def _last_saved(self) -> int | None:
        """The newest verified save whose step was logged: what the next chunk resumes from. verl saves a
        step before logging it, so a save newer than the log is set aside at the next start
        (checkpoints.prepare_resume) and its step retrained."""
        logged = [s for s in self.saved_steps if self.logged_step is not None and s <= self.logged_step]
        return max(logged) if logged else self.start_step

    def _exited_event(self, code: int | None, reason: str) -> None:
        assert self.trainer is not None
        steps = self.trainer.steps_seen
        self.event(
            "trainer-exited",
            step=self.trainer.last_step,
            exit_code=code,
            reason=reason,
            first_step=steps[0] if steps else None,
            last_saved=self._last_saved(),
            progress=bool(self.saved_steps),
        )

    def _trainer_exited(self, code: int) -> str:
        assert self.trainer is not None
        reached = self._reached_target()
        reason = classify_exit(code, reached, self.trainer.log_tail())
        if reason == "crashed-other" and self._checkpoint_disk_full():
            reason = "crashed-disk"  # torch.save reports ENOSPC as "iostream error", so look at the disk itself
        self._exited_event(code, reason)
        if reason == "finished":
            self.event("finished", step=self.target)
            self.ended = True
            return "finished"
        if self.stop_reason and self._saved_since_stop():
            return self._requeue_self()
        return self._crashed(reason, f"trainer exited with status {code}")

    def _checkpoint_disk_full(self) -> bool:
        """Less room left where checkpoints go than the newest checkpoint takes."""
        from justrl_hpc import checkpoints

        ckpt_dir = self.info.run_dir / "checkpoints"
        size = checkpoints.newest_size(ckpt_dir, self.resolved.recipe.world_size)
        return size > 0 and not checkpoints.disk_check(ckpt_dir, size)[0]

    def _no_progress_streak(self) -> int:
        """Chunks started since the last verified save (or since the last submission), this one included."""
        streak = 0
        for e in reversed(self.ledger.read()):
            if e.get("event") in ("saved", "submitted"):
                break
            if e.get("event") == "started":
                streak += 1
        return streak

    def _give_up(self, reason: str, detail: str) -> bool:
        """True (and a `failed` event) when too many chunks in a row ended without a new checkpoint."""
        streak, cap = self._no_progress_streak(), self.resolved.run.max_no_progress_chunks
        if streak < cap:
            log(f"{reason}: {detail}; requeueing ({streak}/{cap} chunks without progress)")
            return False
        self.event("failed", step=self._last_saved(),
                   reason=f"{streak} chunks in a row made no progress; last: {reason} ({detail}); "
                   "resubmit with `python -m justrl_hpc.launch --resume RUN` after fixing it")
        self.ended = True
        return True

    def _crashed(self, reason: str, detail: str) -> str:
        """Requeue after a crash, unless too many chunks in a row made no progress."""
        if self.trainer is None:  # never got to start the trainer
            self.ledger.append("chunk-failed", job_id=self.info.job_id, chunk=self.chunk, reason=reason,
                               detail=detail)
        if self._give_up(reason, detail):
            return "failed"
        self.stop_reason = reason
        self.trainer = None
        os.kill(os.getpid(), requeue_signal())
        time.sleep(60)  # submitit's handler requeues and exits the process
        return "requeued"

    def _teardown(self) -> None:
        if self.trainer is not None and self.trainer.poll() is None:
            self.trainer.stop()
        try:
            self.info.done_file.parent.mkdir(parents=True, exist_ok=True)
            self.info.done_file.touch()
        except OSError:
            pass
        if self.head is not None:
            ray_cluster.stop(self.head.temp_dir)
            self.head = None
        stop_process(self.agent)
        self.agent = None
        (self.info.control / "stop").unlink(missing_ok=True)


def spawn_releaser(job_id: str) -> None:
    """Make the requeued job eligible at once instead of after Slurm's ~120 s BeginTime hold.

    It must outlive this job: it runs in its own session and is orphaned at once (a shell starts it in the
    background and exits), so process tracking by descent (proctrack/linuxproc, pgid) no longer finds it
    among the job's processes when the requeue kills them. Where cgroups hold it anyway, Slurm's hold
    applies and `launch --wait` releases the job from outside.
    """
    sh = subprocess.Popen(
        ["/bin/sh", "-c", '"$@" &', "justrl-releaser", sys.executable, "-m", "justrl_hpc.release", job_id],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        sh.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def main(argv: list[str]) -> int:
    """`srun python -m justrl_hpc.chunk RUN_DIR`: one chunk without submitit (sbatch/train.sbatch).

    Does what submitit's runner does around the callable: on the pre-limit signal, rank 0 checkpoints and
    requeues the job with `scontrol requeue`; other ranks only note it.
    """
    if len(argv) != 1:
        print("usage: python -m justrl_hpc.chunk RUN_DIR", file=sys.stderr)
        return 2
    chunk = TrainChunk(argv[0])
    rank = int(os.environ.get("SLURM_PROCID", "0"))

    def on_signal(signum: int, frame: Any) -> None:
        if rank != 0:
            log(f"rank {rank}: got {signal.Signals(signum).name}; rank 0 saves and requeues")
            return
        if chunk.checkpoint() is not None:
            job_id = os.environ.get("SLURM_JOB_ID", "")
            if not slurm.requeue(job_id):
                log(f"scontrol requeue {job_id} failed; resubmit with launch --resume")
        sys.exit(0)

    signal.signal(requeue_signal(), on_signal)
    outcome = chunk()
    log(f"chunk ended: {outcome}")
    return 0 if outcome in ("finished", "done", "requeued") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
