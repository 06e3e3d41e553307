"""Training-dynamics and progress rules on real TensorBoard event files and real ledgers.

Traces are written with TensorBoard's own EventFileWriter and read back with TensorBoard's EventAccumulator, with anomalies planted at known
steps on top of a trace shaped like JustRL's published dynamics.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from dataclasses import asdict, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from justrl_hpc.core.errors import UserError
from justrl_hpc.core.ledger import Ledger
from justrl_hpc.core.settings import build
from justrl_hpc.monitor.findings import Finding
from justrl_hpc.monitor.rules.progress import ProgressSettings, evaluate_progress
from justrl_hpc.monitor.rules.training import TrainingWatch, TrainRuleSettings
from justrl_hpc.monitor.schema import ALIASES, canonical, truncation_rate
from justrl_hpc.monitor.settings import DEFAULT_RULES, SECTIONS, MonitorSettings, load

CAP = 15360  # data.max_response_length of the JustRL recipes
T0 = 1_790_000_000.0
Values = dict[str, float]

# -- traces ------------------------------------------------------------------------------------------------


def healthy(n: int, seed: int = 7) -> list[Values]:
    """Steps 1..n like JustRL's curves: entropy wandering in 1.2–1.4, length 8k → 4k, reward −0.6 → +0.4,
    ~296 s steps with a save and a validation every 50 steps, verl 0.9.1 V1 clip_ratio semantics."""
    rng = random.Random(seed)
    out = []
    for s in range(1, n + 1):
        entropy = min(1.4, max(1.2, 1.3 + 0.07 * math.sin(2 * math.pi * s / 60) + rng.gauss(0, 0.02)))
        length = 4000 + 4000 * math.exp(-s / 150) + rng.gauss(0, 60)
        if rng.random() < 0.3:  # a response reached the cap: clip_ratio is then the truncated share
            mx, clip = float(CAP), rng.uniform(0.002, 0.02)
        else:  # V1: the share tied with the batch's longest response, not a truncation rate
            mx, clip = rng.uniform(12000, 15000), 1 / 2048
        reward = -0.6 + 1.0 / (1 + math.exp(-(s - 200) / 60)) + rng.gauss(0, 0.04)
        save, test = (60.0, 400.0) if s % 50 == 0 else (0.0, 0.0)
        v = {
            "actor/entropy": entropy,
            "response_length/mean": length,
            "response_length/max": mx,
            "response_length/clip_ratio": clip,
            "critic/score/mean": reward,
            "critic/rewards/mean": reward,
            "actor/grad_norm": 0.25 * math.exp(rng.gauss(0, 0.15)),
            "actor/pg_loss": rng.gauss(0, 0.01),
            "actor/pg_clipfrac": 0.002 * math.exp(rng.gauss(0, 0.3)),
            "timing_s/step": 296 * math.exp(rng.gauss(0, 0.04)) + save + test,
        }
        if save:
            v["timing_s/save_checkpoint"], v["timing_s/testing"] = save, test
        out.append(v)
    return out


def write_tb(logdir: Path, steps: list[Values], first: int = 1, wall0: float = T0) -> list[float]:
    """One event file written by TensorBoard's writer; returns each step's wall time."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(logdir))
    walls = []
    for i, values in enumerate(steps):
        step, wall = first + i, wall0 + 296.0 * i
        walls.append(wall)
        # One event per step holding all its scalars (verl's SummaryWriter writes one per tag; the reader
        # sees the same series either way, and this keeps the writer's pure-Python CRC out of the budget).
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in values.items()]
        )
        writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))
    writer.close()
    return walls


def read_tb(logdir: Path) -> list[tuple[int, float, Values]]:
    """(step, wall, {tag: value}) per step, oldest first, through TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    by_step: dict[int, tuple[float, Values]] = {}
    for tag in acc.Tags()["scalars"]:
        for ev in acc.Scalars(tag):
            wall, vals = by_step.setdefault(ev.step, (ev.wall_time, {}))
            vals[tag] = ev.value
    return [(s, w, v) for s, (w, v) in sorted(by_step.items())]


def run(watch: TrainingWatch, series: list[tuple[int, float, Values]]) -> dict[int, list[Finding]]:
    return {step: watch.observe(step, values, wall) for step, wall, values in series}


def first_seen(found: dict[int, list[Finding]]) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for step in sorted(found):
        for f in found[step]:
            out.setdefault(f.key, (step, f.severity))
    return out


def steps_with(found: dict[int, list[Finding]], key: str) -> list[int]:
    return [s for s in sorted(found) if any(f.key == key for f in found[s])]


def trace(tmp_path: Path, name: str, steps: list[Values]) -> list[tuple[int, float, Values]]:
    logdir = tmp_path / name
    write_tb(logdir, steps)
    return read_tb(logdir)


# A rules file's absolute entropy lines (off by default: the paper's band is context, not a law).
LINES = {"entropy_band": (0.8, 2.0), "entropy_critical_band": (0.6, 3.0)}
RAW = TrainRuleSettings(entropy_ema_alpha=1.0, reward_ema_alpha=1.0, **LINES)  # no smoothing: exact expected steps


def planted_a(n: int = 500) -> list[Values]:
    """Entropy collapses to 0.45 at step 300, steps get 1.6× slower at 350, reward falls to −0.5 at 450."""
    steps = healthy(n)
    rng = random.Random(3)
    for s, v in enumerate(steps, start=1):
        if s >= 300:
            v["actor/entropy"] = 0.45 + rng.gauss(0, 0.01)
        if s >= 350:
            v["timing_s/step"] *= 1.6
        if s >= 450:
            v["critic/score/mean"] = v["critic/rewards/mean"] = -0.5 + rng.gauss(0, 0.03)
    return steps


# -- metric names and truncation ---------------------------------------------------------------------------


def test_aliases_and_verl_names() -> None:
    assert canonical("actor/entropy") == canonical("actor/entropy_loss") == "entropy"
    assert canonical("critic/score/mean") == canonical("critic/rewards/mean") == "reward"
    assert canonical("timing_s/step") == "step_time" and canonical("actor/ppo_kl") == "ppo_kl"
    assert canonical("val-core/aime24/acc/mean@32") is None
    # The names verl 0.9.1 logs, read from the installed sources (not imported: no torch here).
    base = Path(find_spec("verl").origin).parent  # type: ignore[arg-type,union-attr]
    text = "".join(
        (base / p).read_text()
        for p in (
            "trainer/ppo/metric_utils.py",
            "trainer/ppo/ray_trainer.py",
            "trainer/ppo/core_algos.py",
            "workers/utils/losses.py",
        )
    )
    for name, tags in ALIASES.items():
        primary = tags[0]
        if primary.startswith("timing_s/"):
            assert f'marked_timer("{primary.split("/", 1)[1]}"' in text, primary
        else:
            assert f'"{primary}"' in text, (name, primary)
    # 0.9.1 still logs actor/entropy_loss from the engine workers' loss when it computes entropy in the update;
    # the rules read actor/entropy (the rollout batch's entropy before the update) when both are there.
    assert '"actor/entropy_loss"' in text
    both = {"actor/entropy": 1.3, "actor/entropy_loss": 0.2}
    assert TrainingWatch().observe(1, both) == [] and canonical("actor/entropy_loss") == "entropy"


def test_truncation_rate() -> None:
    v1_uncut = {"response_length/max": 14000.0, "response_length/clip_ratio": 1 / 256}
    at_cap = {"response_length/max": float(CAP), "response_length/clip_ratio": 0.08}
    assert truncation_rate(v1_uncut, CAP) == 0.0  # tied with the batch's longest response: nothing cut
    assert truncation_rate(at_cap, CAP) == pytest.approx(0.08)
    assert truncation_rate({"response_length/max": float(CAP)}, CAP) is None  # no per-sample source
    assert truncation_rate(at_cap, None) is None


# -- training rules on event files -------------------------------------------------------------------------


def test_published_dynamics_raise_nothing(tmp_path: Path) -> None:
    series = trace(tmp_path, "healthy", healthy(500))
    assert len(series) == 500 and series[0][0] == 1
    found = run(TrainingWatch(TrainRuleSettings(), CAP), series)
    assert {s: [f.key for f in fs] for s, fs in found.items() if fs} == {}
    found = run(TrainingWatch(RAW, CAP), series)  # nor without smoothing
    assert {s: [f.key for f in fs] for s, fs in found.items() if fs} == {}


def test_planted_collapse_slowdown_and_reward_fall(tmp_path: Path) -> None:
    series = trace(tmp_path, "a", planted_a())
    found = run(TrainingWatch(RAW, CAP), series)
    assert first_seen(found) == {
        "T3-entropy-collapse:band": (304, "critical"),  # < 0.6 for entropy_critical_steps=5 from step 300
        "T3-entropy-collapse:drift": (304, "warn"),  # > 30 % below the 200-step median for 5 steps
        "T3-entropy-collapse:reference": (304, "warn"),  # the 5-step median < 40 % of the early reference, 3 steps
        "T3-entropy-collapse:trend": (328, "warn"),  # the 100-step log-linear fit halves it, for 3 steps
        "S3-slowdown:step_time": (354, "warn"),  # > 1.33 × the 50-step median for 5 steps from 350
        "T8-reward-collapse:drop": (459, "critical"),  # 0.3 below the best for 10 steps from 450
    }
    assert steps_with(found, "T3-entropy-collapse:band") == list(range(304, 501))  # it never recovers
    (band,) = [f for f in found[304] if f.key == "T3-entropy-collapse:band"]
    assert (band.metric, band.threshold, band.step) == ("actor/entropy", 0.6, 304)
    assert "0.6" in band.message and "step 304" in band.message and band.value < 0.5
    # the windowed rules follow their window: the slowdown resolves once slow steps are the median
    slow = steps_with(found, "S3-slowdown:step_time")
    assert slow[0] == 354 and slow[-1] < 400

    # With the default EMA (α=0.1) the band's line is crossed ~16 steps later, as critical.
    smooth = first_seen(run(TrainingWatch(TrainRuleSettings(**LINES), CAP), series))
    step, severity = smooth["T3-entropy-collapse:band"]
    assert 312 <= step <= 326 and severity == "critical"
    # The defaults draw no absolute line; the run's own history still reports the collapse, as early.
    default = first_seen(run(TrainingWatch(TrainRuleSettings(), CAP), series))
    assert "T3-entropy-collapse:band" not in default
    assert default["T3-entropy-collapse:reference"][0] <= 306 and "T3-entropy-collapse:drift" in default


def test_planted_length_explosion_and_truncation(tmp_path: Path) -> None:
    steps = healthy(340)
    for s, v in enumerate(steps, start=1):
        if s >= 300:
            v.update(
                {
                    "response_length/mean": 13000.0,
                    "response_length/max": float(CAP),
                    "response_length/clip_ratio": 0.25,
                }
            )
    found = run(TrainingWatch(TrainRuleSettings(), CAP), trace(tmp_path, "b", steps))
    assert first_seen(found) == {
        "T6-truncation:rate": (304, "critical"),  # 25 % > 15 % for 5 steps
        "T5-length-explosion:cap": (309, "warn"),  # > 78 % of 15,360 for 10 steps
        "T5-length-explosion:drift": (309, "warn"),  # > +50 % over the 200-step median for 10 steps
    }
    (f,) = [f for f in found[304] if f.rule == "T6-truncation"]
    assert f.value == 0.25 and f.threshold == 0.15 and "15,360" in f.message
    # Without the cap known the cap-relative checks are off; the median one still fires.
    blind = first_seen(run(TrainingWatch(TrainRuleSettings(), None), read_tb(tmp_path / "b")))
    assert set(blind) == {"T5-length-explosion:drift"}


def test_planted_nan_and_grad_spikes(tmp_path: Path) -> None:
    steps = healthy(440)
    steps[250 - 1]["actor/grad_norm"] = float("nan")
    steps[250 - 1]["actor/pg_loss"] = float("inf")
    for s in (400, 420, 423, 426):
        steps[s - 1]["actor/grad_norm"] = 5.0
    found = run(TrainingWatch(TrainRuleSettings(), CAP), trace(tmp_path, "c", steps))
    assert first_seen(found) == {
        "T1-nonfinite:actor/grad_norm": (250, "critical"),
        "T1-nonfinite:actor/pg_loss": (250, "critical"),
        "T2-grad-norm-spike:grad_norm": (400, "warn"),
    }
    assert steps_with(found, "T1-nonfinite:actor/grad_norm") == list(range(250, 260))  # hold_steps=10
    spikes = {s: f.severity for s in found for f in found[s] if f.rule == "T2-grad-norm-spike"}
    assert spikes == {
        **{s: "warn" for s in range(400, 410)},
        **{s: "warn" for s in range(420, 426)},
        **{s: "critical" for s in range(426, 430)},
        **{s: "warn" for s in range(430, 436)},
    }
    (nan,) = [f for f in found[250] if f.metric == "actor/grad_norm"]
    assert nan.value == "nan" and "step 250" in nan.message
    # the NaN stayed out of the windows: no spike judged against a poisoned baseline after it
    assert not [f for s in range(251, 400) for f in found[s] if f.rule == "T2-grad-norm-spike"]


# -- state and rewind --------------------------------------------------------------------------------------


def test_state_round_trip_mid_stream_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    series = trace(tmp_path, "a", planted_a())
    nan_steps = healthy(300)
    nan_steps[120]["actor/grad_norm"] = float("nan")
    for settings, data in (
        (RAW, series),
        (TrainRuleSettings(), series),
        (TrainRuleSettings(), trace(tmp_path, "n", nan_steps)),
    ):
        whole = run(TrainingWatch(settings, CAP), data)
        watch = TrainingWatch(settings, CAP)
        resumed: dict[int, list[Finding]] = {}
        for step, wall, values in data:
            resumed[step] = watch.observe(step, values, wall)
            if step in (118, 121, 302, 356, 455):  # mid-streak, mid-hold
                text = json.dumps(watch.state(), allow_nan=False)  # strict JSON for SQLite
                watch = TrainingWatch.from_state(json.loads(text), settings)
        assert {s: [asdict(f) for f in fs] for s, fs in resumed.items()} == {
            s: [asdict(f) for f in fs] for s, fs in whole.items()
        }
    state = watch.state()
    assert len(state["records"]) <= TrainRuleSettings().history_steps() < 300
    assert len(json.dumps(state)) < 400_000


def test_rewind_replaces_history(tmp_path: Path) -> None:
    """A resume re-logs steps 251..: the first chunk's NaN at 280 belongs to history that was replaced."""
    clean = healthy(400)
    torn = [dict(v) for v in clean[:300]]
    torn[280 - 1]["actor/grad_norm"] = float("nan")
    write_tb(tmp_path / "chunk1", torn)
    write_tb(tmp_path / "chunk2", clean[250:], first=251)  # the next chunk's event file
    first, second = read_tb(tmp_path / "chunk1"), read_tb(tmp_path / "chunk2")
    reference = run(TrainingWatch(RAW, CAP), trace(tmp_path, "clean", clean))

    watch = TrainingWatch(RAW, CAP)
    before = run(watch, first)
    assert first_seen(before) == {"T1-nonfinite:actor/grad_norm": (280, "critical")}
    after = run(watch, second)  # step 251 ≤ 300: an implicit rewind(251)
    assert watch.last_step == 400
    assert {s: [asdict(f) for f in fs] for s, fs in after.items()} == {
        s: [asdict(f) for f in reference[s]] for s in range(251, 401)
    }
    # explicit rewind, then a replay of the same steps gives the same findings again
    watch = TrainingWatch(RAW, CAP)
    run(watch, first)
    watch.rewind(260)
    assert watch.last_step == 259
    replay = run(watch, [(s, w, v) for s, w, v in first if s >= 260])
    assert first_seen(replay) == {"T1-nonfinite:actor/grad_norm": (280, "critical")}
    # a rewind behind the kept history starts the windows over, without error
    watch.rewind(0)
    assert watch.last_step is None and watch.observe(1, clean[0]) == []


# -- progress rules on real ledgers ------------------------------------------------------------------------


def chunk(led: Ledger, job: str, n: int, start: int, steps: range, saves: tuple[int, ...] = ()) -> None:
    led.append("started", job_id=job, chunk=n, restart=n - 1, nodes=4)
    led.append("ray-ready", job_id=job, chunk=n, nodes_seen=4, gpus_seen=32.0)
    led.append("trainer-started", job_id=job, chunk=n, step=start, pid=1234)
    for s in steps:
        led.append("step", job_id=job, chunk=n, step=s)
        if s in saves:
            led.append("saved", job_id=job, chunk=n, step=s, bytes=21_000_000_000)


def keys(found: list[Finding]) -> dict[str, str]:
    return {f.key: f.severity for f in found}


STEP_TIMES = [296.0] * 40 + [700.0]  # one validation step among them


def test_progress_healthy_then_stalled(tmp_path: Path) -> None:
    led = Ledger(tmp_path)
    led.append("submitted", job_id="68", chunk=None, nodes=4)
    chunk(led, "68", 1, 0, range(1, 61), saves=(50,))
    events, t = led.read(), time.time()  # step 60's TensorBoard point lands at t
    assert evaluate_progress(events, 60, t, STEP_TIMES, True, t + 100, save_freq=50) == []
    warn = evaluate_progress(events, 60, t, STEP_TIMES, True, t + 2000, save_freq=50)
    assert keys(warn) == {"S1-stall:run": "warn"}
    # p95 of the step times is 296 s: 3 × 296 < the 30 min floor
    assert warn[0].threshold == 1800 and "after step 60" in warn[0].message and warn[0].step == 60
    crit = evaluate_progress(events, 60, t, STEP_TIMES, True, t + 4000, save_freq=50)
    assert keys(crit) == {"S1-stall:run": "critical"} and crit[0].threshold == 3600
    slow = evaluate_progress(events, 60, t, [900.0] * 20, True, t + 2600, save_freq=50)
    assert slow == []  # 3 × 900 s = 45 min: a slower recipe's own p95 sets the line
    # a job that is not running (pending in the requeue gap) is not stalled
    assert evaluate_progress(events, 60, t, STEP_TIMES, False, t + 4000, save_freq=50) == []
    # a fresh chunk waiting for its first step gets startup_grace_s more
    time.sleep(0.01)  # the ledger keeps milliseconds: a start written in t's own millisecond reads as before it
    chunk(led, "68", 2, 50, range(0))
    events, t2 = led.read(), time.time()
    assert keys(evaluate_progress(events, 60, t, STEP_TIMES, True, t2 + 2000, save_freq=50)) == {
        "S7-steps-retrained:68:2": "info"  # steps 51..60 are trained again
    }
    late = evaluate_progress(events, 60, t, STEP_TIMES, True, t2 + 3700, save_freq=50)
    assert keys(late) == {"S1-stall:run": "warn", "S7-steps-retrained:68:2": "info"}
    assert "no first step" in late[0].message and "chunk 2" in late[0].message


def test_progress_no_progress_chunks_and_failure(tmp_path: Path) -> None:
    led = Ledger(tmp_path)
    led.append("submitted", job_id="70", chunk=None, nodes=4)
    chunk(led, "70", 1, 0, range(1, 21), saves=(10, 20))
    led.append(
        "trainer-exited",
        job_id="70",
        chunk=1,
        step=20,
        exit_code=130,
        reason="stopped",
        first_step=1,
        last_saved=20,
        progress=True,
    )
    now = time.time()
    assert evaluate_progress(led.read(), 20, now, STEP_TIMES, False, now) == []
    chunk(led, "70", 2, 20, range(0))
    led.append(
        "trainer-exited",
        job_id="70",
        chunk=2,
        step=None,
        exit_code=1,
        reason="crashed-oom",
        first_step=None,
        last_saved=20,
        progress=False,
    )
    led.append("chunk-failed", job_id="70", chunk=3, reason="crashed-node", detail="Ray saw 3/4 nodes")
    found = evaluate_progress(led.read(), 20, now, STEP_TIMES, False, now)
    assert keys(found) == {"S4-no-progress:chunks": "warn"} and found[0].value == 2
    assert "crashed-node" in found[0].message
    chunk(led, "70", 4, 20, range(0))
    led.append("trainer-exited", job_id="70", chunk=4, exit_code=1, reason="crashed-nccl", progress=False)
    led.append("failed", job_id="70", chunk=4, step=20, reason="3 chunks in a row made no progress")
    found = evaluate_progress(led.read(), 20, now, STEP_TIMES, False, now)
    assert keys(found) == {"S4-no-progress:chunks": "critical", "S4-run-failed:run": "critical"}
    assert "3 chunks in a row" in [f for f in found if f.rule == "S4-run-failed"][0].message
    # a resubmission clears the failure; a new verified save clears the no-progress streak
    led.append("submitted", job_id="71", chunk=None, resumed=True)
    chunk(led, "71", 5, 20, range(21, 31), saves=(30,))
    t = time.time()
    assert evaluate_progress(led.read(), 30, t, STEP_TIMES, True, t) == []
    # the fifth chunk start within 30 min is a restart storm; it passes once the starts are older
    chunk(led, "71", 6, 30, range(0))
    t = time.time()
    found = evaluate_progress(led.read(), 30, t, STEP_TIMES, True, t)
    assert keys(found) == {"S4-restart-storm:chunks": "warn"} and found[0].value == 5
    assert [f.rule for f in evaluate_progress(led.read(), 30, t, STEP_TIMES, False, t + 1900)] == []


def test_planned_requeues_are_not_a_restart_storm(tmp_path: Path) -> None:
    """Chunks that end at their own time limit or on save-now restart by plan (the rehearsal's 2-minute chunks
    start 5 times in 10 minutes); a preemption's restart is not planned."""
    led = Ledger(tmp_path)
    led.append("submitted", job_id="90", chunk=None, nodes=4)
    for n in range(1, 7):
        chunk(led, "90", n, 10 * (n - 1), range(10 * (n - 1) + 1, 10 * n + 1), saves=(10 * n,))
        led.append("requeued", job_id="90", chunk=n, step=10 * n, reason="save-now" if n == 3 else "time-limit")
    t = time.time()
    assert "S4-restart-storm" not in [f.rule for f in evaluate_progress(led.read(), 60, t, STEP_TIMES, True, t)]
    for n in range(7, 12):  # chunk 7 follows a time-limit requeue; 8–11 follow preemptions
        chunk(led, "90", n, 60, range(0))
        led.append("requeued", job_id="90", chunk=n, step=60, reason="preempted")
    found = [f for f in evaluate_progress(led.read(), 60, t, STEP_TIMES, True, t) if f.rule == "S4-restart-storm"]
    assert found and found[0].value == 5 and "unplanned" in found[0].message  # the first start, 8, 9, 10, 11


def test_progress_checkpoint_overdue_and_repeated_steps(tmp_path: Path) -> None:
    led = Ledger(tmp_path)
    chunk(led, "80", 1, 0, range(1, 104), saves=(50,))
    now = time.time()
    found = evaluate_progress(led.read(), 103, now, STEP_TIMES, True, now, save_freq=50)
    assert keys(found) == {"S6-checkpoint-overdue:steps": "warn"}
    assert found[0].value == 53 and "due at step 100" in found[0].message
    assert evaluate_progress(led.read(), 101, now, STEP_TIMES, True, now, save_freq=50) == []
    later = now + 1.5 * 50 * 296 + 1800 + 60  # the newest save is older than 1.5 × save_freq × step time
    found = evaluate_progress(led.read(), 101, later - 10, STEP_TIMES, True, later, save_freq=50)
    assert keys(found) == {"S6-checkpoint-overdue:age": "warn"}

    # chunk 2 resumes from 50 (steps 51..103 trained again), and logs step 60 twice
    chunk(led, "81", 2, 50, range(51, 61))
    led.append("step", job_id="81", chunk=2, step=60)
    found = evaluate_progress(led.read(), 60, time.time(), STEP_TIMES, True, time.time(), save_freq=50)
    assert keys(found) == {"S7-step-repeated:81:2": "warn", "S7-steps-retrained:81:2": "info"}
    assert {f.rule: f.value for f in found} == {"S7-step-repeated": 60, "S7-steps-retrained": 53}
    # chunk 3 starts over from 0 although step 50 was verified: a checkpoint was lost
    led.append("checkpoint-skipped", job_id="82", chunk=3, step=50, reason="torn")
    chunk(led, "82", 3, 0, range(1, 3))
    found = evaluate_progress(led.read(), 2, time.time(), STEP_TIMES, True, time.time(), save_freq=50)
    assert keys(found) == {"S7-resume-behind:82:3": "critical"}
    assert "checkpoint-skipped: [50]" in found[0].message and "started over" in found[0].message
    # chunk 4: step 2 was saved but never logged (the trainer stopped between verl's save and its log line), so
    # chunk 4 set it aside and resumed from 1: by design, no lost checkpoint (the soak's first run raised this)
    led = Ledger(tmp_path / "unlogged")
    chunk(led, "83", 1, 0, range(1, 2), saves=(1,))
    led.append("saved", job_id="83", chunk=1, step=2)
    led.append("checkpoint-skipped", job_id="84", chunk=2, step=2,
               reason="saved but never logged (newest logged step 1)")
    chunk(led, "84", 2, 1, range(2, 4))
    found = evaluate_progress(led.read(), 3, time.time(), STEP_TIMES, True, time.time(), save_freq=50)
    assert "S7-resume-behind" not in [f.rule for f in found], found
    led.append("checkpoint-skipped", job_id="85", chunk=3, step=1, reason="torn")  # a verified save lost
    chunk(led, "85", 3, 0, range(1, 2))
    found = evaluate_progress(led.read(), 1, time.time(), STEP_TIMES, True, time.time(), save_freq=50)
    assert "S7-resume-behind:85:3" in keys(found)


# -- settings ----------------------------------------------------------------------------------------------


def test_rules_file_holds_exactly_the_defaults() -> None:
    """monitor/rules.yaml documents every setting of every section, each at the value the code has."""
    import yaml

    loaded = load(DEFAULT_RULES)
    assert loaded.path == DEFAULT_RULES
    defaults = MonitorSettings()
    data = yaml.safe_load(DEFAULT_RULES.read_text())
    assert set(data) == set(SECTIONS)
    for section in SECTIONS:
        assert getattr(loaded, section) == getattr(defaults, section), section
        assert set(data[section]) == set(vars(getattr(defaults, section))), section


def test_settings_are_built_by_the_one_validator() -> None:
    st = build(
        TrainRuleSettings,
        {"entropy_band": None, "reward_floor": -2, "nonfinite_ignore": ["val-"]},
        "training",
    )
    assert st.entropy_band is None and st.reward_floor == -2.0 and st.nonfinite_ignore == ("val-",)
    assert build(TrainRuleSettings, {"entropy_band": [0.2, 0.9]}, "training").entropy_band == (0.2, 0.9)
    assert replace(TrainRuleSettings(), min_samples=5) == build(
        TrainRuleSettings, {"min_samples": 5}, "training"
    )
    progress = build(ProgressSettings, {"checkpoint_overdue_steps": None}, "progress")
    assert progress.checkpoint_overdue_steps is None
    for data, message in (
        ({"nope": 1}, "training.nope: unknown setting; known: "),
        ({"entropy_band": [2.0, 1.0]}, "training.entropy_band: must be [low, high] with low < high"),
        ({"entropy_band": "wide"}, "training.entropy_band: must be [low, high]"),
        ({"min_samples": 1.5}, "training.min_samples: must be an integer, got 1.5"),
        ({"truncation_warn": 2}, "training.truncation_warn: must be ≤ 1, got 2"),
        ({"hold_steps": 0}, "training.hold_steps: must be ≥ 1, got 0"),
        ({"grad_sigma": True}, "training.grad_sigma: must be a number, got True"),
        ({"nonfinite_ignore": "val-"}, "training.nonfinite_ignore: must be a list of strings"),
    ):
        with pytest.raises(UserError) as err:
            build(TrainRuleSettings, data, "training")
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^progress\.stall_warn_min_s: must be ≥ 0"):
        build(ProgressSettings, {"stall_warn_min_s": -1}, "progress")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training:\n  entropy_bands: [1, 2]\n", "training.entropy_bands: unknown setting"),
        ("progress:\n  stall_warn_factor: fast\n", "progress.stall_warn_factor: must be a number"),
        ("gpu:\n  nope: 1\n", "gpu.nope: unknown setting"),
        (
            "alerting:\n  poll_s: 5\n",
            "unknown section 'alerting'; valid sections: training, progress, gpu, daemon",
        ),
        ("training: [1]\n", "training: must be a mapping of settings"),
        ("training:\n  - a: [\n", "is not valid YAML"),
    ],
)
def test_bad_config_file_is_one_error_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    proc = subprocess.run(
        [sys.executable, "-m", "justrl_hpc.monitor.settings", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and message in proc.stderr


def test_check_command_prints_resolved_settings(tmp_path: Path) -> None:
    path = tmp_path / "monitor.yaml"
    path.write_text("training:\n  entropy_band: [0.9, 1.8]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "justrl_hpc.monitor.settings", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["training"]["entropy_band"] == [0.9, 1.8] and out["training"]["entropy_critical_band"] is None
    assert out["progress"]["stall_warn_min_s"] == 1800
    assert out["gpu"]["xid_critical"][0] == 48


def test_a_hang_the_chunk_took_stacks_of_is_one_alert_naming_the_folder_and_what_followed() -> None:
    from justrl_hpc.monitor.rules.progress import HANG_HOLD_S, evaluate_hangs

    t0 = 1_000_000.0

    def at(dt: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t0 + dt))

    hang = {"event": "hang", "time": at(0), "job_id": "41", "chunk": 3, "step": 120,
            "stacks": "logs/stacks/20261207T120000Z", "stalled_s": 1810, "limit_s": 1800, "on_hang": "restart",
            "stack_files": 37, "nodes_answered": 4, "silent": ["n3:811(vllm,stopped)"]}
    (f,) = evaluate_hangs([hang], t0 + 5)
    assert (f.key, f.severity, f.step) == ("S1-hang-stacks:20261207T120000Z", "warn", 120)
    assert "no step for 1810 s after step 120 (limit 1800 s)" in f.message
    assert "logs/stacks/20261207T120000Z (37 files, 4 nodes; no answer from n3:811(vllm,stopped))" in f.message
    assert f.message.endswith("the chunk then is acting on it")
    after = [hang, {"event": "restarted-in-job", "time": at(3)}, {"event": "requeued", "time": at(900)}]
    assert evaluate_hangs(after, t0 + 60)[0].message.endswith("restarted the trainer in the job")
    assert evaluate_hangs([hang, after[2]], t0 + 60)[0].message.endswith("requeued itself")
    assert evaluate_hangs([{**hang, "on_hang": "wait"}], t0 + 60)[0].message.endswith("waits (run.on_hang: wait)")
    # Two hangs are two alerts; each is held for a while, then gone.
    second = {**hang, "time": at(7200), "stacks": "logs/stacks/20261207T140000Z"}
    assert len(evaluate_hangs([hang, second], t0 + 7300)) == 2
    assert [x.key for x in evaluate_hangs([hang, second], t0 + HANG_HOLD_S + 1)] == [
        "S1-hang-stacks:20261207T140000Z"]
    assert evaluate_hangs([{"event": "step", "time": at(0), "step": 1}], t0) == []
