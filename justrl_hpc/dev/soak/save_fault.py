"""The soak's kill inside a save (loaded in verl's processes by VERL_USE_EXTERNAL_MODULES; soak runs only).

Inert until the soak arms it with `<run>/control/soak-kill-in-save`. Armed, the next rank-0 model shard
verl writes into a `global_step_N` folder is written half-way, then the trainer's process group (the run's
newest `trainer-started` pid) and this process get SIGKILL: a node's trainer dying in the middle of a save,
usually the one the pre-limit signal asked for. The arm file is removed first, so it fires once per arming.
verl's code is untouched: the wrapper is around torch.save in this process.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
from pathlib import Path

ARM = "soak-kill-in-save"
_SHARD = re.compile(r"model_world_size_\d+_rank_0\.pt$")


def _trainer_pid(control: Path) -> int | None:
    pid = None
    for line in (control.parent / "ledger.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "trainer-started":
            pid = event.get("pid")
    return pid


def _install(control: Path) -> None:
    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):  # type: ignore[no-untyped-def]
        path = Path(str(f)) if isinstance(f, str | os.PathLike) else None
        arm = control / ARM
        if path is None or not _SHARD.search(path.name) or not any(p.startswith("global_step_") for p in path.parts):
            return real_save(obj, f, *args, **kwargs)
        try:
            arm.unlink()
        except FileNotFoundError:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        with open(path, "wb") as fh:
            fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        (control / f"{ARM}.fired").write_text(f"{path}\n")
        pid = _trainer_pid(control)
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save


if os.environ.get("JUSTRL_CONTROL_DIR") and os.environ.get("JUSTRL_SOAK") == "1":
    _install(Path(os.environ["JUSTRL_CONTROL_DIR"]))
