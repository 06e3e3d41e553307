"""`justrl-monitor`, the terminal dashboard: the data layer (`snapshot.load_view`) and the render functions
(`panels`, `screen`) against run folders built from real files (the resolved JustRL recipe's run.yaml, a
ledger of several chunks, TensorBoard event files written by TensorBoard's own writer, node telemetry
replayed from M2's 8-GPU recording through the agent's own sample builder, alerts written by the monitor's
JsonlSink), and the whole program in a real terminal (tmux) at 80×24 and 200×60: keys, quitting, the
terminal restored. One test reads a real Slurm job's state from the dev cluster.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from justrl_hpc.core import config_files
from justrl_hpc.monitor.agent.sampler import samples_from_recording
from justrl_hpc.monitor.daemon.sinks import JsonlSink
from justrl_hpc.monitor.dashboard import app, panels
from justrl_hpc.monitor.dashboard.screen import parse_keys, render_screen
from justrl_hpc.monitor.dashboard.snapshot import ViewCache, load_view
from justrl_hpc.monitor.dashboard.sources import TELEMETRY_START_BYTES, _cursors_near_end
from justrl_hpc.monitor.findings import Alert

REPO = Path(__file__).resolve().parents[2]
RECORDING = REPO / "tests" / "data" / "nvml_a800_8gpu.jsonl"
STEP_S = 296.0  # JustRL's published pace, ~12 steps an hour
CHUNK_S = 4 * 3600.0
STARTUP_S = 540.0  # allocation → Ray → model load → first step
PYTHONPATH = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
LATEST_ENTROPY = 1.375  # exact in float32, so the screen shows exactly "1.375"


# -- building a run folder from real files -------------------------------------------------------------------


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RunBuilder:
    """Writes a run folder the way the suite's parts do, with times relative to `now`."""

    def __init__(self, root: Path, name: str, now: float, target: int = 4380) -> None:

        self.dir = root / name
        self.now = now
        for sub in ("checkpoints", "tensorboard", "telemetry", "logs", "control"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        resolved = config_files.resolve("justrl-deepseek-1.5b", "a800-4x8", [], name)
        data = resolved.to_dict()
        data["recipe"]["total_training_steps"] = target
        (self.dir / "run.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        self.ledger_lines: list[dict[str, Any]] = []
        self.tb_points: list[list[tuple[int, float, dict[str, float]]]] = []  # one list per event file

    def event(self, event: str, t: float, job_id: str | None, chunk: int | None, **fields: Any) -> None:
        rec = {"event": event, "time": _iso(t), "job_id": job_id, "chunk": chunk}
        rec.update({k: v for k, v in fields.items() if v is not None})
        rec.update(host="gpu-n1", pid=4242)
        self.ledger_lines.append(rec)

    def chunk(
        self, n: int, job: str, start: float, from_step: int, steps: int, ending: str, save_every: int = 50
    ) -> tuple[float, int]:
        """A chunk: started, ray-ready, trainer-started, `steps` steps (TensorBoard scalars each), saves on
        the save_freq and at the end when it stops for the time limit; then its ending. Returns (end time,
        last saved step)."""
        self.event(
            "started", start, job, n, restart=n - 1, nodes=2, hosts="gpu-n1,gpu-n2", end_time=start + CHUNK_S
        )
        self.event("ray-ready", start + 60, job, n, nodes_seen=2, gpus_seen=16.0, seconds=60.0)
        self.event("trainer-started", start + 61, job, n, step=from_step, seconds_since_start=61.0)
        t = start + STARTUP_S
        saved = from_step
        points: list[tuple[int, float, dict[str, float]]] = []
        for s in range(from_step + 1, from_step + steps + 1):
            t += STEP_S
            self.event("step", t, job, n, step=s)
            points.append((s, t, _metrics(s)))
            if s % save_every == 0:
                self.event("saved", t + 30, job, n, step=s, bytes=21_000_000_000)
                saved = s
        self.tb_points.append(points)
        last = from_step + steps
        if ending == "running":
            return t, saved
        end = t + 60
        if ending == "time-limit":
            self.event("stop-requested", t - 100, job, n, step=last - 1, reason="time-limit")
            if saved != last:
                self.event("saved", t + 30, job, n, step=last, bytes=21_000_000_000)
                saved = last
            self.event(
                "trainer-exited",
                end,
                job,
                n,
                step=last,
                exit_code=130,
                reason="stopped",
                first_step=from_step + 1,
                last_saved=saved,
                progress=True,
            )
            self.event("requeued", end, job, n, step=saved, reason="time-limit")
        else:  # a crash: the steps after the last save are lost
            self.event(
                "trainer-exited",
                end,
                job,
                n,
                step=last,
                exit_code=1,
                reason=ending,
                first_step=from_step + 1,
                last_saved=saved,
                progress=saved > from_step,
            )
            self.event("requeued", end, job, n, step=saved, reason=ending)
        return end, saved

    def write_ledger(self) -> None:
        with open(self.dir / "ledger.jsonl", "a") as fh:
            for rec in self.ledger_lines:
                fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.ledger_lines = []

    def write_tensorboard(self) -> None:
        """One event file per chunk (each trainer process opens its own writer, as verl's Tracking does),
        written with TensorBoard's own EventFileWriter."""
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        for i, points in enumerate(self.tb_points):
            writer = EventFileWriter(str(self.dir / "tensorboard"), filename_suffix=f".chunk{i}")
            for step, wall, metrics in points:
                values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()]
                writer.add_event(
                    event_pb2.Event(wall_time=wall, step=step, summary=summary_pb2.Summary(value=values))
                )
            writer.close()
        self.tb_points = []

    def telemetry(self, host: str, last_time: float, readings: int, job: str = "4001") -> None:
        """The lines a node agent replaying the 8-GPU recording wrote, its newest at `last_time`."""
        lines = samples_from_recording(
            RECORDING, host=host, start=0.0, interval=15.0, job_id=job, limit=readings
        )
        shift = last_time - lines[-1]["time"]
        with open(self.dir / "telemetry" / f"{host}.jsonl", "a") as fh:
            for line in lines:
                line["time"] = round(line["time"] + shift, 3)
                line["host_stats"] = {
                    "cpu_percent": 35.0,
                    "ram_used_bytes": 300 << 30,
                    "ram_total_bytes": 1024 << 30,
                }
                fh.write(json.dumps(line, separators=(",", ":")) + "\n")
        # The agent wrote its last line then: the file's mtime says so too (the tail reads a backlog's
        # arrival from it).
        os.utime(self.dir / "telemetry" / f"{host}.jsonl", (last_time, last_time))

    def alert(self, state: str, t: float, **kw: Any) -> None:
        JsonlSink(self.dir).send(Alert(run=self.dir.name, state=state, time=t, **kw))

    def heartbeat(self, t: float, interval: float = 30.0) -> None:
        (self.dir / "monitor.heartbeat").write_text(json.dumps({"time": t, "interval": interval}))


def _metrics(step: int) -> dict[str, float]:
    """JustRL-like curves: reward −0.6 → +0.4, entropy ~1.4 → 1.2, length 7.5k → 4.6k."""
    x = step / 4380
    return {
        "critic/score/mean": -0.6 + 1.0 * x + 0.05 * math.sin(step),
        "actor/entropy": 1.4 - 0.2 * x + 0.02 * math.cos(step),
        "response_length/mean": 7500 - 2900 * x + 80 * math.sin(step / 3),
        "response_length/clip_ratio": 0.012 + 0.004 * math.sin(step / 5),
        "actor/grad_norm": 0.21 + 0.03 * math.sin(step / 7),
        "timing_s/step": STEP_S + 4 * math.sin(step),
    }


def build_justrl_run(root: Path, name: str = "justrl-ds", now: float | None = None) -> RunBuilder:
    """Four chunks of one job that requeues itself: two time limits, an NCCL crash after its last save
    (10 steps lost and replayed: duplicate steps in TensorBoard), and a running fourth chunk; node gpu-n1 is
    live (its GPU 5 running hot), node gpu-n2 went silent 10 minutes ago; a critical thermal alert fires, a
    host-RAM alert resolved; the monitor daemon's heartbeat is fresh."""
    now = time.time() if now is None else now
    b = RunBuilder(root, name, now)
    job = "4001"
    per_chunk = int((CHUNK_S - STARTUP_S - 300) // STEP_S)  # 45 steps in a 4 h chunk
    # the running chunk started 2 h ago; lay the earlier ones out backwards from there
    running_steps = int((2 * 3600 - STARTUP_S) // STEP_S)
    start4 = now - 2 * 3600 - 30
    gap = 90.0  # requeue → the next start
    crash_steps = 30
    start3 = start4 - gap - (STARTUP_S + crash_steps * STEP_S + 60)
    start2 = start3 - gap - (STARTUP_S + per_chunk * STEP_S + 60)
    start1 = start2 - gap - (STARTUP_S + per_chunk * STEP_S + 60)
    b.event("submitted", start1 - 120, job, None, nodes=2, recipe="justrl-deepseek-1.5b", fingerprint="f00d")
    _, s1 = b.chunk(1, job, start1, 0, per_chunk, "time-limit")
    _, s2 = b.chunk(2, job, start2, s1, per_chunk, "time-limit")
    _, s3 = b.chunk(3, job, start3, s2, crash_steps, "crashed-nccl")
    b.tb_points[-1][-1][2]["actor/entropy"] = 1.9  # a value at a step that the next chunk redoes
    b.chunk(4, job, start4, s3, running_steps, "running")
    b.tb_points[-1][-1][2]["actor/entropy"] = LATEST_ENTROPY
    b.write_ledger()
    b.write_tensorboard()
    b.telemetry("gpu-n1", now - 4, readings=60)
    b.telemetry("gpu-n2", now - 600, readings=20)
    b.alert(
        "firing",
        now - 1500,
        rule="G7-thermal",
        severity="critical",
        key="gpu-n1:5",
        metric="DCGM_FI_DEV_GPU_TEMP",
        value=88,
        threshold=85,
        message="gpu-n1 GPU 5: 88 °C, near its limits (GPU max 85 °C, slowdown 89 °C)",
        node="gpu-n1",
        gpu=5,
    )
    b.alert(
        "firing",
        now - 7200,
        rule="G12-host-ram",
        severity="warn",
        key="gpu-n2:ram",
        metric="ram",
        value=0.93,
        threshold=0.9,
        message="gpu-n2: host RAM 93 % used",
        node="gpu-n2",
    )
    b.alert(
        "resolved",
        now - 6600,
        rule="G12-host-ram",
        severity="warn",
        key="gpu-n2:ram",
        metric="ram",
        value=0.7,
        threshold=0.9,
        message="gpu-n2: host RAM 93 % used",
        node="gpu-n2",
    )
    b.heartbeat(now - 12)
    return b


@pytest.fixture
def justrl_run(tmp_path: Path) -> RunBuilder:
    return build_justrl_run(tmp_path / "runs")


def text_of(renderable: Any, width: int = 100, height: int | None = None) -> str:
    console = Console(
        record=True, width=width, height=height or 40, color_system=None, file=open(os.devnull, "w")
    )
    console.print(renderable)
    return console.export_text()


# -- the data layer --------------------------------------------------------------------------------------------


def test_load_view_reads_every_source(justrl_run: RunBuilder) -> None:
    v = load_view(justrl_run.dir, now=justrl_run.now, use_slurm=False)
    assert (v.name, v.recipe, v.model) == (
        "justrl-ds",
        "justrl-deepseek-1.5b",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    )
    assert v.target_steps == 4380
    assert [c.ended for c in v.chunks] == ["time-limit", "time-limit", "crashed-nccl", "running"]
    c1, c2, c3, c4 = v.chunks
    assert (c1.start_step, c1.last_step, c1.saved_step) == (0, 45, 45)
    assert (c3.start_step, c3.last_step, c3.saved_step) == (90, 120, 100)  # 20 steps after the save were lost
    assert c4.start_step == 100 and c4.end is None and c4.lost_s is None
    assert v.step == c4.last_step == 122
    assert v.chunk == 4 and v.status == "running" and v.job is not None and v.job.job_id == "4001"
    # Slurm was not asked: the job line says so and takes the time left from the chunk's started event
    assert not v.job.from_slurm and v.job.time_left_s == pytest.approx(CHUNK_S - 2 * 3600 - 30, abs=1)
    assert v.ckpt_step == 100 and v.step_s == pytest.approx(STEP_S)
    assert v.eta_s is not None and v.eta_s > (4380 - v.step) * STEP_S  # the chunk overhead stretches it
    # TensorBoard: the replayed steps of the crashed chunk are replaced by the rerun (no 1.9 left at step 120)
    entropy = v.curve("entropy")
    assert entropy is not None and entropy.tag == "actor/entropy" and entropy.latest == LATEST_ENTROPY
    assert entropy.steps == sorted(set(entropy.steps)) and 1.9 not in entropy.values
    assert (
        entropy.state == "ok"
        and entropy.band is not None
        and (entropy.band.low, entropy.band.high) == (1.0, 1.6)
    )
    assert v.curve("length").band.high == round(0.78 * 15360)  # type: ignore[union-attr]
    # telemetry: the live node with its hot GPU, the silent node
    n1, n2 = v.nodes
    assert (n1.host, n1.state, len(n1.gpus)) == ("gpu-n1", "live", 8)
    assert n1.gpus[5].state in ("warm", "hot") and n1.gpus[5].temp is not None and n1.gpus[5].temp >= 85
    assert n2.state == "silent" and n2.age_s == pytest.approx(600, abs=1)
    # alerts: one open (critical), one resolved; the daemon is alive
    assert [(a.rule, a.severity) for a in v.open_alerts] == [("G7-thermal", "critical")]
    assert [(a.rule, a.state) for a in v.resolved_alerts] == [("G12-host-ram", "resolved")]
    assert v.resolved_alerts[0].last_time - v.resolved_alerts[0].since == pytest.approx(600)
    assert v.monitor is not None and not v.monitor.blind
    assert v.notes == []


def test_chunk_time_lost_and_goodput(justrl_run: RunBuilder) -> None:
    v = load_view(justrl_run.dir, now=justrl_run.now, use_slurm=False)
    c1, _, c3, _ = v.chunks
    # time limit: everything but the 44 kept steps (startup, stop, teardown)
    assert c1.kept_steps == 45 and c1.lost_s == pytest.approx(STARTUP_S + 60, abs=1)
    # crash: 10 kept steps (90 → 100), 20 done in vain
    assert c3.kept_steps == 10 and c3.lost_s == pytest.approx(STARTUP_S + 20 * STEP_S + 60, abs=1)
    assert v.goodput is not None and 0.8 < v.goodput < 0.95


def test_incremental_refresh_reads_only_what_is_new(justrl_run: RunBuilder) -> None:
    cache = ViewCache()
    b = justrl_run
    first = load_view(b.dir, cache, now=b.now, use_slurm=False)
    rc = cache.for_run(b.dir)
    assert rc.ledger_offset == (b.dir / "ledger.jsonl").stat().st_size
    step = first.step
    assert step is not None
    # one more step everywhere; gpu-n2 comes back; the thermal alert resolves; the heartbeat goes stale
    later = b.now + 600
    b.event("step", later - 5, "4001", 4, step=step + 1)
    b.write_ledger()
    b.tb_points = [[(step + 1, later - 5, {"actor/entropy": 1.5})]]
    b.write_tensorboard()
    b.telemetry("gpu-n2", later - 2, readings=3)
    b.alert(
        "resolved",
        later - 60,
        rule="G7-thermal",
        severity="critical",
        key="gpu-n1:5",
        metric="DCGM_FI_DEV_GPU_TEMP",
        value=70,
        threshold=85,
        message="gpu-n1 GPU 5 cooled",
        node="gpu-n1",
        gpu=5,
    )
    second = load_view(b.dir, cache, now=later, use_slurm=False)
    assert second.step == step + 1 and second.curve("entropy").latest == 1.5  # type: ignore[union-attr]
    assert len(cache.for_run(b.dir).events) == len(Path(b.dir / "ledger.jsonl").read_text().splitlines())
    assert {n.host: n.state for n in second.nodes} == {"gpu-n1": "silent", "gpu-n2": "live"}
    assert second.open_alerts == [] and second.resolved_alerts[0].rule == "G7-thermal"
    assert (
        second.monitor is not None and second.monitor.blind and "monitor blind since" in second.monitor.text
    )


def test_entropy_under_its_old_name_beside_the_papers_band_which_judges_nothing(tmp_path: Path) -> None:
    """0.55 is below the paper's 1.0–1.6, but that band was read off a miscomputed figure (thunlp/JustRL#5) and a
    healthy reproduction sits elsewhere (#3): it is shown, labelled, and colours nothing; clip's line still does."""
    b = RunBuilder(tmp_path, "old-verl", time.time())
    b.tb_points = [
        [
            (s, b.now - 100 + s, {"actor/entropy_loss": 0.55, "response_length/clip_ratio": 0.2})
            for s in (1, 2, 3)
        ]
    ]
    b.write_tensorboard()
    v = load_view(b.dir, now=b.now, use_slurm=False)
    entropy, clip = v.curve("entropy"), v.curve("clip")
    assert entropy is not None and entropy.tag == "actor/entropy_loss" and entropy.state == "ok"
    assert clip is not None and clip.state == "high"
    out = text_of(panels.render_curves(v))
    assert "0.550" in out and "paper 1–1.6" in out and "low!" not in out and "high! ≤ 0.05" in out
    tall = text_of(panels.render_curves(v, height=3))
    assert "paper 1–1.6" in tall and tall.count("out of band") == 1  # clip's, not entropy's


def test_evaluations_along_the_run_beside_the_papers_endpoint(tmp_path: Path) -> None:
    """`--eval-every`: each evaluate job's summary.json (written by the evaluation's own writer) is a point of
    an "eval average" curve, with the paper's JustRL average as labelled context when the nine benchmarks were
    evaluated; a run without evaluations has no such row."""
    from justrl_hpc.jobs.evaluate.results import (
        PUBLISHED_COLUMNS,
        BenchmarkScore,
        Table,
        published_endpoint,
        write_outputs,
    )

    b = RunBuilder(tmp_path, "evaluated", time.time())
    b.tb_points = [[(s, b.now - 100 + s, {"critic/score/mean": 0.1 * s}) for s in (1, 2, 3)]]
    b.write_tensorboard()
    assert load_view(b.dir, now=b.now, use_slurm=False).curve("eval") is None
    for step, score in ((250, 40.0), (500, 44.5)):
        scores = [BenchmarkScore(k, k, 4, 10, 40, score, 900.0, 0.0) for k in PUBLISHED_COLUMNS]
        table = Table(f"step_{step}", step, "m", scores, score, 900.0, False)
        folder = b.dir / "eval" / f"step_{step}"
        folder.mkdir(parents=True)
        write_outputs(table, folder, "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")
    (b.dir / "eval" / "step_750").mkdir()
    (b.dir / "eval" / "step_750" / "summary.json").write_text('{"step": 75')  # being written
    v = load_view(b.dir, now=b.now, use_slurm=False)
    curve = v.curve("eval")
    assert curve is not None and (curve.steps, curve.values) == ([250, 500], [40.0, 44.5]) and curve.state == "ok"
    out = text_of(panels.render_curves(v))
    assert "eval average" in out and "44.5" in out and "paper 54.87" in out
    subset = Table("step_1", 1, "m", scores[:2], 40.0, 900.0, False)  # two benchmarks' average is another figure
    assert published_endpoint(subset, "DeepSeek-R1-Distill-Qwen-1.5B") is None
    assert published_endpoint(table, "OpenMath-Nemotron-1.5B") == {"row": "JustRL-Nemotron-1.5B (step 3440)",
                                                                  "average": 64.32}


def test_partial_and_broken_folders_are_no_data_not_a_crash(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    v = load_view(empty, use_slurm=False)
    assert v.status == "no data" and v.step is None and v.nodes == [] and v.chunks == []
    # Neither run.yaml nor a ledger: not a suite run (test_bare_folder.py); what it lacks is said as absent.
    assert v.bare and v.notes == ["metrics: none yet (no tensorboard/, event files or verl console log)"]
    frame = text_of(render_screen([v], 0, 80, 24), width=80, height=24)
    assert "no data" in frame.lower() and frame.count("absent: not a suite run") >= 2
    assert "monitor blind: no daemon heartbeat" in frame
    # A suite run folder with only its run.yaml yet: each missing source is a note, never an exception.
    (empty / "run.yaml").write_text("run: {name: empty}\n")
    v = load_view(empty, ViewCache(), use_slurm=False)
    assert not v.bare and {"ledger.jsonl: missing", "telemetry/: missing"} <= set(v.notes), v.notes
    frame = text_of(render_screen([v], 0, 80, 24), width=80, height=24)
    assert "no telemetry" in frame and "no chunk has started yet" in frame
    # torn lines in every file a writer appends to, a heartbeat without a time, an unreadable run.yaml
    broken = tmp_path / "broken"
    (broken / "telemetry").mkdir(parents=True)
    (broken / "run.yaml").write_text("recipe: [unclosed\n")
    (broken / "ledger.jsonl").write_text(
        json.dumps({"event": "started", "time": _iso(time.time() - 60), "job_id": "7", "chunk": 1})
        + '\n{"event": "st'
    )
    (broken / "alerts.jsonl").write_text('not json\n{"rule": "x", "sever')
    (broken / "telemetry" / "n1.jsonl").write_text('{"time": "soon"}\n{"time": 1')
    (broken / "monitor.heartbeat").write_text("{}")
    v = load_view(broken, use_slurm=False)
    assert v.chunks[0].ended == "running" and v.open_alerts == [] and v.nodes == []
    assert "run.yaml: unreadable (ParserError)" in v.notes
    assert v.monitor is not None and v.monitor.blind
    for width, height in ((80, 24), (200, 60)):
        text_of(render_screen([v], 0, width, height), width=width, height=height)


def test_nvml_errors_are_visible(tmp_path: Path) -> None:
    """The recording's end: GPU 3 fell off the bus (GPU_IS_LOST); a second node whose driver is gone."""
    b = RunBuilder(tmp_path, "lost", time.time())
    b.telemetry("gpu-n1", b.now - 3, readings=96)
    line = {
        "time": b.now - 3,
        "host": "gpu-n2",
        "interval": 15.0,
        "backend": "nvml",
        "gpus": [],
        "nvml_error": {
            "code": 9,
            "name": "DRIVER_NOT_LOADED",
            "message": "Driver Not Loaded",
            "where": "nvmlInit",
        },
    }
    (b.dir / "telemetry" / "gpu-n2.jsonl").write_text(json.dumps(line) + "\n")
    v = load_view(b.dir, now=b.now, use_slurm=False)
    n1, n2 = v.nodes
    assert n1.gpus[3].state == "error" and n1.nvml_error == "GPU_IS_LOST"
    assert n2.state == "error" and n2.nvml_error == "DRIVER_NOT_LOADED"
    for wide in (False, True):
        out = text_of(panels.render_gpus(v, wide=wide), width=140)
        assert "LOST" in out and "NVML GPU_IS_LOST" in out and "NVML DRIVER_NOT_LOADED" in out


def test_a_long_telemetry_file_is_read_from_near_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dashboard opened on day 10 reads the last ~256 kB of each node's file, starting at a line boundary."""
    b = RunBuilder(tmp_path, "long", time.time())
    b.telemetry("gpu-n1", b.now - 2, readings=60)  # ~0.8 MB of samples
    path = b.dir / "telemetry" / "gpu-n1.jsonl"
    size = path.stat().st_size
    assert size > 2 * TELEMETRY_START_BYTES
    cursor = _cursors_near_end(path.parent, TELEMETRY_START_BYTES)["gpu-n1"]
    assert size - TELEMETRY_START_BYTES < cursor.offset < size
    assert path.read_bytes()[cursor.offset - 1 : cursor.offset] == b"\n"
    cache = ViewCache()
    v = load_view(b.dir, cache, now=b.now, use_slurm=False)
    assert v.nodes[0].last_time == pytest.approx(b.now - 2) and v.nodes[0].state == "live"
    assert cache.for_run(b.dir).telemetry.cursors["gpu-n1"].offset == size  # type: ignore[union-attr]
    assert "corrupt" not in caplog.text


def test_run_state_from_ledger_and_slurm() -> None:
    from justrl_hpc.core.slurm import JobState
    from justrl_hpc.monitor.dashboard.snapshot import JobView, _status

    def ev(*names: str, **extra: Any) -> list[dict[str, Any]]:
        return [{"event": n, "job_id": "9", "chunk": 1, **extra} for n in names]

    assert _status([], None, []) == ("no data", "")
    assert _status(ev("submitted"), JobView("9", "PENDING", "Priority"), []) == ("pending", "Priority")
    assert _status(ev("started", "requeued", reason="time-limit"), None, []) == ("requeued", "time-limit")
    assert _status(ev("started", "failed", reason="3 chunks in a row"), None, [])[0] == "failed"
    st = JobState("9", "COMPLETED", "None", None, "n1")
    job = JobView(st.job_id, st.state, st.reason, st.nodes)
    state, why = _status(ev("started", "step"), job, [])
    assert state == "stopped" and "--resume" in why  # Slurm is done with the job, the run is not


def test_render_functions(justrl_run: RunBuilder) -> None:
    v = load_view(justrl_run.dir, now=justrl_run.now, use_slurm=False)
    header = text_of(panels.render_header(v), width=100)
    assert (
        f"step {v.step:,}/4,380" in header
        and "RUNNING" in header
        and "DeepSeek-R1-Distill-Qwen-1.5B" in header
    )
    assert "chunk 4" in header and "job 4001 (no Slurm) on gpu-n1,gpu-n2" in header
    assert "1h59m left" in header and "ckpt 100, 3h41m ago" in header
    curves = text_of(panels.render_curves(v), width=100)
    assert "entropy" in curves and "1.375" in curves and "paper 1–1.6" in curves
    assert any(ch in curves for ch in "▁▂▃▄▅▆▇█")
    gpus = text_of(panels.render_gpus(v), width=100)
    assert "gpu-n1" in gpus and "SILENT 10m00s" in gpus and gpus.count("%") >= 16
    alerts = text_of(panels.render_alerts(v, resolved=3), width=120)
    assert (
        "CRIT" in alerts
        and "G7-thermal" in alerts
        and "since" in alerts
        and "resolved G12-host-ram" in alerts
    )
    chunks = text_of(panels.render_chunks(v), width=100)
    assert "crashed-nccl" in chunks and "90→120 +30" in chunks and "running" in chunks


def test_sparkline_fits_its_width_and_keeps_a_nan_visible() -> None:
    values = [float(i) for i in range(1000)]
    values[500] = math.nan
    points = panels.resample(values, 40)
    assert len(points) == 40 and sum(1 for p in points if math.isnan(p)) == 1
    from justrl_hpc.monitor.dashboard.sources import Curve

    line = text_of(panels.Sparkline(Curve("x", "x", "x", ".1f", list(range(1000)), values)), width=40).rstrip(
        "\n"
    )
    assert len(line) == 40 and line.count("!") == 1 and line[0] == "▁" and line[-1] == "█"
    tall = text_of(panels.Sparkline(Curve("x", "x", "x", ".1f", [1, 2], [0.0, 1.0]), height=3), width=10)
    assert tall.splitlines() == ["         █", "         █", "        ▁█"]


def test_keys_from_escape_sequences() -> None:
    assert parse_keys(b"\t\x1b[C\x1b[D\x1b[Zq\x1bOA") == ["next", "next", "prev", "prev", "quit", "prev"]


# -- the command line --------------------------------------------------------------------------------------------


def _tui(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=PYTHONPATH, TZ="UTC", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "justrl_hpc.monitor.dashboard.app", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, field in (
        (["--interval", "0", str(tmp_path)], "--interval"),
        (["--interval", "often"], "justrl-monitor"),
        ([str(tmp_path / "nope")], "RUN"),
    ):
        assert app.run_tui(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {field}:"), err
    # no argument and no ./runs: says where it looked
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert app.run_tui([]) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert err.startswith("error: RUN: no run folders under") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_once_prints_one_frame_of_every_run_under_runs(tmp_path: Path) -> None:
    build_justrl_run(tmp_path / "runs", "alpha")
    build_justrl_run(tmp_path / "runs", "beta")
    out = _tui(["--once"], tmp_path, {"COLUMNS": "100", "LINES": "30"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 60 and all(len(line) <= 100 for line in lines)
    assert "alpha" in lines[0] and "beta" in lines[30]  # the tab line, then each frame
    assert out.stdout.count("1.375") == 2 and "G7-thermal" in out.stdout


# -- in a real terminal --------------------------------------------------------------------------------------------


class Tmux:
    """A private tmux server (its own socket) with one pane running bash."""

    def __init__(self, sock: Path, width: int, height: int, cwd: Path) -> None:
        self.sock = sock
        env = dict(os.environ, PYTHONPATH=PYTHONPATH, TZ="UTC", PS1="READY$ ", TERM="xterm-256color")
        env.pop("TMUX", None)
        self.env = env
        self._tmux(
            "new-session",
            "-d",
            "-x",
            str(width),
            "-y",
            str(height),
            "-c",
            str(cwd),
            "bash --norc --noprofile",
        )
        self.type("PS1='READY''$ '")  # split so that the typed command itself never matches

    def _tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-S", str(self.sock), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout

    def send(self, *keys: str) -> None:
        """Keys by tmux's names (Tab, Left, Enter) or plain characters."""
        self._tmux("send-keys", "-t", "0", *keys)

    def type(self, line: str) -> None:
        """A command line, typed literally, then Enter."""
        self._tmux("send-keys", "-t", "0", "-l", line)
        self._tmux("send-keys", "-t", "0", "Enter")

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "0", "-x", str(width), "-y", str(height))

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "0")

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"screen never showed {what}:\n{screen}")
            time.sleep(0.2)

    def frame(self, predicate: Callable[[str], bool], what: str, timeout: float = 60.0) -> str:
        """A whole dashboard frame: rich writes a frame top to bottom, so a capture taken mid-write has the
        top rows only; the footer (`q quit`) is the last row written."""
        return self.wait(lambda s: predicate(s) and _footer_drawn(s), what, timeout)

    def kill(self) -> None:
        subprocess.run(
            ["tmux", "-S", str(self.sock), "kill-server"], capture_output=True, timeout=30, check=False
        )


@pytest.fixture
def tmux_factory(tmp_path: Path) -> Iterator[Callable[[int, int, Path], Tmux]]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (apt-get install tmux)")
    made: list[Tmux] = []

    def make(width: int, height: int, cwd: Path) -> Tmux:
        t = Tmux(tmp_path / f"tmux-{len(made)}.sock", width, height, cwd)
        made.append(t)
        t.wait(_at_prompt, "the shell prompt")
        return t

    yield make
    for t in made:
        t.kill()


def _dashboard_cmd(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", "justrl_hpc.monitor.dashboard.app", *args))


def _at_prompt(screen: str) -> bool:
    """The shell waits for input: its prompt ends the last line written (a new one, not the one the
    dashboard's alternate screen covered). After a resize during the alternate screen tmux may put the
    cursor back at the end of the command line, so the prompt can follow the command on its line."""
    lines = [line for line in screen.splitlines() if line.strip()]
    return bool(lines) and lines[-1].rstrip().endswith("READY$")


def _footer_drawn(screen: str) -> bool:
    lines = [line for line in screen.splitlines() if line.strip()]
    return bool(lines) and "q quit" in lines[-1]


def _quit_and_exit_0(t: Tmux, gone: str | None) -> None:
    """q ends the dashboard with status 0 and the shell reads commands again. Without a resize the
    alternate screen's frame is gone too (`gone` no longer on screen); after a resize tmux may leave the
    frame's rows in the main screen, so there the exit status is the proof that it quit."""
    t.send("q")
    t.wait(_at_prompt, "the shell prompt after q")
    t.type("echo EXIT-STATUS-$?")
    screen = t.wait(lambda s: "EXIT-STATUS-0" in s, "the dashboard's exit status 0")
    assert "Traceback" not in screen
    if gone is not None:
        assert gone not in screen, screen


def _terminal_restored(t: Tmux, out: Path) -> None:
    """The shell's terminal is back in canonical mode with echo on (cbreak was undone)."""
    t.type(f"stty -a > {out} && echo STTY-DONE")
    t.wait(lambda s: "STTY-DONE" in s.replace("echo STTY-DONE", "") and _at_prompt(s), "stty's answer")
    flags = out.read_text().replace(";", " ").split()
    assert "icanon" in flags and "echo" in flags and "-icanon" not in flags, flags


def test_dashboard_at_80x24_shows_every_panel_and_q_restores_the_terminal(
    tmp_path: Path, justrl_run: RunBuilder, tmux_factory: Callable[[int, int, Path], Tmux]
) -> None:
    t = tmux_factory(80, 24, justrl_run.dir.parent.parent)
    t.type(_dashboard_cmd("--interval", "1", "justrl-ds"))
    screen = t.frame(lambda s: "1.375" in s, "the entropy value")
    lines = screen.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    v = load_view(justrl_run.dir, use_slurm=False)
    assert f"step {v.step:,}/4,380" in screen and "RUNNING" in screen
    assert "entropy" in screen and "G7-thermal" in screen and "CRIT" in screen
    assert "gpu-n1" in screen and "gpu-n2" in screen and "SILENT" in screen and screen.count("%") >= 16
    assert "crashed-nccl" in screen and "q quit" in screen
    assert "READY$" not in screen  # the alternate screen covers the shell
    # a new step arrives while it is open: the next refresh shows it
    justrl_run.event("step", time.time(), "4001", 4, step=v.step + 1)
    justrl_run.write_ledger()
    t.frame(lambda s: f"step {v.step + 1:,}/4,380" in s, "the new step")
    # the terminal grows: the next frame uses the room (panels, two-line GPU cells)
    t.resize(200, 60)
    screen = t.frame(lambda s: "╭─ training curves" in s, "the large layout after the resize")
    assert max(len(line) for line in screen.splitlines()) > 150 and "°" in screen
    _quit_and_exit_0(t, None)
    _terminal_restored(t, tmp_path / "stty.txt")


def test_dashboard_killed_mid_run_and_restarted_shows_the_run_as_it_is_now(
    tmp_path: Path, justrl_run: RunBuilder, tmux_factory: Callable[[int, int, Path], Tmux]
) -> None:
    """kill -9 of the dashboard (it keeps no state): the run goes on meanwhile, a new dashboard started in
    the same terminal shows where the run is now, with the same alerts, and quits with status 0."""
    t = tmux_factory(80, 24, justrl_run.dir.parent.parent)
    cmd = _dashboard_cmd("--interval", "1", "justrl-ds")
    t.type(cmd)
    t.frame(lambda s: "1.375" in s, "the entropy value")
    pids = subprocess.run(["pgrep", "-f", "justrl_hpc.monitor.dashboard.app --interval 1 justrl-ds"], capture_output=True,
                          text=True).stdout.split()
    assert len(pids) == 1, pids
    os.kill(int(pids[0]), signal.SIGKILL)
    t.wait(lambda s: "Killed" in s or "READY$" in s, "the shell after the kill")
    v = load_view(justrl_run.dir, use_slurm=False)
    justrl_run.event("step", time.time(), "4001", 4, step=v.step + 1)  # the run moved on meanwhile
    justrl_run.write_ledger()
    t.type(cmd)
    screen = t.frame(lambda s: f"step {v.step + 1:,}/4,380" in s, "the new step after the restart")
    assert "G7-thermal" in screen and "CRIT" in screen and "Traceback" not in screen
    # The killed one could not restore the terminal; the new one restores what it found and exits 0.
    _quit_and_exit_0(t, None)


def test_dashboard_at_200x60_uses_the_space_and_tab_switches_runs(
    tmp_path: Path, tmux_factory: Callable[[int, int, Path], Tmux]
) -> None:
    runs = tmp_path / "runs"
    build_justrl_run(runs, "alpha")
    other = build_justrl_run(runs, "beta")
    (other.dir / "monitor.heartbeat").unlink()  # beta's daemon is not running
    t = tmux_factory(200, 60, tmp_path)
    t.type(_dashboard_cmd())  # no argument: every run under ./runs
    screen = t.frame(lambda s: "1.375" in s, "the entropy value")
    lines = screen.splitlines()
    assert len(lines) <= 60 and max(len(line) for line in lines) > 150
    assert (
        "╭─ training curves" in screen and "╭─ GPUs" in screen and "alerts" in screen and "chunks" in screen
    )
    assert "°" in screen and "W" in screen  # two-line GPU cells: temperature and power
    assert "monitor blind" not in screen
    header = lines[1]
    assert "alpha" in header
    t.send("Tab")
    screen = t.frame(lambda s: "beta" in s.splitlines()[1], "beta's header after tab")
    assert "monitor blind: no daemon heartbeat" in screen
    t.send("Left")
    t.frame(lambda s: "alpha" in s.splitlines()[1], "alpha again after ←")
    _quit_and_exit_0(t, "1.375")
    _terminal_restored(t, tmp_path / "stty.txt")


@pytest.mark.slurm
def test_job_state_comes_from_slurm(tmp_path: Path, devcluster: Any) -> None:
    """A real job on the dev cluster: the header shows its Slurm state, nodes or pending reason, time left."""
    b = RunBuilder(tmp_path / "runs", "on-slurm", time.time())
    out = subprocess.run(
        ["sbatch", "--parsable", "-p", "dev", "-N", "1", "-t", "5", "-J", "tui-test", "--wrap", "sleep 300"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job_id = out.stdout.strip().split(";")[0]
    try:
        b.event("submitted", b.now, job_id, None, nodes=1)
        b.write_ledger()
        from justrl_hpc.core import slurm

        st = slurm.wait_for_state(job_id, {"RUNNING", "PENDING"}, timeout_s=30)
        assert st is not None
        v = load_view(b.dir, use_slurm=True)
        assert v.job is not None and v.job.from_slurm and v.job.state in ("RUNNING", "PENDING")
        header = text_of(panels.render_header(v), width=120)
        if v.job.state == "RUNNING":
            assert f"job {job_id} RUNNING on {v.job.nodes}" in header and " left" in header
            assert v.status == "running"
        else:
            assert f"job {job_id} PENDING ({v.job.reason})" in header and v.status == "pending"
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30, check=False)


REHEARSAL_RUN = REPO / "tests" / "data" / "rehearsal-run"


def test_dashboard_on_a_real_rehearsal_run_folder(
    tmp_path: Path, tmux_factory: Callable[[int, int, Path], Tmux]
) -> None:
    """What `justrl-hpc rehearse` left on the dev cluster (verl's run: ledger, fifteen chunks' TensorBoard files, both
    nodes' telemetry, run.yaml; recorded in tests/data/rehearsal-run), with the alerts the daemon's own scan
    raises on it, in a real terminal at 80x24 and then 200x60."""
    def scan(folder: Path, *extra: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, "-m", "justrl_hpc.monitor.cli", "scan", str(folder), *extra],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=PYTHONPATH),
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    # A healthy rehearsal raises nothing with the default rules (its toy task's entropy falls as it learns).
    healthy = tmp_path / "healthy"
    shutil.copytree(REHEARSAL_RUN, healthy)
    assert scan(healthy) == []
    # Tuned tighter, its step times (4.8 s at step 40 over a 1.6 s median) are a slowdown to show.
    rules = tmp_path / "rules.yaml"
    rules.write_text("training:\n  step_time_ratio: 1.05\n  step_time_steps: 2\n")
    run = tmp_path / "runs" / "rehearsal-F3"
    shutil.copytree(REHEARSAL_RUN, run)
    raised = scan(run, "--config", str(rules))
    assert raised and all(a["state"] == "firing" for a in raised), raised
    v = load_view(run, use_slurm=False)
    entropy = v.curve("entropy")
    assert v.step == 120 and entropy is not None and entropy.steps == list(range(1, 121))  # 15 files, each step once
    latest = f"{entropy.values[-1]:.3f}"

    t = tmux_factory(80, 24, tmp_path)
    t.type(_dashboard_cmd("--interval", "1", "rehearsal-F3"))
    screen = t.frame(lambda s: latest in s, "the latest entropy value")
    lines = screen.splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    assert "step 120/120" in screen and "FINISHED" in screen
    assert raised[0]["rule"] in screen and "WARN" in screen
    assert "n1" in screen and "n2" in screen and "no GPUs" in screen  # the dev cluster's nodes, replayed
    assert "time-limit" in screen and "finished" in screen
    t.resize(200, 60)
    screen = t.frame(lambda s: "╭─ training curves" in s, "the large layout")
    assert all(a["rule"] in screen for a in raised), screen
    _quit_and_exit_0(t, None)


def test_with_the_controller_down_the_header_says_slurm_unreachable_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slurm.conf whose controller port has nobody listening: a job query would wait out Slurm's retries
    (~18 s) and read as "no such job"; the dashboard pings first and says what it saw."""
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=gone\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=6999\n"
                    "NodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    b = RunBuilder(tmp_path / "runs", "slurm-down", time.time())
    b.event("submitted", b.now - 60, "77", None, nodes=1)
    b.event("started", b.now - 50, "77", 1, restart=0, nodes=1, hosts="n1")
    b.write_ledger()
    t0 = time.monotonic()
    v = load_view(b.dir, use_slurm=True)
    assert time.monotonic() - t0 < 5
    assert v.job is not None and v.job.state == "unreachable" and not v.job.from_slurm
    assert "job 77 (Slurm unreachable)" in text_of(panels.render_header(v), width=120)
