"""Every file of a run folder, named once (as submitit's `JobPaths` names a job folder's files).

    runs/<run>/
      run.yaml                resolved config, written once; its fingerprint guards every resume
      code/                   the package the chunks import (a snapshot taken at creation)
      ledger.jsonl            append-only events: the source of truth for status and goodput
      checkpoints/            verl's global_step_N folders and its tracker file
      tensorboard/            verl's metrics (TENSORBOARD_DIR) and the monitor's own scalars
      telemetry/<host>.jsonl  the node agents' samples
      logs/                   trainer.log, ray-<job>.log, agent-<host>.log, submitit/<job>/, sbatch/ …
      control/                requests to a running chunk (save-now, stop) and the chunk's own hand-offs
      monitor.db  monitor.heartbeat  alerts.jsonl   the monitor daemon's state, liveness and alert log
      eval/  export/          the evaluation and export jobs' outputs

Kept free of imports from the rest of the package: the node side, the monitor and verl's workers use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RUN_YAML = "run.yaml"
LEDGER = "ledger.jsonl"
TRACKER = "latest_checkpointed_iteration.txt"  # verl's: the newest step it finished saving
SUBDIRS = ("checkpoints", "tensorboard", "telemetry", "logs", "control")


@dataclass(frozen=True)
class RunPaths:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # -- written at creation ----------------------------------------------------------------------------
    @property
    def run_yaml(self) -> Path:
        return self.root / RUN_YAML

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER

    # -- the trainer's --------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tracker(self) -> Path:
        return self.checkpoints / TRACKER

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def telemetry(self) -> Path:
        return self.root / "telemetry"

    def telemetry_of(self, host: str) -> Path:
        return self.telemetry / f"{host}.jsonl"

    # -- logs --------------------------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def trainer_log(self) -> Path:
        return self.logs / "trainer.log"

    def ray_log(self, job_id: str) -> Path:
        return self.logs / f"ray-{job_id}.log"

    def agent_log(self, host: str) -> Path:
        return self.logs / f"agent-{host}.log"

    @property
    def stacks(self) -> Path:
        """A hung trainer's stacks, one folder per hang (`<UTC time>/<node>-<pid>.txt`, jobs/train/stacks.py)."""
        return self.logs / "stacks"

    @property
    def submitit(self) -> Path:
        """submitit's folder per job id (`%j`): its pickles and logs, appended to across requeues."""
        return self.logs / "submitit" / "%j"

    @property
    def sbatch_logs(self) -> Path:
        """Where sbatch/train.sbatch has srun write each task's output (`%j_%t_log.out`, `%j_%t_log.err`)."""
        return self.logs / "sbatch"

    def slurm_stderr(self, job_id: str) -> list[Path]:
        """One job's stderr files as they are on disk: the batch script's and every task's (`<job>_<task>_log.err`,
        submitit's and train.sbatch's). slurmstepd and srun write there what Slurm did to the job (an OOM kill, a
        lost node); train.sbatch's own batch log goes where its --output says, outside the run folder."""
        folders = (Path(str(self.submitit).replace("%j", job_id)), self.sbatch_logs)
        return sorted(p for folder in folders for p in folder.glob(f"{job_id}_*_log.err") if p.is_file())

    # -- requests to a running chunk ---------------------------------------------------------------------
    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def save_now(self) -> Path:
        return self.control / "save-now"

    @property
    def stop(self) -> Path:
        """The chunk's request to verl's deadline hook: save at the next step and stop."""
        return self.control / "stop"

    # -- the monitor daemon's ------------------------------------------------------------------------
    @property
    def monitor_db(self) -> Path:
        return self.root / "monitor.db"

    @property
    def heartbeat(self) -> Path:
        return self.root / "monitor.heartbeat"

    @property
    def alerts(self) -> Path:
        return self.root / "alerts.jsonl"

    # -- other jobs' outputs -----------------------------------------------------------------------------
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def subdirs(self) -> list[Path]:
        return [self.root / name for name in SUBDIRS]
