"""The driver's part in recovering without a person: restart a crashed or hung trainer inside the job, and take
a hung trainer's stacks before anything is killed. Facts are gathered here; chunk_policy decides."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import time
from typing import Any

from justrl_hpc.jobs.train import chunk_policy, ray_cluster, stacks

RESTART = "restart"  # what Driver._train returns when the policy restarts the trainer inside the job
NODE_ANSWER_S = 60.0  # how long the stacks wait for the other nodes (py-spy reads each process in ~0.3 s)


class Recovery:
    """Mixed into Driver (driver.py): uses its trainer, Ray head, ledger and settings (not imported here: the
    driver imports this module)."""

    def _restart_facts(self, reason: str, lost: int | None) -> dict[str, Any]:
        """What a restart in the job depends on (Ray's GCS asked only where one may cure the crash and fit)."""
        cap = self.resolved.run.max_in_job_restarts
        facts: dict[str, Any] = {"restarts": self.restarts_in_job, "max_restarts": cap}
        if reason not in chunk_policy.RESTARTABLE or self.restarts_in_job >= cap or not self.head or self.stop_reason:
            return facts
        need = facts["need_s"] = chunk_policy.restart_need_s(self.trainer_started_at, self.step_times)
        end = (self.end_time or 0) - self.resolved.cluster.signal_lead_s
        # Cheap facts first: no step yet, or no time for Ray's verdict, a start-up and a step: the crash's
        # requeue must not wait 40 s for Ray (the soak saw the limit's signal land in that wait).
        if need is None or not self.end_time or end - time.time() < need + ray_cluster.NODES_LOST_WAIT_S:
            return facts
        if lost is None:
            lost = ray_cluster.nodes_lost(self.head.address, self.info.nodes) if self.info.nodes > 1 else 0
        facts["nodes_alive"] = not lost and ray_cluster.count_nodes(self.head.address)[0] >= self.info.nodes
        facts["time_left_s"] = end - time.time()
        return facts

    def _restart_in_job(self, action: chunk_policy.Action) -> str:
        """Start verl's trainer again from the newest verified save, in this allocation and Ray cluster. Ray ends
        the dead driver's workers on every node (its actors die with their job); what the trainer forked
        itself goes with its process group."""
        assert self.trainer is not None and self.trainer.pid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.trainer.pid, signal.SIGKILL)
        self.restarts_in_job += 1
        self.event("restarted-in-job", step=self._last_saved(), crash=action.reason, restart=self.restarts_in_job,
                   of=self.resolved.run.max_in_job_restarts, detail=action.notes.get("detail"))
        self.trainer, self.first_chunk = None, False
        return RESTART

    def _hung(self) -> float | None:
        """The stall limit this trainer's steps are past (chunk_policy.hung), once per trainer; never while a stop
        for a requeue waits on its save (that wait has its own budget)."""
        run = self.resolved.run
        if self.stop_reason or self.trainer_started_at is None or self.hang_dumped:
            return None
        return chunk_policy.hung(time.time(), self.trainer_started_at, self.step_times, run.hang_factor,
                                 run.hang_min_s, run.hang_startup_grace_s)

    def _on_hang(self, limit_s: float) -> str | None:
        """Every process's stacks first; then what the policy says (run.on_hang). None: the trainer goes on."""
        assert self.trainer is not None
        self.hang_dumped = True
        info = self.info
        since = self.step_times[-1] if self.step_times else self.trainer_started_at or time.time()
        folder = info.paths.stacks / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        t0 = time.time()
        stacks.request(info.control, info.job_id, info.restart, folder)
        stacks.dump_node(self.mark, info.control, folder)
        stacks.wait_for_nodes(folder, info.nodes, NODE_ANSWER_S)
        detail = (f"no step for {time.time() - since:.0f} s (limit {limit_s:.0f} s) after "
                  f"{'step ' + str(self.logged_step) if self.step_times else 'the trainer started'}")
        self.event("hang", step=self.logged_step, stacks=str(folder.relative_to(info.run_dir)),
                   seconds=round(time.time() - t0, 1), stalled_s=round(time.time() - since), limit_s=round(limit_s),
                   on_hang=self.resolved.run.on_hang, **stacks.summary(folder))
        facts = self._restart_facts("hung", None) if self.resolved.run.on_hang == "restart" else {}
        action = self._decide("hang", reason="hung", detail=detail, on_hang=self.resolved.run.on_hang, **facts)
        if action.kind == "continue":
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.trainer.pid is not None:
                os.killpg(self.trainer.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            if self.trainer.proc is not None:
                self.trainer.proc.wait(timeout=10.0)
        self._follow()
        self._exited_event(self.trainer.poll(), "hung")
        return self._restart_in_job(action) if action.kind == "restart-in-job" else self._act(action)
