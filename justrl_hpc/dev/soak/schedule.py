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
}
# Faults that end the trainer without a save of the newest step: steps since the last verified save retrain.
LOSSY = ("sigterm-preemption", "kill9-trainer", "kill9-in-save", "node-lost", "disk-full", "outside-requeue")
# A SIGTERM-only preemption leaves the job cancelled (a SIGTERM may be a cancel): the soak resumes it with the
# one command a person would, `launch --resume`.
NEEDS_RESUME = ("sigterm-preemption",)


@dataclass(frozen=True)
class Fault:
    chunk: int  # the chunk number it hits (1 = the first chunk of the run)
    kind: str
    moment: str  # "start" or "train"
    delay_s: float  # after the chunk's start event / its first logged step


def draw(seed: int, chunks: int, fault_share: float = 0.75) -> list[Fault]:
    """About `fault_share` of chunks 1..chunks-1 get a fault (the last is left to finish); every kind at
    least once when there are enough chunks, the rest drawn at random."""
    rng = random.Random(seed)
    slots = list(range(1, chunks))
    hit = sorted(rng.sample(slots, max(1, round(len(slots) * fault_share)))) if slots else []
    kinds = list(CATALOGUE)
    rng.shuffle(kinds)
    picked = kinds[: len(hit)] + [rng.choice(list(CATALOGUE)) for _ in range(len(hit) - len(kinds))]
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
