"""One run folder's monitor: `RunMonitor.start()` takes the lead, `cycle()` runs one poll cycle over it.

One cycle, for a run folder this process leads (store.LeaderLock):
  read    everything new since the committed cursors: ledger.jsonl, verl's metrics (where sources.locate finds
          them: TensorBoard events through sources.tensorboard.TBTail, verl's folder only, not the monitor's own
          tensorboard/monitor/, or a console log through sources.console_log), telemetry/<host>.jsonl
          (sources.telemetry.TelemetryTail), and the Slurm state of the newest job in the ledger (read-only
          scontrol; a machine without Slurm is fine)
  judge   the training rules step by step over the new steps (a step's findings are judged at its wall
          time), the progress rules, the GPU rules over the recent samples, the sinks' own failures
  book    store.AlertBook turns findings into transitions; store.MonitorStore.commit writes them with the
          cursors and rule state that produced them in one transaction (see store.py for why that makes
          restarts neither repeat nor lose an alert)
  tell    the sinks (sinks.Dispatcher over sinks.build_sinks), the monitor's own scalars
          (scalars.MonitorScalarWriter, alert counts included), RUN/monitor.heartbeat, the dead-man URL

The loop over several folders (standby, takeover) and the one-shot scan are in service.py.
It only reads the job: no scancel, no scontrol update/requeue/hold, no file in control/ (tests assert it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from justrl_hpc.core.paths import RunPaths
from justrl_hpc.monitor.daemon.store import (
    AlertBook,
    BookAlert,
    BookSettings,
    LeaderLock,
    MonitorStore,
    ids_in_jsonl,
)
from justrl_hpc.monitor.findings import Finding
from justrl_hpc.monitor.settings import MonitorSettings

log = logging.getLogger("justrl_hpc.monitor.daemon.cycle")

STEP_TIMES_KEPT = 200  # recent timing_s/step values, for the stall rule's p95
WARM_SLICE_BYTES = 1 << 20  # telemetry read per host per slice (see _read_telemetry)
MAX_SLICES_PER_CYCLE = 4096  # the rest of a backlog larger than 4 GiB per host waits for the next cycle


def _recipe(run_dir: Path) -> dict[str, Any]:
    """run.yaml's recipe section, or {} for a folder without one (a bare tensorboard/ folder)."""
    path = RunPaths(run_dir).run_yaml
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    recipe = data.get("recipe") if isinstance(data, dict) else None
    return recipe if isinstance(recipe, dict) else {}


def toy_task_settings(tset: Any) -> Any:
    """The training rules for a CPU recipe (the rehearsal's toy task). Its answer is one token whose entropy is
    meant to fall as the task is learned: a collapse there is success, so every collapse check is off (an
    absolute band a rules file sets for JustRL's task means nothing for it either). The explosion checks stay."""
    return dataclasses.replace(
        tset,
        entropy_band=None,
        entropy_critical_band=None,
        entropy_drop_fraction=None,
        entropy_reference_drop=None,
        entropy_reference_critical=None,
        entropy_slope_fall=None,
    )


def recipe_int(run_dir: Path, name: str) -> int | None:
    """A positive integer hyperparameter of run.yaml's recipe (data.max_response_length, trainer.save_freq),
    if the folder has a run.yaml."""
    recipe = _recipe(run_dir)
    hp = recipe.get("hyperparameters") if isinstance(recipe, dict) else None
    value = hp.get(name) if isinstance(hp, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# -- delivery ---------------------------------------------------------------------------------------------


class _AckedSink:
    """A sink whose every success deletes its outbox row at once; alert ids in `already` are skipped
    (the exactly-once check for alerts.jsonl after a restart)."""

    def __init__(self, sink: Any, store: MonitorStore) -> None:
        self.sink = sink
        self.name = sink.name
        self.store = store
        self.already: set[str] = set()

    def send(self, alert: Any) -> None:
        aid = getattr(alert, "alert_id", "")
        if aid and aid in self.already:
            self.already.discard(aid)
        else:
            self.sink.send(alert)
        if aid:
            self.store.ack(aid, self.name)

    def secrets(self) -> tuple[str, ...]:
        return tuple(self.sink.secrets())


# -- one run folder -----------------------------------------------------------------------------------------


@dataclass
class CycleReport:
    alerts: list[BookAlert]
    steps: int = 0
    last_step: int | None = None
    samples: int = 0
    ledger_events: int = 0


class RunMonitor:
    """Watches one run folder. start() takes the lead (or says who holds it); cycle() runs one cycle."""

    def __init__(
        self,
        run_dir: Path,
        config: MonitorSettings,
        *,
        env: Mapping[str, str] | None = None,
        max_response_length: int | None = None,
        write_scalars: bool = True,
        dispatcher_options: Mapping[str, Any] | None = None,
        console_log: Path | None = None,
    ) -> None:
        from justrl_hpc.monitor.daemon import sinks as alerts

        self.run_dir = Path(run_dir)
        self.paths = RunPaths(self.run_dir)
        self.name = self.run_dir.name
        self.config = config
        self.env = os.environ if env is None else env
        self.max_response_length = max_response_length or recipe_int(self.run_dir, "data.max_response_length")
        self.save_freq = recipe_int(self.run_dir, "trainer.save_freq")
        self.write_scalars = write_scalars
        self.console_log = Path(console_log) if console_log is not None else None
        self.source: Any = None  # sources.locate.MetricsSource, once the folder has metrics
        self._sinks = alerts.build_sinks(self.run_dir, self.env)  # bad env → UserError before anything
        self._dispatcher_options = dict(dispatcher_options or {})
        self.lock = LeaderLock(self.run_dir)
        self.host = socket.gethostname()
        self.store: MonitorStore | None = None
        self.dispatcher: Any = None
        self.deadman: Any = None
        self.scalars: Any = None
        self.cycles = 0
        self.refused: str | None = None

    @property
    def leading(self) -> bool:
        return self.store is not None

    # -- leadership and state -----------------------------------------------------------------------------
    def start(self) -> bool:
        """Take the lead of this folder: the file lock, then the lease row. False (and self.refused says
        why) when another daemon leads."""
        from justrl_hpc.monitor.daemon import sinks as alerts

        if self.leading:
            return True
        if not self.lock.acquire():
            self.refused = f"monitor.lock held by {self.lock.holder()}"
            return False
        store = MonitorStore(self.paths.monitor_db)
        why = store.take_lease(self.lock.owner, self.host, os.getpid(), self.config.daemon.lease_s)
        if why:
            store.close()
            self.lock.release()
            self.refused = why
            log.error("run %s: not leading: %s", self.name, why)
            return False
        self.store = store
        self.refused = None
        self._acked = [_AckedSink(s, store) for s in self._sinks]
        self.dispatcher = alerts.Dispatcher(self._acked, **self._dispatcher_options)
        self.deadman = alerts.build_deadman(self.env)
        self._load()
        self._redeliver()
        log.info(
            "run %s: leading as %s (state in %s)", self.name, self.lock.owner, self.paths.monitor_db.name
        )
        return True

    def _load(self) -> None:
        """Every reader and rule rebuilt from the last committed state."""
        from justrl_hpc.core.ledger import Ledger
        from justrl_hpc.monitor.rules import training as train_rules
        from justrl_hpc.monitor.sources.telemetry import SampleWindow, TelemetryTail

        assert self.store is not None
        d = self.config.daemon
        self.book = AlertBook(
            self.name, BookSettings(refire_s=d.refire_s, cooldown_s=d.cooldown_s), self.store.open_alerts()
        )
        # The progress rules judge the whole ledger each cycle (one line per step and chunk event: small),
        # so it is read whole here and tailed from then on.
        self.events, self.ledger_offset = Ledger(self.run_dir).tail(0)
        self.ledger_state: dict[str, Any] = {"job_id": None}
        for e in self.events:
            if e.get("job_id"):
                self.ledger_state["job_id"] = str(e["job_id"])
        self.tb: Any = None
        self._tb_state = self.store.get("tensorboard")
        self.pending_step: dict[str, Any] | None = self.store.get("pending_step")
        self.last_step: int | None = self.store.get("last_step")
        self.last_step_wall: float | None = self.store.get("last_step_wall")
        self.step_times: list[float] = list(self.store.get("step_times") or [])
        wstate = self.store.get("training")
        tset = self.config.training
        recipe = _recipe(self.run_dir)
        if recipe.get("device") == "cpu":
            tset = toy_task_settings(tset)
        if wstate is not None:
            self.watch = train_rules.TrainingWatch.from_state(wstate, tset, self.max_response_length)
        else:
            self.watch = train_rules.TrainingWatch(tset, self.max_response_length)
        tel_state = self.store.get("telemetry")
        self.telemetry = TelemetryTail.from_state(self.paths.telemetry, tel_state)
        self.window = SampleWindow(self.config.gpu.history_s(), dense_s=self.config.gpu.dense_s())
        self._warm_window(tel_state or {})
        self.job: Any = None
        self._slurm_at = -math.inf

    def _warm_window(self, tel_state: Mapping[str, Any]) -> None:
        """Refill the GPU rules' window with the samples before the committed cursors (a restart must not
        forget an XID seen ten minutes ago), read from the live files only and never past the cursor."""
        from justrl_hpc.monitor.sources.telemetry import HEAD_BYTES, Cursor, TelemetryTail

        directory = self.paths.telemetry
        history = self.config.gpu.history_s()
        for host, c in tel_state.items():
            last, offset = c.get("last_time"), int(c.get("offset", 0))
            if last is None or offset <= 0:
                continue
            path = directory / f"{host}.jsonl"
            try:
                with open(path, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if st.st_ino != c.get("inode"):
                        continue
                    start = max(0, offset - self.config.daemon.warm_bytes_per_host)
                    if start:
                        fh.seek(start)
                        nl = fh.read(1 << 20).find(b"\n")
                        if nl < 0:
                            continue
                        start += nl + 1
                    fh.seek(0)
                    head = fh.read(HEAD_BYTES).decode("latin-1")
            except OSError:
                continue
            cursor = Cursor(inode=st.st_ino, offset=start, head=head, skew=float(c.get("skew") or 0.0))
            tail = TelemetryTail(directory, {host: cursor})
            # A slice at a time, thinned as it goes: parsing 32 MiB at once would leave the process that
            # much bigger for good (freed dicts rarely go back to the OS).
            while cursor.offset < offset:
                before = cursor.offset
                batch = tail.poll(max_bytes_per_host=min(WARM_SLICE_BYTES, offset - cursor.offset))
                keep = [s for s in batch.samples.get(host, []) if last - history <= s["time"] <= last]
                self.window.add({host: keep})
                self.window.trim(last)
                if cursor.offset == before:
                    break

    def _redeliver(self) -> None:
        """Transitions committed but not delivered when the last daemon stopped: deliver them now."""
        assert self.store is not None
        pending = self.store.pending()
        if not pending:
            return
        names = {s.name for s in self._acked}
        every = {p.alert.alert_id for p in pending}
        for sink in self._acked:
            # Skip the alerts this sink already has: those not in its outbox, and for alerts.jsonl those
            # whose id is in the file (appended just before the last daemon died).
            sink.already = every - {p.alert.alert_id for p in pending if sink.name in p.sinks}
            if sink.name == "jsonl":
                sink.already |= ids_in_jsonl(self.paths.alerts, every - sink.already)
        for name in sorted({s for p in pending for s in p.sinks} - names):
            n = self.store.drop_outbox(name)
            log.warning(
                "run %s: sink %s is no longer configured: %d undelivered alert(s) dropped", self.name, name, n
            )
        for p in pending:
            self.dispatcher.dispatch(p.alert)
        log.info("run %s: redelivering %d alert(s) committed before the last stop", self.name, len(pending))

    # -- the cycle -------------------------------------------------------------------------------------------
    def cycle(self, now: float | None = None, final: bool = False) -> CycleReport:
        """One cycle (see the module docstring). `final`: also judge the newest TensorBoard step even if
        its scalars could still be arriving (a one-shot scan)."""
        assert self.store is not None, "start() first"
        now = time.time() if now is None else now
        try:
            report = self._cycle(now, final)
        except Exception:
            # Nothing was committed: rebuild every reader from the committed state, so the data this
            # cycle read is read again next time instead of being skipped.
            self._load()
            raise
        self.cycles += 1
        return report

    def _cycle(self, now: float, final: bool) -> CycleReport:
        from justrl_hpc.monitor.rules import environment as environment_rules
        from justrl_hpc.monitor.rules import gpu as gpu_rules

        report = CycleReport(alerts=[])
        self._read_ledger(report)
        self._read_slurm(now)
        self._read_tensorboard(report, final)
        recent = self._read_telemetry(now, report)
        by_host = self.window.by_host(now)
        if by_host:
            self.book.update("gpu", gpu_rules.evaluate(by_host, now, self.config.gpu), now)
        self.book.update("progress", self._progress(now), now)
        self.book.update("environment", environment_rules.evaluate_environment(self.events)
                         + environment_rules.evaluate_exclusions(self.events, now), now)
        self.book.update("sinks", self.dispatcher.findings(), now)
        state = {
            "ledger_offset": self.ledger_offset,
            "tensorboard": self.tb.state() if self.tb is not None else self._tb_state,
            "pending_step": self.pending_step,
            "last_step": self.last_step,
            "last_step_wall": self.last_step_wall,
            "step_times": self.step_times,
            "training": self.watch.state(),
            "telemetry": self.telemetry.state(),
        }
        sinks = [s.name for s in self._acked]
        alerts = self.store.commit(state, self.book, sinks, lease=(self.lock.owner, self.host, os.getpid()))
        report.alerts = alerts
        for a in alerts:
            self.dispatcher.dispatch(a)
        self._tell(now, recent, report)
        return report

    def _read_telemetry(self, now: float, report: CycleReport) -> dict[str, list[dict[str, Any]]]:
        """New telemetry into the rules' window, a slice at a time so a long backlog (a daemon started on a
        run days in) is thinned as it is read instead of parsed whole. Returns the recent samples (the
        monitor's own scalars summarise those, not a backlog)."""
        horizon = now - max(2 * self.config.daemon.interval_s, 60.0)
        recent: dict[str, list[dict[str, Any]]] = {}
        for _ in range(MAX_SLICES_PER_CYCLE):
            before = {h: (c.inode, c.offset) for h, c in self.telemetry.cursors.items()}
            part = self.telemetry.poll(max_bytes_per_host=WARM_SLICE_BYTES, now=now)
            report.samples += part.count
            self.window.add(part.samples)
            self.window.trim(now)
            for host, samples in part.samples.items():
                recent.setdefault(host, []).extend(x for x in samples if x["time"] >= horizon)
            if {h: (c.inode, c.offset) for h, c in self.telemetry.cursors.items()} == before:
                break
        return recent

    def _read_ledger(self, report: CycleReport) -> None:
        from justrl_hpc.core.ledger import Ledger

        events, self.ledger_offset = Ledger(self.run_dir).tail(self.ledger_offset)
        report.ledger_events = len(events)
        for e in events:
            if e.get("job_id"):
                self.ledger_state["job_id"] = str(e["job_id"])
            log.info(
                "run %s: ledger %s job %s step %s", self.name, e.get("event"), e.get("job_id"), e.get("step")
            )
        self.events.extend(events)

    def _read_slurm(self, now: float) -> None:
        job_id = self.ledger_state.get("job_id")
        if not job_id or now - self._slurm_at < self.config.daemon.slurm_every_s:
            return
        self._slurm_at = now
        if shutil.which("scontrol") is None:
            self.job = None
            return
        from justrl_hpc.core import slurm

        self.job = slurm.job_state(str(job_id))  # None when Slurm does not answer: "unknown", not an error

    def _read_tensorboard(self, report: CycleReport, final: bool) -> None:
        """verl's metrics, from wherever sources.locate finds them: TensorBoard events or a console log (the
        state is kept under one key: each reader starts fresh from a state that is not its own)."""
        if self.tb is None:
            from justrl_hpc.monitor.sources.locate import locate

            self.source = locate(self.run_dir, self.console_log)
            if self.source is None:
                return
            if self.source.kind == "console":
                from justrl_hpc.monitor.sources.console_log import ConsoleLogTail

                self.tb = ConsoleLogTail.from_state(self.source.path, self._tb_state)
            else:
                from justrl_hpc.monitor.sources.tensorboard import TBTail

                self.tb = TBTail.from_state(self.source.path, self._tb_state, recursive=False)
            log.info("run %s: metrics from %s", self.name, self.source.label)
        result = self.tb.poll()
        points, replaced = _tb_points(result)
        if replaced:
            low = min(replaced.values())
            self.watch.rewind(low)
            if self.pending_step is not None and self.pending_step["step"] >= low:
                self.pending_step = None
            log.info("run %s: step %d replayed (a resume): training rules rewound to it", self.name, low)
        by_step: dict[int, dict[str, Any]] = {}
        for tag, items in points.items():
            for step, wall, value in items:
                slot = by_step.setdefault(int(step), {"step": int(step), "wall": float(wall), "values": {}})
                slot["values"][tag] = float(value)
                slot["wall"] = max(slot["wall"], float(wall))
        if self.pending_step is not None:
            # The newest step of the last poll, held back in case its scalars were cut by a flush.
            p = self.pending_step
            slot = by_step.setdefault(p["step"], {"step": p["step"], "wall": p["wall"], "values": {}})
            slot["values"] = {**p["values"], **slot["values"]}
            slot["wall"] = max(slot["wall"], p["wall"])
            self.pending_step = None
        steps = sorted(by_step)
        if steps and not final and any(s == steps[-1] for items in points.values() for s, _, _ in items):
            # This poll added scalars to its newest step: more of them may follow; judge it next cycle.
            self.pending_step = by_step[steps[-1]]
            steps = steps[:-1]
        for s in steps:
            slot = by_step[s]
            findings = self.watch.observe(s, slot["values"], slot["wall"])
            self.book.update("train", findings, slot["wall"])
            self.last_step, self.last_step_wall = s, slot["wall"]
            dt = slot["values"].get("timing_s/step")
            if dt is not None and math.isfinite(dt) and dt > 0:
                self.step_times = [*self.step_times, dt][-STEP_TIMES_KEPT:]
            report.steps += 1
            report.last_step = s

    def run_ended(self) -> str | None:
        """`finished` or `failed` when that is the ledger's last word (a resubmission after it reopens the run;
        the nodes' clean-up notes after it do not), else None."""
        from justrl_hpc.core.ledger import ended

        return ended(self.events)

    def _progress(self, now: float) -> list[Finding]:
        from justrl_hpc.monitor.rules import progress as progress_rules

        return progress_rules.evaluate_progress(
            self.events,
            self.last_step,
            self.last_step_wall,
            self.step_times,
            self._job_running(),
            now,
            self.config.progress,
            save_freq=self.save_freq,
        ) + progress_rules.evaluate_hangs(self.events, now)

    def _job_running(self) -> bool:
        """Slurm's word when it answers; else the ledger's: a chunk started and has not ended."""
        if self.job is not None:
            return bool(self.job.state == "RUNNING")
        for e in reversed(self.events):
            ev = e.get("event")
            if ev in ("started", "ray-ready", "trainer-started", "step", "saved", "stop-requested"):
                return True
            if ev in ("trainer-exited", "requeued", "chunk-failed", "finished", "failed", "submitted"):
                return False
        return False

    def _tell(self, now: float, samples: Mapping[str, list[dict[str, Any]]], report: CycleReport) -> None:
        counts = self.book.firing_counts()
        if self.write_scalars:
            if self.scalars is None:
                from justrl_hpc.monitor.daemon.scalars import MonitorScalarWriter

                self.scalars = MonitorScalarWriter(self.run_dir)
            self.scalars.write(samples, counts, float(now))
        if self.config.daemon.heartbeat:
            self.write_heartbeat(now, counts)
        if self.deadman is not None:
            self.deadman.ping()
        if report.steps or report.alerts or report.ledger_events:
            log.info(
                "run %s: cycle %d step %s: %d new step(s), %d sample(s), %d ledger event(s), %d alert(s); "
                "firing %s",
                self.name,
                self.cycles + 1,
                self.last_step,
                report.steps,
                report.samples,
                report.ledger_events,
                len(report.alerts),
                " ".join(f"{k}={v}" for k, v in counts.items()),
            )

    def write_heartbeat(self, now: float, counts: Mapping[str, int], ended: str | None = None) -> None:
        """RUN/monitor.heartbeat; `ended` (finished, failed) on the last one of a daemon that stopped because
        the run ended, so that a dashboard says the watch is over rather than blind."""
        from justrl_hpc.core.run_folder import atomic_write

        beat = {
            "time": now,
            "interval": self.config.daemon.interval_s,
            "run": self.name,
            "owner": self.lock.owner,
            "cycle": self.cycles + 1,
            "step": self.last_step,
            "alerts_firing": dict(counts),
            "job": getattr(self.job, "state", None),
        }
        if ended:
            beat["ended"] = ended
        atomic_write(self.paths.heartbeat, json.dumps(beat, sort_keys=True) + "\n")

    def close(self, flush_s: float = 10.0) -> None:
        if self.dispatcher is not None:
            self.dispatcher.flush(flush_s)
            self.dispatcher.close()
            self.dispatcher = None
        if self.deadman is not None:
            self.deadman.flush(2.0)
            self.deadman.close()
            self.deadman = None
        if self.scalars is not None:
            self.scalars.close()
            self.scalars = None
        if self.store is not None:
            self.store.close()
            self.store = None
        self.lock.release()


def _tb_points(result: Any) -> tuple[dict[str, list[tuple[int, float, float]]], dict[str, int]]:
    """(new points per tag as (step, wall_time, value), lowest replaced step per tag) of a TBTail poll of
    the logdir itself (run ".")."""
    points = {tag: list(pts) for (run, tag), pts in result.new.items() if run == "." and pts}
    replaced = {tag: int(step) for (run, tag), step in result.replaced_from.items() if run == "."}
    return points, replaced
