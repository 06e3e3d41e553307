"""Runs inside the trainer's processes and turns a stop request into verl's own deadline save.

verl's legacy trainer calls `should_save_ckpt_esi` after every actor update; it reads the deadline from
the environment (MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP) with os.getenv at each step and saves when
the time left is within 60 s + the longest step + trainer.esi_redundant_time. A chunk cannot change the
environment of a running Ray actor, so this hook (Ray's `worker_process_setup_hook`, in every worker of the
trainer, the TaskRunner included) starts a thread that watches `<control dir>/stop` and, once it appears, keeps the deadline
a few seconds ahead of now: the next step boundary then saves. verl itself is not modified. The same thread
ends a W&B run cleanly when the chunk asks, just before it stops the trainer (finish_trackers_once).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

DEADLINE_ENV = "MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP"
CONTROL_ENV = "JUSTRL_CONTROL_DIR"
FINISH_TRACKERS = "finish-trackers"  # the chunk's request: end the experiment trackers' runs now
TRACKERS_FINISHED = "trackers-finished"  # a process's answer: done (one file per process)
# Kept inside should_save_ckpt_esi's window (≤ 60 s + step + margin) yet > 0 as it requires.
_AHEAD_S = 30.0
_POLL_S = 1.0
_started = False
_lock = threading.Lock()


def stop_file(control_dir: str | os.PathLike[str]) -> Path:
    return Path(control_dir) / "stop"


def apply_once(control_dir: str | os.PathLike[str]) -> bool:
    """If a stop was requested, move the deadline to just ahead of now. Returns whether it did."""
    if stop_file(control_dir).exists():
        os.environ[DEADLINE_ENV] = str(time.time() + _AHEAD_S)
        return True
    return False


def finish_trackers_once(control_dir: str | os.PathLike[str]) -> bool:
    """If the chunk asked (`<control dir>/finish-trackers`, just before it stops the trainer), end this
    process's W&B run cleanly and say so in `trackers-finished.<host>.<pid>`. W&B buffers its offline file and
    loses the tail when the process is killed, which Ray does to the TaskRunner when verl's driver stops;
    TensorBoard flushes every step and needs nothing. wandb is never imported here: only a run verl started
    in this process is finished. Returns whether this process answered."""
    control = Path(control_dir)
    if not (control / FINISH_TRACKERS).exists():
        return False
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return False
    run.finish()
    (control / f"{TRACKERS_FINISHED}.{socket.gethostname()}.{os.getpid()}").write_text(f"{time.time()}\n")
    return True


def clear_tracker_requests(control_dir: str | os.PathLike[str]) -> None:
    """The chunk's side, at its start: no request or answer of an earlier chunk stays."""
    control = Path(control_dir)
    (control / FINISH_TRACKERS).unlink(missing_ok=True)
    for answer in control.glob(f"{TRACKERS_FINISHED}.*"):
        answer.unlink(missing_ok=True)


def request_tracker_finish(control_dir: str | os.PathLike[str], timeout_s: float) -> bool:
    """The chunk's side: ask the trainer's processes to end their W&B runs; True once one answered."""
    control = Path(control_dir)
    # core.run_folder.atomic_write by hand: verl loads this file by path, so it imports nothing of the suite.
    tmp = control / f".{FINISH_TRACKERS}.{os.getpid()}"
    tmp.write_text(f"{time.time()}\n")
    os.replace(tmp, control / FINISH_TRACKERS)
    deadline = time.monotonic() + timeout_s
    while not any(control.glob(f"{TRACKERS_FINISHED}.*")):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def _watch(control_dir: str) -> None:
    finished = False
    while True:
        try:
            apply_once(control_dir)
            if not finished:
                finished = finish_trackers_once(control_dir)
        except OSError:
            pass  # a shared filesystem hiccup: look again next second
        except Exception:  # noqa: BLE001  a tracker's own error must not end verl's worker from this thread
            finished = True
        time.sleep(_POLL_S)


def install() -> None:
    """Start the watcher once per process; a no-op when the chunk gave no control dir."""
    global _started
    control_dir = os.environ.get(CONTROL_ENV)
    if not control_dir:
        return
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_watch, args=(control_dir,), name="justrl-deadline-hook", daemon=True).start()
