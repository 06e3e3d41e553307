"""Test code only: kills verl's trainer inside its own checkpoint save, at a chosen step and point.

Loaded in every verl process of a test's run through verl's `VERL_USE_EXTERNAL_MODULES` (the test puts this
folder on PYTHONPATH). With JUSTRL_FAULT_SAVE_STEP=N and JUSTRL_FAULT_SAVE_PHASE set, it wraps torch.save in
this process so that, when verl writes step N:

- `shard`: rank 0's model shard `actor/model_world_size_W_rank_0.pt` is written half-way;
- `data-file`: `data.pt` (the dataloader state, written by the TaskRunner) is written half-way;
- `tracker`: `data.pt` is written whole, and the trainer dies before verl writes its tracker file;

and then SIGKILLs the trainer's process group (main_ppo, found as the run's newest `trainer-started` pid in
its ledger) and itself: the kill -9 of a node's trainer in the middle of a save. It fires once per run (a
marker in the run's control folder), so the resumed chunk trains that step again. verl's code is untouched;
the wrapper is this test's. The test copies this file into the run's code snapshot, the only code a chunk
imports.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
from pathlib import Path

STEP = os.environ.get("JUSTRL_FAULT_SAVE_STEP")
PHASE = os.environ.get("JUSTRL_FAULT_SAVE_PHASE", "")


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


def _fired_marker() -> Path | None:
    control = os.environ.get("JUSTRL_CONTROL_DIR")
    return Path(control) / "fault-save-fired" if control else None


def _die() -> None:
    marker = _fired_marker()
    if marker is not None:
        marker.write_text(f"{PHASE} {STEP}\n")  # once per run: the resumed chunk trains that step again
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
    step_dir = f"global_step_{STEP}"
    shard = re.compile(r"model_world_size_\d+_rank_0\.pt$")

    def save(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        path = str(f) if isinstance(f, (str, os.PathLike)) else ""
        marker = _fired_marker()
        if step_dir not in Path(path).parts or (marker is not None and marker.exists()):
            return real_save(obj, f, *args, **kwargs)
        name = Path(path).name
        if (PHASE == "shard" and shard.search(name)) or (PHASE == "data-file" and name == "data.pt"):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            with open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
            _die()
        result = real_save(obj, f, *args, **kwargs)
        if PHASE == "tracker" and name == "data.pt":
            _die()
        return result

    torch.save = save


if STEP and PHASE:
    _install()
