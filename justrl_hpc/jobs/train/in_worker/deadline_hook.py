"""Runs inside the trainer's processes and turns a stop request into verl's own deadline save.

verl's legacy trainer calls `should_save_ckpt_esi` after every actor update; it reads the deadline from
the environment (MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP) with os.getenv at each step and saves when
the time left is within 60 s + the longest step + trainer.esi_redundant_time. A chunk cannot change the
environment of a running Ray actor, so this hook (Ray's `worker_process_setup_hook`, in every worker of the
trainer, the TaskRunner included) starts a thread that watches `<control dir>/stop` and, once it appears, keeps the deadline
a few seconds ahead of now: the next step boundary then saves. verl itself is not modified. The same thread
ends a W&B run cleanly when the chunk asks, just before it stops the trainer (finish_trackers_once).

It also registers faulthandler on a spare signal (register_stacks): when the trainer's steps stall, the chunk
sends that signal to every registered process of the incarnation and keeps what each writes (stacks.py).
faulthandler writes from the signal handler in C, so a process stuck in C code with the GIL held still answers.
"""

from __future__ import annotations

import faulthandler
import os
import signal
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
# Unused by Ray, torch, NCCL and vLLM (SIGUSR1/2 are taken by some of them); its default action ends a process,
# so the chunk signals only processes that registered (stacks.py checks the file below exists first).
STACKS_SIGNAL = signal.SIGRTMIN + 5
STACKS_DIR = "stacks"
MARK_ENV = "JUSTRL_RUN_MARK"  # cleanup.MARK_ENV: this file imports nothing of the suite
_stack_files: list = []  # open for the process's life: faulthandler writes to the descriptor


def stacks_file(control_dir: str | os.PathLike[str], job_id: str, restart: int | str, node: str, pid: int) -> Path:
    return Path(control_dir) / STACKS_DIR / f"{job_id}-{restart}-{node}-{pid}.txt"


def register_stacks(control_dir: str | os.PathLike[str]) -> Path | None:
    """Dump this process's Python stacks (all threads) into its own file on STACKS_SIGNAL. Only in a process
    of a chunk's incarnation (its run mark names job, restart and node)."""
    parts = os.environ.get(MARK_ENV, "").split("/")
    if len(parts) != 4:
        return None
    path = stacks_file(control_dir, parts[1], parts[2], parts[3], os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a", buffering=1)  # noqa: SIM115  kept open: the handler writes to it at any time
    faulthandler.register(STACKS_SIGNAL, file=fh, all_threads=True, chain=False)
    _stack_files.append(fh)
    return path


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
    try:
        register_stacks(control_dir)
    except (OSError, ValueError, RuntimeError):
        pass  # no stacks on a hang is a loss of evidence, never a reason to fail verl's worker
    threading.Thread(target=_watch, args=(control_dir,), name="justrl-deadline-hook", daemon=True).start()
