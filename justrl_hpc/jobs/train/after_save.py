"""What a chunk does with its verified saves besides recording them: retention, and the evaluation along the run
(core/eval_along.py), at its start and after each save.

The evaluation is submitted from a thread: `launch --job evaluate` takes seconds (an interpreter, submitit,
sbatch), and the chunk follows its trainer meanwhile. The chunk's teardown waits a little for a submission in
flight, so the run's last save is not left unasked when the last chunk ends right after it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from justrl_hpc.core import checkpoints, eval_along
from justrl_hpc.core.config import Resolved
from justrl_hpc.jobs.train.environment import log


class AfterSave:
    def __init__(self, resolved: Resolved, run_dir: Path, ckpt_dir: Path, job_id: str | None,
                 chunk: int | None) -> None:
        self.resolved, self.run_dir, self.ckpt_dir = resolved, run_dir, ckpt_dir
        self.job_id, self.chunk = job_id, chunk
        self.thread: threading.Thread | None = None

    def __call__(self, newest_logged_save: int | None) -> None:
        run, world = self.resolved.run, self.resolved.recipe.world_size
        if run.eval_every and (self.thread is None or not self.thread.is_alive()):
            self.thread = threading.Thread(target=self._submit, name="eval-along", daemon=True)
            self.thread.start()
        # The newest save of a logged step is what the next chunk resumes from when newer saves turn out never
        # logged (prepare_resume sets those aside): keep_last must not delete it for them. Nor a save due for
        # evaluation before its evaluate job has read it.
        protect = ({newest_logged_save or 0} - {0}) | eval_along.known_protected(self.run_dir, world, run.eval_every)
        deleted = checkpoints.apply_retention(self.ckpt_dir, world, run.keep_last, run.keep_every, protect=protect)
        if deleted:
            log(f"retention deleted checkpoints {deleted}")

    def _submit(self) -> None:
        eval_along.submit_due(self.run_dir, self.job_id, self.chunk, self.resolved, log)

    def wait(self, timeout_s: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout_s)
