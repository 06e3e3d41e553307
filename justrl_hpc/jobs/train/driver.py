"""Rank 0 of one chunk on the allocation (entry.TrainChunk hands it over): it brings up Ray, verifies the
checkpoint to resume from, runs the trainer with the job's end time as verl's deadline, follows its steps and
saves, gathers the facts of how the chunk ends and carries out what chunk_policy decides (finish, requeue,
restart in the job, leave a node out, fail). Every other rank joins Ray and runs the node agent until the driver
is done (nodes.run_node). Every transition is a ledger event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from justrl_hpc.core import checkpoints, exclusions, slurm, slurm_act
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.core.recipe import ChunkContext, trainer_command
from justrl_hpc.core.run_folder import atomic_write, load
from justrl_hpc.jobs.train import (
    chunk_policy,
    cleanup,
    preflight,
    ray_cluster,
    slurm_log,
    stacks,
    successor,
)
from justrl_hpc.jobs.train.addresses import AddressError, address_env, node_address
from justrl_hpc.jobs.train.after_save import AfterSave
from justrl_hpc.jobs.train.environment import ChunkInfo, log, node_name
from justrl_hpc.jobs.train.in_worker.deadline_hook import (
    CONTROL_ENV,
    DEADLINE_ENV,
    clear_tracker_requests,
    request_tracker_finish,
)
from justrl_hpc.jobs.train.nodes import clean_stale, put_code_first, ray_resources, start_agent, stop_process
from justrl_hpc.jobs.train.recovery import RESTART, Recovery
from justrl_hpc.jobs.train.release import spawn_releaser
from justrl_hpc.jobs.train.signals import ignore_limit_signal, requeue_signal
from justrl_hpc.jobs.train.trainer_process import TrainerProcess, classify_exit

POLL_S = 0.5
TRACKER_FINISH_S = 10.0  # how long a stop waits for W&B to end its run (wandb.finish takes ~1 s offline)
FINAL_EXIT_S = 60.0  # how long a stop lets a trainer that reached its target end by itself
EVAL_SUBMIT_WAIT_S = 30.0  # how long the teardown waits for an evaluation's submission in flight


class Driver(Recovery):
    """Rank 0 of one chunk (restarts in the job and a hang's stacks: recovery.py)."""

    def __init__(self, info: ChunkInfo) -> None:
        self.info = info
        self.resolved = load(info.run_dir)
        self.ledger = Ledger(info.run_dir)
        events = self.ledger.read()
        self.chunk = 1 + sum(1 for e in events if e.get("event") == "started")
        self.first_chunk = not any(e.get("event") == "trainer-started" for e in events)
        self.target = self.resolved.recipe.total_training_steps
        self.trainer: TrainerProcess | None = None
        self._exit_recorded: TrainerProcess | None = None  # the trainer whose trainer-exited is in the ledger
        self.head: ray_cluster.RayHead | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.start_step: int | None = None
        self.saved_steps: list[int] = []
        self.logged_step: int | None = None  # the newest training step the trainer logged, this chunk
        self.trainer_started_at: float | None = None
        self._steps_via_tensorboard: set[int] = set()
        self.stop_reason: str | None = None
        self.stop_requested_at_step: int | None = None
        self.ended = False
        self.end_time = slurm.job_end_time(info.job_id)
        self.chunk_started_at = time.time()
        self.successor: str | None = None  # the chained next chunk, on clusters that forbid requeue
        self.restarts_in_job = 0
        self.after_save = AfterSave(self.resolved, info.run_dir, info.paths.checkpoints, info.job_id, self.chunk)
        self.step_times: list[float] = []  # when this trainer's steps were logged (a restart's start-up estimate)
        self.hang_dumped = False  # this trainer's stacks were taken once already

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

    # -- the dependency chain (clusters with requeue_allowed: false): jobs/train/successor.py ------------------

    def _arm_successor(self, exclude: str | None = None) -> None:
        self.successor = successor.arm(self.resolved, self.info, self.ledger, self.chunk, self.event, exclude)

    def _end_chain(self) -> None:
        if (job := self.successor) is not None:
            self.successor = None
            successor.cancel(job, self.resolved.run.name, self.info.job_id, self.ledger, self.chunk)

    def _hand_over(self) -> None:  # the run goes on: requeue is Slurm's job, or the chained successor's
        if self.successor is None:
            spawn_releaser(self.info.job_id)

    # -- the chunk ------------------------------------------------------------------------------------

    def run(self) -> str:
        info, res = self.info, self.resolved
        try:
            self.address, how = node_address(res.cluster.network_interface, None, info.nodes)
            self.address_error: str | None = None
        except AddressError as exc:
            self.address, how, self.address_error = None, None, str(exc)
        os.environ.update(address_env(res.cluster.network_interface, self.address, how))  # Ray's workers inherit it
        if lost := slurm_log.lost_chunk(self.ledger.read(), info.paths):  # how Slurm says the last one ended
            self.ledger.append("chunk-lost", **lost)
        self.slurm_marks = slurm_log.marks(info.paths, info.job_id)
        self.event("started", restart=info.restart, nodes=info.nodes, hosts=",".join(info.hostnames),
                   end_time=self.end_time, address=self.address, address_from=how)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        for request in (info.paths.stop, info.paths.save_now):
            request.unlink(missing_ok=True)
        clear_tracker_requests(info.control)
        stacks.forget_registrations(info.control, info.job_id, info.restart)
        if not self.resolved.cluster.requeue_allowed:
            self._arm_successor()
        self.mark = cleanup.Mark(cleanup.run_id(info.run_dir), info.job_id, info.restart, node_name())
        self._cleanup_event("start", cleanup.at_start(self.mark, info.control, set(slurm.active_job_ids()) | {info.job_id}))
        clean_stale(info)
        self.agent = start_agent(info, self.resolved.cluster.nvml_backend)
        try:
            outcome = self._preflight() or self._bring_up_and_train()
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

    def _preflight(self) -> str | None:
        """Every node's checks before Ray; None when all passed, else how the chunk ended."""
        info, res = self.info, self.resolved
        put_code_first(info.run_dir)
        results = [preflight.on_this_node(res, info.run_dir, self.ledger, info.job_id, self.chunk, info.rank),
                   *preflight.gather(info.control, info.job_id, info.restart, info.nodes, preflight.gather_timeout_s(res))]
        reason = preflight.verdict(results, info.run_dir)
        if reason is None:
            return None
        excluded = tuple(exclusions.active(self.ledger.read(), time.time()))
        action = self._decide("preflight", reason=reason, detail=reason,
                              **preflight.policy_facts(results, info.nodes, excluded, res.cluster))
        if action.kind == "exclude":
            return self._exclude(action)
        if "would_exclude" in action.notes:
            self.event("would-exclude", nodes=action.notes["would_exclude"], evidence=action.notes["evidence"])
        return self._act(action)

    def _exclude(self, action: chunk_policy.Action) -> str:
        """End this job and leave the run to a chained job (afterany) whose --exclude holds the bad nodes beside
        the person's own. Not a requeue: Slurm sets ExcNodeList only on a pending job, and a requeued one turns
        pending only after this process is gone (docs/chunks.md)."""
        now = time.time()
        nodes = action.notes["nodes"]
        exclude = exclusions.job_list(self.ledger.read(), now, nodes.split(","))  # with the person's own
        self.event("excluded", nodes=nodes, exclude=exclude, evidence=action.notes["evidence"],
                   until=round(now + self.resolved.cluster.exclude_for_h * 3600))
        self.ended = True  # this job ends here: no pre-limit signal or SIGTERM makes it requeue
        self._end_chain()  # a successor armed at the start (clusters without requeue) lacks the exclusion
        self._arm_successor(exclude)
        if self.successor is None:  # sbatch refused it: chain-broken says why; the run waits for a person
            return self._act(chunk_policy.Action("fail", f"{action.reason}; the next chunk without "
                                                 f"{nodes} could not be submitted"))
        self.event("requeued", reason="excluded", chained_to=self.successor, exclude=exclude)
        self.successor = None  # handed over: this job's end must not cancel it
        return "chained"

    def _bring_up_and_train(self) -> str:
        info, res = self.info, self.resolved
        if self.address is None:
            return self._act(self._decide("no-address",
                                          detail=f"no address the other nodes can reach: {self.address_error}"))
        t0 = time.time()
        cpus, gpus = ray_resources(res)
        put_code_first(info.run_dir)
        try:
            self.head = ray_cluster.start_head(
                info.job_id,
                info.restart,
                self.address,
                res.cluster.ray_port,
                cpus,
                gpus,
                info.paths.ray_log(info.job_id),
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return self._act(self._decide("ray", detail=f"Ray head did not start: {exc}"))
        cleanup.note_temp_dir(info.control, self.mark, self.head.temp_dir)
        ray_cluster.publish_head(info.control, self.head, info.restart)
        seen, seen_gpus = ray_cluster.wait_for_nodes(
            self.head.address, info.nodes, gpus, res.cluster.ray_wait_timeout_s
        )
        if seen < info.nodes or seen_gpus < info.nodes * gpus:
            return self._act(self._decide("ray", detail=f"Ray saw {seen}/{info.nodes} nodes and "
                                          f"{seen_gpus:g}/{info.nodes * gpus} GPUs after {res.cluster.ray_wait_timeout_s} s"))
        self.event("ray-ready", nodes_seen=seen, gpus_seen=seen_gpus, seconds=round(time.time() - t0, 1))
        while (outcome := self._train(t0)) == RESTART:
            t0 = time.time()
        return outcome

    def _train(self, t0: float) -> str:
        """Resume from the newest verified save and run verl's trainer until it ends (again after a restart)."""
        info, res = self.info, self.resolved
        assert self.head is not None
        ckpt_dir = info.paths.checkpoints
        from justrl_hpc.jobs.train.logged_steps import previous_trainer

        self._steps_from_tensorboard(*previous_trainer(self.ledger.read()))
        decision = checkpoints.prepare_resume(
            ckpt_dir, res.recipe.world_size, ledger=self.ledger, job_id=info.job_id, chunk=self.chunk
        )
        if not decision.ok:
            return self._act(self._decide("no-checkpoint", detail=f"no checkpoint to resume from: {decision.reason}"))
        self.start_step = decision.step or 0
        if self.start_step >= self.target:
            # The previous chunk saved the target step as it was being stopped: nothing left to train.
            return self._act(self._decide("target-saved", reached_target=True), step=self.start_step)
        if decision.step is None and not self.first_chunk:
            log("no checkpoint yet: the trainer starts from step 0")
        self._retention()
        need = int(checkpoints.newest_size(ckpt_dir, res.recipe.world_size) * 1.1 + res.cluster.min_free_disk_gb * 1e9)
        ok, free = checkpoints.disk_check(ckpt_dir, need)
        if not ok:
            # A save into a full filesystem tears the checkpoint; better to stop and say so than to train on.
            return self._act(self._decide("disk-low", detail=(
                f"{ckpt_dir} has {preflight.gb_text(free)} free; the next checkpoint plus cluster.min_free_disk_gb "
                f"needs {preflight.gb_text(need)}: free space there, then `python -m justrl_hpc.launch --resume RUN`")))

        chunk_ctx = ChunkContext(first_chunk=self.first_chunk, deadline_epoch=self.end_time)
        env = dict(os.environ)
        env.update(
            {
                "RAY_ADDRESS": self.head.address,
                CONTROL_ENV: str(info.control),
                "TENSORBOARD_DIR": str(info.paths.tensorboard),
            }
        )
        if self.end_time:
            env[DEADLINE_ENV] = str(int(self.end_time))
        cmd = trainer_command(res, info.run_dir, chunk_ctx)
        cmd[0] = sys.executable
        self.trainer = TrainerProcess(cmd, info.paths.trainer_log, ckpt_dir, env,
                                      cwd=info.paths.logs)
        self.trainer_started_at = time.time()
        self.step_times, self.hang_dumped = [], False
        self.trainer.start()
        self.event("trainer-started", step=self.start_step, pid=self.trainer.pid,
                   seconds_since_start=round(time.time() - t0, 1))
        return self._supervise()

    def _supervise(self) -> str:
        assert self.trainer is not None
        while True:
            self._follow()
            if self.info.paths.save_now.exists() and self.stop_reason is None:
                self.request_stop("save-now")
            if self.stop_reason and self._saved_since_stop():
                return self._requeue_self()
            if (limit := self._hung()) is not None and (outcome := self._on_hang(limit)) is not None:
                return outcome
            code = self.trainer.poll()
            if code is not None:
                self._follow()
                return self._trainer_exited(code)
            time.sleep(POLL_S)

    def _follow(self) -> None:
        """Ledger events for steps logged and checkpoints written since the last look."""
        assert self.trainer is not None
        for step in self.trainer.new_steps():
            if step in self._steps_via_tensorboard:
                continue  # recorded already from the event file; this is its console line arriving late
            self.event("step", step=step)
            self.step_times.append(time.time())
            self.logged_step = step if self.logged_step is None else max(self.logged_step, step)
        tracked = self.trainer.tracker_step()
        if tracked is not None and tracked not in self.saved_steps and tracked > (self.start_step or 0):
            step_dir = self.info.paths.checkpoints / f"global_step_{tracked}"
            verdict = checkpoints.verify(step_dir, self.resolved.recipe.world_size)
            if verdict.ok:
                self.saved_steps.append(tracked)
                self.event("saved", step=tracked, bytes=verdict.bytes)
                self._retention()

    def _saves_after_stop(self) -> list[int]:
        """Verified saves of steps after the one in flight when the stop came, logged or not yet."""
        asked = self.stop_requested_at_step if self.stop_requested_at_step is not None else -1
        return [s for s in self.saved_steps if s > asked]

    def _saved_since_stop(self) -> bool:
        """Some verified save after the step in flight when the stop came, whose step is logged.

        Any such save, not the newest: after a stop request verl saves every step, so a fast trainer's
        newest save is always one step ahead of its log, and waiting for the newest to be logged never ends.
        """
        if self.trainer is None:
            return False
        logged = self.trainer.last_step or 0
        return any(s <= logged for s in self._saves_after_stop())

    def _retention(self) -> None:  # and the evaluation along the run: after_save.py
        self.after_save(self._last_saved())

    # -- stopping -------------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.stop_requested_at_step = self.trainer.last_step if self.trainer else None
        atomic_write(self.info.paths.stop, json.dumps({"reason": reason, "time": time.time()}))
        self.event("stop-requested", step=self.stop_requested_at_step, reason=reason)

    def wait_for_save(self, budget_s: float) -> bool:
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            self._follow()
            if self._saved_since_stop():
                return True
            if self._saves_after_stop():
                # verl logs a step right after saving it, to TensorBoard at once and to the console through
                # Ray's log monitor a second or more later: with the budget short, the event file says sooner.
                self._steps_from_tensorboard(self.trainer_started_at)
                if self._saved_since_stop():
                    return True
            if self.trainer is None or self.trainer.poll() is not None:
                self._follow()
                return self._saved_since_stop()
            time.sleep(POLL_S)
        # Out of time: a verified save whose step is not logged yet is taken as it is (the next chunk sets it
        # aside and retrains that step) rather than waiting into the reserve for its log line.
        return bool(self._saves_after_stop())

    def _stopped_as(self, saved: bool) -> str:
        """The trainer-exited reason of a stop: `stopped` only when a save after the stop holds a logged step
        (nothing is retrained); `stopped-unlogged` when the wait ran out with only a save verl had not logged
        yet (the next chunk sets it aside and retrains that step: the soak caught it named `stopped`)."""
        if not saved:
            return "stopped-unsaved"
        return "stopped" if self._saved_since_stop() else "stopped-unlogged"

    def _save_budget(self, grace_s: float | None = None) -> float:
        c = self.resolved.cluster
        left = (self.end_time - time.time() - c.end_reserve_s) if self.end_time else float(c.signal_lead_s)
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
            code = self._stop_trainer()
            self._follow()
            self._exited_event(code, self._stopped_as(saved))
        elif self.trainer is not None and (code := self.trainer.poll()) is not None:
            # It ended on its own and the signal came while that ending was read (Ray's node verdict takes up
            # to 40 s): its exit goes in the ledger before the requeue (the soak's seed 2 lost one).
            self._follow()
            self._exited_event(code, self._classify(code))
        action = self._decide("limit-signal", reason=self.stop_reason or "", saved=bool(self.saved_steps))
        if action.kind != "requeue":
            self._act(action)
            self._teardown()
            return False
        via = {"chained_to": self.successor} if self.successor else {}
        self.event("requeued", step=self._last_saved(), reason=action.reason, **via)
        self.ended = True
        # No teardown here: submitit issues `scontrol requeue` as this returns, then exits, and the teardown runs
        # as run() unwinds. A teardown first left a window in which the limit's SIGTERM and SIGKILL ended the
        # job TIMEOUT with nobody to requeue it; Slurm's own kill after the requeue only helps the teardown.
        self._hand_over()
        return True

    def _stop_trainer(self, grace_s: float = 20.0, exit_wait_s: float | None = None) -> int | None:
        """Stop the trainer; with W&B among the trackers, first ask verl's logging actor to end its W&B run
        (in_worker.deadline_hook) so the offline file keeps its last steps. A trainer whose last step is saved
        and logged is ending by itself (verl ends its W&B run as `fit` returns; a stop during that finish lost
        the run's last step in CI): it gets up to `exit_wait_s` (default: what the limit leaves, at most 60 s)."""
        assert self.trainer is not None
        if self._reached_target():
            wait = min(FINAL_EXIT_S, self._save_budget()) if exit_wait_s is None else exit_wait_s
            deadline = time.monotonic() + wait
            while self.trainer.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
        if "wandb" in self.resolved.recipe.trackers and self.trainer.poll() is None:
            if not request_tracker_finish(self.info.control, min(TRACKER_FINISH_S, max(grace_s - 5, 1.0))):
                log(f"job {self.info.job_id}: W&B did not say its run ended within {TRACKER_FINISH_S:g} s; stopping anyway")
        return self.trainer.stop(grace_s=grace_s)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """SIGTERM-only preemption (submitit ignores SIGTERM): save within the grace, stop, exit.

        Slurm requeues a preempted job itself when the partition says so; a cancelled job stays cancelled.
        """
        if self.ended:
            return
        # A SIGTERM during a stop for a requeue (the limit's, arriving before submitit's requeue): this handler
        # exits, so the requeue submitit would have issued is issued here.
        requeue = self.stop_reason is not None and self.stop_reason != "sigterm" and self.successor is None
        reason = self.stop_reason or ""
        if self.trainer is not None and self.trainer.poll() is None:
            self.request_stop("sigterm")
            saved = self.wait_for_save(self._save_budget(self.resolved.cluster.preempt_grace_s))
            code = self._stop_trainer(grace_s=5, exit_wait_s=5)
            self._follow()
            self._exited_event(code, self._stopped_as(saved))
        self.ended = True
        action = self._decide("sigterm", reason=reason, stopping_for_requeue=requeue)
        if action.kind == "requeue":
            self.event("requeued", step=self._last_saved(), reason=action.reason, **action.notes,
                       ok=slurm_act.requeue(self.info.job_id))
        self._teardown()
        # A preemption with PreemptMode=REQUEUE brings the job back after Slurm's hold; release it early.
        self._hand_over()
        sys.exit(143)

    def _requeue_self(self) -> str:
        """save-now: the save is done; stop the trainer and requeue through submitit's own path (USR2)."""
        assert self.trainer is not None
        code = self._stop_trainer()
        self._follow()
        self._exited_event(code, "stopped")
        self.trainer = None
        action = self._decide("save-now", reached_target=self._reached_target())
        if action.kind != "requeue":
            return self._act(action)
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

    def _steps_from_tensorboard(self, since: float | None, job_id: str | None = None,
                                chunk: int | None = None) -> None:
        """`step` events for steps TensorBoard holds and the console line never showed (logged_steps.py),
        in the name of the chunk whose trainer logged them (by default this one)."""
        if since is None:
            return
        from justrl_hpc.jobs.train.logged_steps import latest_trainer_logged, record_unseen

        job_id, chunk = (job_id, chunk) if job_id is not None else (self.info.job_id, self.chunk)
        known = latest_trainer_logged(self.ledger.read())  # that trainer's own, not the run's (a retrain re-logs)
        for step in record_unseen(self.ledger, self.info.paths.tensorboard, since, known, job_id, chunk,
                                  f"run {self.resolved.run.name}"):
            if job_id == self.info.job_id and chunk == self.chunk:
                self._steps_via_tensorboard.add(step)
                self.logged_step = step
                if self.trainer is not None:
                    self.trainer.last_step = step
                    self.trainer.steps_seen.append(step)

    def _exited_event(self, code: int | None, reason: str) -> None:
        assert self.trainer is not None
        if self._exit_recorded is self.trainer:
            return  # a signal's handler and the reading it interrupted both got here: one event
        self._exit_recorded = self.trainer
        self._steps_from_tensorboard(self.trainer_started_at)
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

    def _classify(self, code: int) -> str:
        assert self.trainer is not None
        said = slurm_log.slurm_said(self.info.paths, self.info.job_id, self.slurm_marks)
        reason = classify_exit(code, self._reached_target(), self.trainer.log_tail(), said)
        if reason == "crashed-other" and checkpoints.disk_full(self.info.paths.checkpoints,
                                                                self.resolved.recipe.world_size):
            reason = "crashed-disk"  # torch.save reports ENOSPC as "iostream error", so look at the disk itself
        return reason

    def _trainer_exited(self, code: int) -> str:
        assert self.trainer is not None
        reached = self._reached_target()
        reason = self._classify(code)
        lost = None
        if reason in ("crashed-other", "crashed-nccl", "crashed-worker") and code > 0 and self.head and self.info.nodes > 1:
            # A lost node can show first as an error the patterns do not name; Ray's health check decides.
            lost = ray_cluster.nodes_lost(self.head.address, self.info.nodes)
            if lost:
                reason = "crashed-node"
        self._exited_event(code, reason)
        action = self._decide("trainer-exited", reason=reason, detail=f"trainer exited with status {code}",
                              reached_target=reached, stop_saved=bool(self.stop_reason and self._saved_since_stop()),
                              **self._restart_facts(reason, lost))
        if action.kind == "finish":
            return self._act(action, step=self.target)
        if action.reason == "stop-saved":
            return self._requeue_self()
        if action.kind == "restart-in-job":
            return self._restart_in_job(action)
        return self._act(action)

    def _decide(self, ending: chunk_policy.Ending, **facts: Any) -> chunk_policy.Action:
        """The facts chunk_policy.decide needs beyond the caller's: the reached target, this chunk's figures for
        the no-progress count, and the ledger's earlier chunks since the last verified save."""
        from justrl_hpc.jobs.train import progress_policy

        now, started, res = time.time(), self.trainer_started_at, self.resolved
        facts.setdefault("reached_target", self._reached_target())
        history = chunk_policy.History(tuple(progress_policy.chunks_since_progress(self.ledger.read(), but=self.chunk)),
                                       res.run.max_no_progress_chunks, res.time_limit_min * 60,
                                       res.cluster.signal_lead_s)
        return chunk_policy.decide(chunk_policy.Facts(
            ending, stepped=self.logged_step is not None, seconds=now - self.chunk_started_at,
            trainer_seconds=None if started is None else now - started, **facts), history)

    def _act(self, action: chunk_policy.Action, step: int | None = None) -> str:
        """Carry out a finish, a failure, or a requeue after a crash (submitit's own path: USR2 to itself)."""
        if action.kind == "finish":
            self.event("finished", step=step if step is not None else self._last_saved(), **action.notes)
            self.ended = True
            return "finished"
        if action.kind == "fail":
            self.event("failed", step=self._last_saved(), reason=action.reason)
            self.ended = True
            return "failed"
        assert action.kind == "requeue", action
        if self.trainer is None:  # never got to start the trainer
            self.ledger.append("chunk-failed", job_id=self.info.job_id, chunk=self.chunk, reason=action.reason,
                               detail=action.notes.get("detail", ""))
        log(f"{action.reason}: {action.notes.get('detail', '')}; requeueing "
            f"({action.notes.get('without_progress')} chunks without progress)")
        self.stop_reason = action.reason
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
        self._cleanup_event("end", cleanup.at_end(self.mark, self.info.control))
        self.info.paths.stop.unlink(missing_ok=True)
        self.after_save.wait(EVAL_SUBMIT_WAIT_S)

    def _cleanup_event(self, when: str, found: dict[str, Any]) -> None:
        if found["processes"] or found["shm_removed"] or found["temp_dirs_removed"]:
            self.event("cleanup", when=when, node=self.mark.node, **found)
