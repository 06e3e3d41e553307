"""The soak's fault catalogue and its seeded schedule: which fault hits which chunk, and when.

A fault fires on a chunk either during its bring-up (`start`: a few seconds after the chunk's `started`
event, while Ray comes up or the trainer loads: the faults that overlap a restart) or while it trains
(`train`: after the chunk's first logged step, plus a random delay). Every chunk without a fault ends at its
own time limit: the pre-limit signal, the commonest fault of all.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

# kind → the moments it may fire at. `start` faults hit a chunk that is itself a restart.
CATALOGUE: dict[str, tuple[str, ...]] = {
    "usr2-preemption": ("start", "train"),  # scancel --signal=USR2: what a PreemptMode=REQUEUE grace sends
    "sigterm-preemption": ("train",),  # SIGTERM only (clusters whose preemption submitit does not see)
    "outside-requeue": ("start", "train"),  # scontrol requeue by an admin or a script
    "save-now": ("train",),  # justrl-hpc save-now RUN
    "kill9-trainer": ("train",),  # kill -9 of verl's main_ppo at a random moment
    "kill9-in-save": ("train",),  # kill -9 inside the next checkpoint write (the pre-limit save, usually)
    "node-lost": ("train",),  # the worker node's slurmd and job processes, SIGKILL at one instant
    "disk-full": ("train",),  # the checkpoints' filesystem full until the chunk's trainer has exited
    "ctld-restart": ("start", "train"),  # slurmctld stopped and started again while the chunk runs
    "daemon-restart": ("start", "train"),  # the monitor daemon kill -9, restarted 3 s later
    # kill -9 of one of verl's FSDP workers (what the kernel's OOM killer does): the trainer ends on Ray's
    # ActorDiedError with every node alive, and the chunk restarts it in the job
    "trainer-crash": ("train",),
    "hang": ("train",),  # SIGSTOP of one of verl's FSDP workers: no step, the stacks, then recovery
    # the worker node's replayed NVML reports a failed row remap, then a USR2: the next chunk's preflight
    # finds it and the run goes on in a chained job without that node
    "bad-node": ("train",),
    # the site upgrades the driver on every node between two chunks (each node's replayed NVML inventory says
    # 550 instead of 535): the next chunk's preflights record it, and the monitor's E1-env-drift says so
    "driver-upgrade": ("train",),
}
# Kinds drawn at most once: a second bad node while the first is still out exceeds the one node a 2-node job
# may leave out (cluster.max_excluded_nodes), which stops the run by design.
ONCE = ("bad-node",)
# Faults beside the chunk (the controller, the monitor, a replayed driver): its trainer keeps training, so the
# pace may cut the chunk as soon as they fired (seed 2, 2026-12-07: waiting 20 s after them let three chunks
# train 15-21 steps at ~1 s a step, and the run finished in 11 chunks of the 16 asked for).
BESIDE = ("ctld-restart", "daemon-restart", "driver-upgrade")
# How long the pace leaves a chunk after its fault fired before it may cut it: for the fault to show in the
# ledger (a stop, an exit), except for one beside the chunk.
PACE_AFTER_FAULT_S = 20.0


def pace_wait_s(kind: str) -> float:
    return 0.0 if kind in BESIDE else PACE_AFTER_FAULT_S


# The faults after which the chunk restarts its trainer inside the job (when the time left allows).
IN_JOB = ("trainer-crash", "hang", "kill9-trainer")
# Faults that end the trainer without a save of the newest step: steps since the last verified save retrain.
LOSSY = ("sigterm-preemption", "kill9-trainer", "kill9-in-save", "node-lost", "disk-full", "outside-requeue",
         "trainer-crash", "hang")
# A SIGTERM-only preemption leaves the job cancelled (a SIGTERM may be a cancel): the soak resumes it with the
# one command a person would, `launch --resume`.
NEEDS_RESUME = ("sigterm-preemption",)


@dataclass(frozen=True)
class Fault:
    chunk: int  # the chunk number it hits (1 = the first chunk of the run)
    kind: str
    moment: str  # "start" or "train"
    delay_s: float  # after the chunk's start event / its first logged step


def draw(seed: int, chunks: int, fault_share: float = 0.9) -> list[Fault]:
    """About `fault_share` of chunks 1..chunks-1 get a fault (the last is left to finish); every kind at
    least once when there are enough chunks, the rest drawn at random."""
    rng = random.Random(seed)
    slots = list(range(1, chunks))
    hit = sorted(rng.sample(slots, max(1, round(len(slots) * fault_share)))) if slots else []
    kinds = list(CATALOGUE)
    rng.shuffle(kinds)
    again = [k for k in CATALOGUE if k not in ONCE]
    picked = kinds[: len(hit)] + [rng.choice(again) for _ in range(len(hit) - len(kinds))]
    rng.shuffle(picked)
    out = []
    for chunk, kind in zip(hit, picked, strict=True):
        moment = rng.choice(CATALOGUE[kind])
        delay = rng.uniform(2, 15) if moment == "start" else rng.uniform(0, 20)
        out.append(Fault(chunk, kind, moment, round(delay, 1)))
    return out


def dumps(faults: list[Fault]) -> str:
    return json.dumps([asdict(f) for f in faults], indent=1)


def loads(text: str) -> list[Fault]:
    return [Fault(**f) for f in json.loads(text)]


# How far past the asked-for chunks a fault that lost its chunk may move: the pace cuts a chunk at its share of
# the steps, so a run has at least C chunks, and every lossy fault adds some (seeds 1-3 ran 21-23 for 16).
SPARE_CHUNKS = 2


def next_free(taken: set[int] | dict[int, object], after: int, chunks: int) -> int | None:
    """The first chunk after `after` with no fault of its own, up to `chunks` + SPARE_CHUNKS: where a fault whose
    chunk ended before it fired goes (seed 2, 2026-12-07: the chunk that left the bad node out and one more
    skipped theirs because the next chunk had one)."""
    return next((c for c in range(after + 1, chunks + SPARE_CHUNKS + 1) if c not in taken), None)

