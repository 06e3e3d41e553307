"""verl's checkpoints: find, verify, choose what to resume from, and own retention.

Layout (verl 0.9.1 `FSDPCheckpointManager.save_checkpoint` + `RayPPOTrainer._save_checkpoint`):
    <ckpt_dir>/global_step_N/actor/{model,optim,extra_state}_world_size_W_rank_R.pt   one set per rank
    <ckpt_dir>/global_step_N/actor/huggingface/                                       config + tokenizer
    <ckpt_dir>/global_step_N/data.pt                                                  dataloader state
    <ckpt_dir>/latest_checkpointed_iteration.txt                                      written last, not atomically

A checkpoint is *verified* when every rank's three shards and data.pt exist, are non-empty and end with a
complete zip directory (torch.save writes zip archives; a write cut short by kill -9 or a full disk lacks the
end record). verl's `resume_mode=auto` trusts the tracker blindly — a missing tracker or a tracker naming a
missing folder trains from scratch without a word — so before each chunk the suite points the tracker at the
newest verified checkpoint, atomically.

A folder set aside at a chunk's start (`global_step_N.unlogged-T`: saved but never logged; `.torn-T`: not
verified) is ~21 GB that no resume reads; it stays while it is the newest save of step N a person may want, and
retention removes it once a verified save of a later step exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRACKER = "latest_checkpointed_iteration.txt"
MANIFEST = ".justrl_verified.json"
STEP_DIR = re.compile(r"^global_step_(\d+)$")
# What prepare_resume renames a checkpoint to when it sets it aside (T: the time it did).
SET_ASIDE_DIR = re.compile(r"^global_step_(\d+)\.(?:unlogged|torn)-\d+$")
KINDS = ("model", "optim", "extra_state")
_ZIP_END = b"PK\x05\x06"


@dataclass
class Verdict:
    ok: bool
    reason: str
    bytes: int = 0


@dataclass
class ResumeDecision:
    ok: bool  # False: refuse to start (training has begun but nothing verified is left)
    step: int | None  # the step the trainer will resume from; None = from scratch
    reason: str
    skipped: list[int] = field(default_factory=list)  # torn checkpoints moved aside


def _dirs(ckpt_dir: Path, pattern: re.Pattern[str]) -> list[tuple[Path, int]]:
    """Folders of ckpt_dir whose name matches, with the step the pattern's first group holds."""
    if not ckpt_dir.is_dir():
        return []
    return [(p, int(m.group(1))) for p in ckpt_dir.iterdir() if (m := pattern.match(p.name)) and p.is_dir()]


def step_dirs(ckpt_dir: Path) -> dict[int, Path]:
    return {step: p for p, step in _dirs(ckpt_dir, STEP_DIR)}


def expected_files(step_dir: Path, world_size: int) -> list[Path]:
    actor = step_dir / "actor"
    files = [
        actor / f"{kind}_world_size_{world_size}_rank_{rank}.pt"
        for rank in range(world_size)
        for kind in KINDS
    ]
    return files + [step_dir / "data.pt"]


def _zip_complete(path: Path, size: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 65558))  # the end record sits in the last 22 bytes + a comment of ≤ 64 KiB
        return _ZIP_END in fh.read()


def verify(step_dir: Path, world_size: int) -> Verdict:
    files = expected_files(step_dir, world_size)
    manifest_path = step_dir / MANIFEST
    sizes: dict[str, int] = {}
    for path in files:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return Verdict(False, f"missing {path.relative_to(step_dir)}")
        if size == 0:
            return Verdict(False, f"empty {path.relative_to(step_dir)}")
        sizes[str(path.relative_to(step_dir))] = size
    if manifest_path.is_file():
        try:
            recorded = json.loads(manifest_path.read_text()).get("sizes", {})
        except ValueError:
            recorded = {}
        if recorded == sizes:
            return Verdict(True, "verified (manifest)", sum(sizes.values()))
    for path in files:
        if not _zip_complete(path, sizes[str(path.relative_to(step_dir))]):
            return Verdict(False, f"truncated {path.relative_to(step_dir)}")
    total = sum(sizes.values())
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sizes": sizes, "verified_at": time.time(), "world_size": world_size}))
    os.replace(tmp, manifest_path)
    return Verdict(True, "verified", total)


def verified_steps(ckpt_dir: Path, world_size: int) -> list[int]:
    return sorted(s for s, d in step_dirs(ckpt_dir).items() if verify(d, world_size).ok)


def read_tracker(ckpt_dir: Path) -> int | None:
    try:
        text = (ckpt_dir / TRACKER).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def write_tracker(ckpt_dir: Path, step: int) -> None:
    tmp = ckpt_dir / f".{TRACKER}.tmp"
    with open(tmp, "w") as fh:
        fh.write(str(step))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, ckpt_dir / TRACKER)


def latest_good(ckpt_dir: Path, world_size: int) -> int | None:
    steps = verified_steps(ckpt_dir, world_size)
    return steps[-1] if steps else None


def logged_steps(ledger: Any) -> int | None:
    """The newest step the trainer logged, from the ledger's `step` events (None: none recorded)."""
    steps = [e["step"] for e in (ledger.read() if ledger is not None else [])
             if e.get("event") == "step" and isinstance(e.get("step"), int)]
    return max(steps) if steps else None


def logged_by_producer(events: list[dict[str, Any]], step: int) -> bool:
    """Whether the trainer that wrote `global_step_<step>` logged that step. Its writer is the newest trainer
    that started behind it (a trainer started at or after a step never writes it; an older one's copy was set
    aside before a newer trainer could start behind it), and verl logs steps in order, after saving them: the
    save is logged when that trainer's `step` events reach it. A log of the same step by an earlier trainer,
    whose trajectory was retrained since, does not count (the soak resumed from such a save once, and the
    step's metrics from the trajectory it continued never reached TensorBoard)."""
    start = 0
    for i, e in enumerate(events):
        if e.get("event") == "trainer-started" and (e.get("step") or 0) < step:
            start = i
    return any(e.get("event") == "step" and isinstance(e.get("step"), int) and e["step"] >= step
               for e in events[start:])


def prepare_resume(
    ckpt_dir: Path, world_size: int, ledger: Any = None, job_id: str | None = None, chunk: int | None = None
) -> ResumeDecision:
    """Point verl's tracker at the newest verified checkpoint; move torn newer ones aside; never resume torn.

    A verified checkpoint newer than the newest logged step is set aside too: verl saves a step before it
    logs it, so a trainer stopped (or killed) between the two leaves a step whose metrics never reached
    TensorBoard; resuming after it would leave that hole forever, retraining it fills it.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    dirs = step_dirs(ckpt_dir)
    good = [s for s in sorted(dirs) if verify(dirs[s], world_size).ok]
    skipped = []
    logged = logged_steps(ledger)
    if logged is not None:
        events = ledger.read()
        for step in [s for s in good if not logged_by_producer(events, s)]:
            aside = dirs[step].with_name(f"{dirs[step].name}.unlogged-{int(time.time())}")
            dirs[step].rename(aside)
            skipped.append(step)
            good.remove(step)
            ledger.append("checkpoint-skipped", job_id=job_id, chunk=chunk, step=step,
                          reason=f"saved but never logged by the trainer that saved it (newest logged step "
                          f"{logged})", moved_to=aside.name)
        dirs = step_dirs(ckpt_dir)
    newest = good[-1] if good else None
    for step in sorted(dirs):
        if step in good or (newest is not None and step < newest):
            continue
        verdict = verify(dirs[step], world_size)
        aside = dirs[step].with_name(f"{dirs[step].name}.torn-{int(time.time())}")
        dirs[step].rename(aside)
        skipped.append(step)
        if ledger is not None:
            ledger.append(
                "checkpoint-skipped",
                job_id=job_id,
                chunk=chunk,
                step=step,
                reason=verdict.reason,
                moved_to=aside.name,
            )
    tracked = read_tracker(ckpt_dir)
    if newest is None:
        # Only saves of logged steps count as lost: one newer than the log was set aside just now or by an
        # earlier chunk (it is still on disk), and with nothing older to go back to the run starts over.
        saved_before = [
            e.get("step") for e in (ledger.read() if ledger is not None else [])
            if e.get("event") == "saved" and isinstance(e.get("step"), int) and (logged is None or e["step"] <= logged)
        ]
        if saved_before:
            return ResumeDecision(
                False,
                None,
                f"the ledger shows saves up to step {max(saved_before)} but no "
                f"verified checkpoint is left in {ckpt_dir}",
                skipped,
            )
        (ckpt_dir / TRACKER).unlink(missing_ok=True)
        return ResumeDecision(True, None, "no checkpoint yet: start from step 0", skipped)
    if tracked != newest:
        write_tracker(ckpt_dir, newest)
        reason = f"tracker said {tracked if tracked is not None else 'nothing'}; resuming from verified step {newest}"
    else:
        reason = f"resuming from verified step {newest}"
    return ResumeDecision(True, newest, reason, skipped)


def set_aside_dirs(ckpt_dir: Path) -> dict[str, int]:
    """Folders prepare_resume set aside, by name → the step they hold."""
    return {p.name: step for p, step in _dirs(ckpt_dir, SET_ASIDE_DIR)}


def removable_set_aside(set_aside: dict[str, int], verified: list[int]) -> list[str]:
    """The set-aside folders a verified save of a later step has made useless, sorted by name.

    Kept otherwise: until then it is the newest copy of its step (a person may want it, or what it holds).
    """
    newest = max(verified, default=None)
    return sorted(name for name, step in set_aside.items() if newest is not None and step < newest)


def apply_retention(
    ckpt_dir: Path, world_size: int, keep_last: int, keep_every: int, protect: set[int] | None = None
) -> list[str]:
    """Keep the newest K verified checkpoints plus every Nth step; delete the rest, whole folders, and the
    set-aside folders of steps older than the newest verified save. Returns the names of the folders deleted.

    Reads the disk, not memory, so it works across restarts; an unverified folder (maybe still being written)
    and the tracker's step are never deleted; nothing is deleted unless a newer verified checkpoint exists.
    """
    good = verified_steps(ckpt_dir, world_size)
    if not good:
        return []
    keep = set(good[-keep_last:]) | set(protect or ())
    if keep_every:
        keep |= {s for s in good if s % keep_every == 0}
    tracked = read_tracker(ckpt_dir)
    if tracked is not None:
        keep.add(tracked)
    deleted = []
    dirs = step_dirs(ckpt_dir)
    for step in good:
        if step in keep or step >= good[-1]:
            continue
        shutil.rmtree(dirs[step], ignore_errors=True)
        deleted.append(dirs[step].name)
    for name in removable_set_aside(set_aside_dirs(ckpt_dir), good):
        shutil.rmtree(ckpt_dir / name, ignore_errors=True)
        deleted.append(name)
    return deleted


def disk_check(path: Path, need_bytes: int) -> tuple[bool, int]:
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return free >= need_bytes, free


def newest_size(ckpt_dir: Path, world_size: int) -> int:
    step = latest_good(ckpt_dir, world_size)
    if step is None:
        return 0
    return verify(step_dirs(ckpt_dir)[step], world_size).bytes


def partial_size(ckpt_dir: Path) -> int:
    """Bytes in the newest step folder, complete or not: what a first save wrote before it failed."""
    dirs = step_dirs(ckpt_dir)
    if not dirs:
        return 0
    newest = dirs[max(dirs)]
    return sum(p.stat().st_size for p in newest.rglob("*") if p.is_file() and not p.is_symlink())


def disk_full(ckpt_dir: Path, world_size: int) -> bool:
    """Less room left where checkpoints go than the newest checkpoint takes; before the first complete save,
    than the torn one took (the soak's seed 2 saw a first save die of ENOSPC read as an unknown crash)."""
    size = newest_size(ckpt_dir, world_size) or partial_size(ckpt_dir)
    return size > 0 and not disk_check(ckpt_dir, size)[0]
