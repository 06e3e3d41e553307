"""Test code only: kills verl's trainer inside its own checkpoint save, at a chosen step and point.

Loaded in every verl process of a test's run through verl's `VERL_USE_EXTERNAL_MODULES` (the test puts this
folder on PYTHONPATH). With JUSTRL_FAULT_SAVES="N:PHASE,..." it wraps torch.save in this process so that, when
verl writes step N:

- `shard`: rank 0's model shard `actor/model_world_size_W_rank_0.pt` is written half-way;
- `data-file`: `data.pt` (the dataloader state, written by the TaskRunner) is written half-way;
- `tracker`: `data.pt` is written whole, and the trainer dies before verl writes its tracker file;

and then SIGKILLs the trainer's process group (main_ppo, found as the run's newest `trainer-started` pid in
its ledger) and itself: the kill -9 of a node's trainer in the middle of a save. Each step's fault fires once
per run (a marker in the run's control folder), so the resumed trainer saves that step whole when it trains
it again. verl's code is untouched; the wrapper is this test's. The test copies this file into the run's code
snapshot, the only code a chunk imports.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
from pathlib import Path

PLAN = {int(step): phase for step, _, phase in
        (item.partition(":") for item in os.environ.get("JUSTRL_FAULT_SAVES", "").split(",") if item)}


def _trainer_pid() -> int | None:
    control = os.environ.get("JUSTRL_CONTROL_DIR")
    if not control:
        return None
    pid = None
    for line in (Path(control).parent / "ledger.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "trainer-started":
            pid = event.get("pid")
    return pid


def _fired_marker(step: int) -> Path | None:
    control = os.environ.get("JUSTRL_CONTROL_DIR")
    return Path(control) / f"fault-save-fired-{step}" if control else None


def _die(step: int) -> None:
    marker = _fired_marker(step)
    if marker is not None:
        marker.write_text(f"{PLAN[step]} {step}\n")  # once per run: the resumed trainer saves it whole
    pid = _trainer_pid()
    if pid:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def _install() -> None:
    import torch

    real_save = torch.save
    shard = re.compile(r"model_world_size_\d+_rank_0\.pt$")
    step_dir = re.compile(r"global_step_(\d+)$")

    def save(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        path = str(f) if isinstance(f, (str, os.PathLike)) else ""
        steps = [int(m.group(1)) for part in Path(path).parts if (m := step_dir.match(part))]
        step = steps[0] if steps else None
        marker = _fired_marker(step) if step in PLAN else None
        if step not in PLAN or (marker is not None and marker.exists()):
            return real_save(obj, f, *args, **kwargs)
        phase, name = PLAN[step], Path(path).name
        if (phase == "shard" and shard.search(name)) or (phase == "data-file" and name == "data.pt"):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            _die(step)
        result = real_save(obj, f, *args, **kwargs)
        if phase == "tracker" and name == "data.pt":
            _die(step)
        return result

    torch.save = save


if PLAN:
    _install()
