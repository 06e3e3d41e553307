"""Training-dynamics and progress rules (monitor-facts.md section (b): T1–T8, S1, S3, S4 and checkpoint/step
checks of our own), and the `configs/monitor.yaml` loader.

    watch = TrainingWatch(settings, max_response_length)
    watch.observe(step, {tag: value, ...}, wall_time) -> list[Finding]   # the findings that hold AT that step
    watch.rewind(step)                                                  # history from `step` on was replaced
    watch.state() -> dict; TrainingWatch.from_state(state, settings)    # JSON, for the daemon's SQLite store

    evaluate_progress(events, last_step, last_step_time, step_times, job_running, now, settings, save_freq=…)

The training rules are judged step by step, so an anomaly that recovered before the daemon read the event
files is still found at its step (the daemon feeds every step it reads, oldest first). Windows are in steps
(JustRL does ~12 steps an hour) and hold finite values only: one NaN must not poison the baseline (the
OLMo-core lesson). Every condition needs a minimum number of steps of evidence (`*_steps`) except the point
events (NaN/Inf, grad-norm spike), which instead hold for `hold_steps` after they were seen, so a burst of
spikes is one alert episode, not one per spike. Relative rules wait for `min_samples` values in their window.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import typing
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from justrl_hpc.errors import UserError
from justrl_hpc.monitor.gpu_rules import GpuRuleSettings
from justrl_hpc.monitor.model import Finding, Severity

# -- metric names ------------------------------------------------------------------------------------------

# Canonical name → the TensorBoard tags that carry it, preferred first (the first present in a step wins).
# Checked against verl 0.9.1's sources: trainer/ppo/ray_trainer.py logs `actor/entropy` (the rollout batch's
# entropy before the update); verl 0.4.0, the version JustRL vendors, logged only `actor/entropy_loss`, which
# 0.9.1's engine workers (workers/utils/losses.py) still log when they compute entropy during the update, so
# `actor/entropy` is preferred when both are there; metric_utils.compute_data_metrics logs
# `critic/score/mean` (the reward function's score) and `critic/rewards/mean` (score plus any KL penalty:
# the same number in JustRL, which has no KL in the reward), `response_length/{mean,max,clip_ratio}`;
# compute_timing_metrics logs `timing_s/<stage>` (`step`, `testing`, `save_checkpoint`, `gen`, …) and
# compute_throughout_metrics `perf/time_per_step`; the actor's update logs `actor/grad_norm`,
# `actor/pg_loss`, `actor/pg_clipfrac`, `actor/ppo_kl` (core_algos.py).
ALIASES: dict[str, tuple[str, ...]] = {
    "entropy": ("actor/entropy", "actor/entropy_loss"),
    "reward": ("critic/score/mean", "critic/rewards/mean"),
    "length_mean": ("response_length/mean",),
    "length_max": ("response_length/max",),
    "length_clip_ratio": ("response_length/clip_ratio",),
    "grad_norm": ("actor/grad_norm",),
    "pg_loss": ("actor/pg_loss",),
    "pg_clipfrac": ("actor/pg_clipfrac",),
    "ppo_kl": ("actor/ppo_kl",),
    "step_time": ("timing_s/step", "perf/time_per_step"),
    "testing_time": ("timing_s/testing",),
    "save_time": ("timing_s/save_checkpoint",),
    "aborted_ratio": ("response/aborted_ratio",),
}
_TAG_TO_NAME = {tag: name for name, tags in ALIASES.items() for tag in tags}
WATCHED_TAGS: tuple[str, ...] = tuple(_TAG_TO_NAME)

# JustRL's published dynamics (justrl-recipe.md, "Training dynamics reported"): entropy oscillates around
# 1.2–1.4 (1.0–1.6 late), mean response length 7–8k → 4–5k tokens, mean reward −0.6 → +0.4 on a ±1 scale.
# The dashboard (view.py) shows the same bands; these are the rules' source of truth.
ENTROPY_HEALTHY = (1.0, 1.6)
LENGTH_BAND_FRACTIONS = (0.1, 0.78)  # of max_response_length: 1,536 / 11,981 tokens of 15,360
TRUNCATION_WARN = 0.05


def canonical(tag: str) -> str | None:
    """The canonical name of a TensorBoard tag, or None when no rule reads it."""
    return _TAG_TO_NAME.get(tag)


def pick(values: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """Canonical name → (tag, value) for the watched tags in one step's values, the preferred alias first."""
    out: dict[str, tuple[str, float]] = {}
    for name, tags in ALIASES.items():
        for tag in tags:
            v = values.get(tag)
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[name] = (tag, float(v))
                break
    return out


def truncation_rate(values: Mapping[str, Any], max_response_length: int | None) -> float | None:
    """The share of this step's responses that hit the generation cap, or None when it cannot be known.

    verl 0.9.1's `response_length/clip_ratio` is NOT a truncation rate by itself. compute_data_metrics takes
    `max_response_length = batch["responses"].shape[-1]`, the padded width of the response tensor, and logs
    the share of samples whose response length (attention-mask sum) EQUALS that width. The V1 trainer
    (trainer_base.py) builds the batch from nested tensors with `to_padded_tensor`, so the width is the
    longest response in the batch: clip_ratio is then the share tied with the batch's longest response,
    never 0 for a non-empty batch, whether or not anything was cut. The legacy trainer (`use_v1=False`, which
    the JustRL recipe here runs) pads to `rollout.response_length` in the agent loop, where it is the share at
    the cap. Both cases agree when `response_length/max` has reached `max_response_length`: the longest
    response is then at the cap, so clip_ratio is exactly the share at the cap. When the max is below the cap
    nothing was truncated. So: clip_ratio if max ≥ cap, else 0.

    Limitations: a response that ends with EOS on exactly the cap's last token counts as truncated (verl's own
    definition; rare at 15,360 tokens). Without clip_ratio (or without a known cap) there is no per-sample
    source in the event files: verl's `trainer.rollout_data_dir` dump holds decoded text and scores, not
    token counts, so this returns None and the truncation rule is silent rather than guessing from the max.
    """
    if not max_response_length:
        return None
    got = pick(values)
    if "length_max" not in got or "length_clip_ratio" not in got:
        return None
    mx, ratio = got["length_max"][1], got["length_clip_ratio"][1]
    if not (math.isfinite(mx) and math.isfinite(ratio)):
        return None
    return ratio if mx >= max_response_length else 0.0


# -- settings ----------------------------------------------------------------------------------------------


def _f(default: Any, lo: float | None = 0.0, hi: float | None = None) -> Any:
    return field(default=default, metadata={"min": lo, "max": hi})


@dataclass
class TrainRuleSettings:
    """Thresholds of the training rules (the `training:` section of configs/monitor.yaml). A threshold set to
    None switches its check off. Windows and persistence counts are in training steps."""

    min_samples: int = _f(20, 1)  # a relative rule waits for this many values in its window
    hold_steps: int = _f(10, 1)  # a point event (NaN, grad spike) holds this many steps
    nonfinite_ignore: tuple[str, ...] = ()  # tag prefixes whose NaN/Inf is expected
    # T3/T4 entropy: an EMA against absolute lines (off with entropy_band: null) and against its own median
    entropy_ema_alpha: float = _f(0.1, 0.0, 1.0)
    entropy_band: tuple[float, float] | None = (0.8, 2.0)
    entropy_critical_band: tuple[float, float] | None = (0.6, 3.0)
    entropy_low_steps: int = _f(20, 1)
    entropy_high_steps: int = _f(10, 1)
    entropy_critical_steps: int = _f(5, 1)
    entropy_window: int = _f(200, 1)
    entropy_drop_fraction: float | None = _f(0.30, 0.0, 1.0)
    entropy_rise_factor: float | None = _f(2.0, 1.0)
    entropy_drift_steps: int = _f(5, 1)
    # T5/T7 response length, as fractions of max_response_length and against the rolling median
    length_high_fraction: float | None = _f(LENGTH_BAND_FRACTIONS[1], 0.0, 1.0)
    length_high_steps: int = _f(10, 1)
    length_window: int = _f(200, 1)
    length_rise_fraction: float | None = _f(0.5, 0.0)
    length_low_fraction: float | None = _f(LENGTH_BAND_FRACTIONS[0], 0.0, 1.0)
    length_collapse_window: int = _f(50, 1)
    length_drop_fraction: float | None = _f(0.4, 0.0, 1.0)
    length_low_steps: int = _f(5, 1)
    # T6 truncation (see truncation_rate)
    truncation_warn: float | None = _f(TRUNCATION_WARN, 0.0, 1.0)
    truncation_warn_steps: int = _f(20, 1)
    truncation_critical: float | None = _f(0.15, 0.0, 1.0)
    truncation_critical_steps: int = _f(5, 1)
    # T8 reward: EMA below its running max, or the raw mean under a floor
    reward_ema_alpha: float = _f(0.1, 0.0, 1.0)
    reward_min_samples: int = _f(200, 1)
    reward_drop: float | None = _f(0.3, 0.0)
    reward_floor: float | None = _f(-0.9, None)
    reward_steps: int = _f(10, 1)
    # T2 grad-norm spike
    grad_window: int = _f(128, 2)
    grad_sigma: float | None = _f(6.0, 0.0)
    grad_median_window: int = _f(100, 1)
    grad_median_factor: float | None = _f(10.0, 1.0)
    grad_critical_count: int = _f(3, 1)
    grad_critical_window: int = _f(10, 1)
    # S3 step time (the training part: timing_s/step less testing and checkpoint saving)
    step_time_window: int = _f(50, 1)
    step_time_ratio: float | None = _f(1.33, 1.0)
    step_time_steps: int = _f(5, 1)

    def history_steps(self) -> int:
        """How many steps of history the watch keeps (enough for every window, and for a rewind of one
        save interval behind the newest step)."""
        return (
            max(
                self.entropy_window,
                self.length_window,
                self.length_collapse_window,
                self.grad_window,
                self.grad_median_window,
                self.step_time_window,
            )
            + 64
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, section: str = "training") -> TrainRuleSettings:
        return _settings_from_dict(cls, data, section)


@dataclass
class ProgressSettings:
    """Thresholds of the progress rules (the `progress:` section of configs/monitor.yaml)."""

    stall_warn_factor: float = _f(3.0, 1.0)  # S1: no new step for this × the p95 step time …
    stall_warn_min_s: float = _f(1800.0)  # … and at least this long → warn
    stall_critical_factor: float = _f(5.0, 1.0)
    stall_critical_min_s: float = _f(3600.0)
    stall_default_step_s: float = _f(300.0, 1.0)  # before any step time is known
    startup_grace_s: float = _f(1800.0)  # extra time for a chunk's first step (model load, validation)
    no_progress_critical: int = _f(3, 1)  # S4: chunks in a row that ended without a new checkpoint
    restart_storm_count: int = _f(5, 1)  # S4: this many chunk starts …
    restart_storm_window_s: float = _f(1800.0, 1.0)  # … within this long → warn
    checkpoint_age_factor: float | None = _f(
        1.5, 1.0
    )  # S6: last save older than this × save_freq × step time
    checkpoint_age_slack_s: float = _f(1800.0)
    checkpoint_overdue_steps: int | None = _f(2, 0)  # S6: steps past a save_freq multiple with no save

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, section: str = "progress") -> ProgressSettings:
        return _settings_from_dict(cls, data, section)


@dataclass
class MonitorSettings:
    training: TrainRuleSettings = field(default_factory=TrainRuleSettings)
    progress: ProgressSettings = field(default_factory=ProgressSettings)
    gpu: GpuRuleSettings = field(default_factory=GpuRuleSettings)


SECTIONS = ("training", "progress", "gpu")


def load_monitor_settings(path: str | Path) -> MonitorSettings:
    """configs/monitor.yaml → MonitorSettings; an absent section is its defaults; an unknown key, a wrong
    type or an out-of-range value is a UserError naming the file and the field."""
    from justrl_hpc.config import read_yaml

    path = Path(path)
    data = read_yaml(path, str(path))
    # daemon: belongs to the daemon's own loader (monitor.daemon.load_config), which reads the same file.
    valid = (*SECTIONS, "daemon")
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise UserError(f"unknown section {unknown[0]!r}; valid sections: {', '.join(valid)}", f"{path}")
    try:
        return MonitorSettings(
            training=TrainRuleSettings.from_dict(data.get("training")),
            progress=ProgressSettings.from_dict(data.get("progress")),
            gpu=_gpu_from_dict(data.get("gpu")),
        )
    except UserError as exc:
        raise UserError(str(exc), f"{path}") from None


def _gpu_from_dict(data: Any) -> GpuRuleSettings:
    if data is not None and not isinstance(data, dict):
        raise UserError(f"expected a mapping of settings, got {data!r}", "gpu")
    try:
        return GpuRuleSettings.from_dict(data)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _settings_from_dict(cls: type, data: Any, section: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise UserError(f"expected a mapping of settings, got {data!r}", section)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"unknown setting; known: {', '.join(sorted(known))}", f"{section}.{unknown[0]}")
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for name, value in data.items():
        where = f"{section}.{name}"
        f = known[name]
        out[name] = _check(value, hints[name], where, f.metadata.get("min"), f.metadata.get("max"))
    return cls(**out)


def _check(value: Any, tp: Any, where: str, lo: float | None, hi: float | None) -> Any:
    args = typing.get_args(tp)
    if type(None) in args:
        if value is None:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args == (str, ...):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise UserError(f"must be a list of strings, got {value!r}", where)
        return tuple(value)
    if typing.get_origin(tp) is tuple:
        ok = (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            and all(math.isfinite(v) for v in value)
        )
        if not ok or value[0] >= value[1]:
            raise UserError(
                f"must be [low, high] with low < high (or null to switch it off), got {value!r}", where
            )
        return (float(value[0]), float(value[1]))
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"must be an integer, got {value!r}", where)
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"must be a number, got {value!r}", where)
    if lo is not None and value < lo:
        raise UserError(f"must be ≥ {lo:g}, got {value!r}", where)
    if hi is not None and value > hi:
        raise UserError(f"must be ≤ {hi:g}, got {value!r}", where)
    return tp(value)


# -- the training watch ------------------------------------------------------------------------------------


def _initial_derived() -> dict[str, Any]:
    # ema: name → value; streaks: condition → consecutive steps it held; nonfinite: tag → [step, text];
    # spikes: [[step, value, line], …] within the grad critical window / hold.
    return {"ema": {}, "streaks": {}, "reward_n": 0, "reward_max": None, "nonfinite": {}, "spikes": []}


def _beyond(x: float, line: float, low: bool) -> bool:
    return x < line if low else x > line


def _fmt(x: float) -> str:
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


class TrainingWatch:
    """Stateful, incremental evaluator of the training rules over one run's per-step metrics."""

    VERSION = 1

    def __init__(
        self, settings: TrainRuleSettings | None = None, max_response_length: int | None = None
    ) -> None:
        self.settings = settings or TrainRuleSettings()
        self.max_response_length = max_response_length
        # Oldest first: {"step", "wall", "values": {name: finite value}, "derived": state after that step}.
        self._records: list[dict[str, Any]] = []
        self._series: dict[str, list[tuple[int, float]]] = {}  # name → (step, value): an index of _records

    # -- persistence ---------------------------------------------------------------------------------------

    @property
    def last_step(self) -> int | None:
        return self._records[-1]["step"] if self._records else None

    def state(self) -> dict[str, Any]:
        """JSON-serialisable (no NaN: non-finite values are kept as text); bounded by history_steps()."""
        return {
            "version": self.VERSION,
            "max_response_length": self.max_response_length,
            "records": copy.deepcopy(self._records),
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        settings: TrainRuleSettings | None = None,
        max_response_length: int | None = None,
    ) -> TrainingWatch:
        """A watch that continues exactly where state() was taken (settings may differ: the new ones apply from
        the next step). A state of another version starts fresh rather than misreading it."""
        mrl = max_response_length if max_response_length is not None else state.get("max_response_length")
        watch = cls(settings, mrl)
        if state.get("version") == cls.VERSION:
            watch._records = copy.deepcopy(list(state.get("records") or []))
            watch._trim()
            watch._reindex()
        return watch

    def rewind(self, step: int) -> None:
        """Forget steps ≥ `step` (a resume re-logs them; TensorBoard's preemption rule). A rewind behind the
        kept history resets the watch: its windows warm up again."""
        while self._records and self._records[-1]["step"] >= step:
            self._records.pop()
        for series in self._series.values():
            while series and series[-1][0] >= step:
                series.pop()

    def _trim(self) -> None:
        keep = self.settings.history_steps()
        if len(self._records) > keep:
            del self._records[: len(self._records) - keep]
            first = self._records[0]["step"]
            for series in self._series.values():
                if series and series[0][0] < first:
                    del series[: bisect_left(series, (first, -math.inf))]

    def _reindex(self) -> None:
        self._series = {}
        for rec in self._records:
            for name, v in rec["values"].items():
                self._series.setdefault(name, []).append((rec["step"], v))

    # -- evaluation ----------------------------------------------------------------------------------------

    def _window(self, name: str, n: int) -> list[float]:
        """The last n values of a canonical metric before the current step (steps without it skipped)."""
        return [v for _s, v in self._series.get(name, ())[-n:]]

    def observe(self, step: int, values: Mapping[str, Any], wall_time: float | None = None) -> list[Finding]:
        """Judge one step's scalars (every tag logged at that step, all at once). A step at or before the
        newest one seen replaces the history from there on (an implicit rewind): a resume's re-logged steps,
        or the newest step fed again once a later poll read the rest of its tags."""
        if self._records and step <= self._records[-1]["step"]:
            self.rewind(step)
        derived = copy.deepcopy(self._records[-1]["derived"]) if self._records else _initial_derived()
        findings: list[Finding] = []
        findings += self._nonfinite(step, values, derived)

        got = {name: tv for name, tv in pick(values).items() if math.isfinite(tv[1])}
        current: dict[str, float] = {name: v for name, (_tag, v) in got.items()}
        trunc = truncation_rate(values, self.max_response_length)
        if trunc is not None:
            current["truncation"] = trunc
        if "step_time" in current:
            extra = current.get("testing_time", 0.0) + current.get("save_time", 0.0)
            current["step_time_net"] = max(current["step_time"] - extra, 0.0)

        if "entropy" in current:
            findings += self._entropy(step, got["entropy"][0], current["entropy"], derived)
        if "length_mean" in current:
            findings += self._length(step, got["length_mean"][0], current["length_mean"], derived)
        if "truncation" in current:
            findings += self._truncation(step, current["truncation"], derived)
        if "reward" in current:
            findings += self._reward(step, got["reward"][0], current["reward"], derived)
        findings += self._grad(step, got.get("grad_norm"), derived)
        if "step_time_net" in current:
            findings += self._step_time(step, got["step_time"][0], current["step_time_net"], derived)

        self._records.append({"step": step, "wall": wall_time, "values": current, "derived": derived})
        for name, v in current.items():
            self._series.setdefault(name, []).append((step, v))
        self._trim()
        return findings

    @staticmethod
    def _streak(derived: dict[str, Any], key: str, holds: bool) -> int:
        n = derived["streaks"].get(key, 0) + 1 if holds else 0
        if n:
            derived["streaks"][key] = n
        else:
            derived["streaks"].pop(key, None)
        return n

    @staticmethod
    def _ema(derived: dict[str, Any], name: str, x: float, alpha: float) -> float:
        prev = derived["ema"].get(name)
        ema = x if prev is None else alpha * x + (1 - alpha) * prev
        derived["ema"][name] = ema
        return ema

    @staticmethod
    def _finding(
        rule: str,
        severity: Severity,
        subject: str,
        metric: str,
        value: Any,
        threshold: Any,
        msg: str,
        step: int,
    ) -> Finding:
        value = round(value, 4) if isinstance(value, float) else value
        threshold = round(threshold, 4) if isinstance(threshold, float) else threshold
        return Finding.of(rule, severity, subject, metric, value, threshold, msg, step=step)

    # T1
    def _nonfinite(self, step: int, values: Mapping[str, Any], derived: dict[str, Any]) -> list[Finding]:
        st = self.settings
        seen: dict[str, list[Any]] = derived["nonfinite"]
        for tag, v in values.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isfinite(v):
                continue
            if any(tag.startswith(p) for p in st.nonfinite_ignore):
                continue
            seen[tag] = [step, str(float(v))]
        for tag in [t for t, (at, _text) in seen.items() if step - at >= st.hold_steps]:
            del seen[tag]
        out = []
        for tag, (at, text) in sorted(seen.items()):
            where = f"at step {at}" if at == step else f"at step {at} (held {st.hold_steps} steps)"
            out.append(
                self._finding(
                    "T1-nonfinite",
                    "critical",
                    tag,
                    tag,
                    text,
                    None,
                    f"{tag} is {text} {where}; verl skips a non-finite update silently, training is likely broken",
                    step,
                )
            )
        return out

    # T3 / T4
    def _entropy(self, step: int, tag: str, x: float, derived: dict[str, Any]) -> list[Finding]:
        st = self.settings
        out: list[Finding] = []
        baseline = self._window("entropy", st.entropy_window)
        ema = self._ema(derived, "entropy", x, st.entropy_ema_alpha)
        healthy = f"{ENTROPY_HEALTHY[0]:g}–{ENTROPY_HEALTHY[1]:g}"
        for rule, side, lo_i, steps in (
            ("T3-entropy-collapse", "low", 0, st.entropy_low_steps),
            ("T4-entropy-explosion", "high", 1, st.entropy_high_steps),
        ):
            band, crit = st.entropy_band, st.entropy_critical_band

            low = side == "low"
            n_warn = self._streak(
                derived, f"entropy_{side}", band is not None and _beyond(ema, band[lo_i], low)
            )
            n_crit = self._streak(
                derived, f"entropy_{side}_crit", crit is not None and _beyond(ema, crit[lo_i], low)
            )
            word = "<" if side == "low" else ">"
            sev: Severity
            if crit is not None and n_crit >= st.entropy_critical_steps:
                line, n, sev = crit[lo_i], n_crit, "critical"
            elif band is not None and n_warn >= steps:
                line, n, sev = band[lo_i], n_warn, "warn"
            else:
                continue
            out.append(
                self._finding(
                    rule,
                    sev,
                    "band",
                    tag,
                    ema,
                    line,
                    f"entropy EMA {ema:.3f} {word} {line:g} for {n} steps at step {step} ({tag}; JustRL's "
                    f"healthy band is {healthy})",
                    step,
                )
            )
        if len(baseline) < st.min_samples:
            self._streak(derived, "entropy_drop", False)
            self._streak(derived, "entropy_rise", False)
            return out
        med = statistics.median(baseline)
        if med <= 0:
            return out
        if st.entropy_drop_fraction is not None:
            line = (1 - st.entropy_drop_fraction) * med
            n = self._streak(derived, "entropy_drop", ema < line)
            if n >= st.entropy_drift_steps:
                out.append(
                    self._finding(
                        "T3-entropy-collapse",
                        "warn",
                        "drift",
                        tag,
                        ema,
                        line,
                        f"entropy EMA {ema:.3f} is {1 - ema / med:.0%} below its {len(baseline)}-step median "
                        f"{med:.3f} (line {line:.3f}) for {n} steps at step {step} ({tag})",
                        step,
                    )
                )
        if st.entropy_rise_factor is not None:
            line = st.entropy_rise_factor * med
            n = self._streak(derived, "entropy_rise", ema >= line)
            if n >= st.entropy_drift_steps:
                out.append(
                    self._finding(
                        "T4-entropy-explosion",
                        "critical",
                        "drift",
                        tag,
                        ema,
                        line,
                        f"entropy EMA {ema:.3f} is {ema / med:.1f}× its {len(baseline)}-step median {med:.3f} "
                        f"(line {line:.3f}) for {n} steps at step {step} ({tag})",
                        step,
                    )
                )
        return out

    # T5 / T7
    def _length(self, step: int, tag: str, x: float, derived: dict[str, Any]) -> list[Finding]:
        st, cap = self.settings, self.max_response_length
        out: list[Finding] = []

        def judge(rule: str, subject: str, holds: bool, steps: int, line: float, why: str) -> None:
            n = self._streak(derived, f"length_{subject}", holds)
            if n >= steps:
                out.append(
                    self._finding(
                        rule,
                        "warn",
                        subject,
                        tag,
                        x,
                        line,
                        f"mean response length {_fmt(x)} {why} for {n} steps at step {step} ({tag})",
                        step,
                    )
                )

        if cap and st.length_high_fraction is not None:
            line = st.length_high_fraction * cap
            judge(
                "T5-length-explosion",
                "cap",
                x > line,
                st.length_high_steps,
                line,
                f"> {_fmt(line)} ({st.length_high_fraction:.0%} of max_response_length {cap:,})",
            )
        if cap and st.length_low_fraction is not None:
            line = st.length_low_fraction * cap
            judge(
                "T7-length-collapse",
                "floor",
                x < line,
                st.length_low_steps,
                line,
                f"< {_fmt(line)} ({st.length_low_fraction:.0%} of max_response_length {cap:,})",
            )
        history = self._window("length_mean", max(st.length_window, st.length_collapse_window))
        base = history[-st.length_window :]
        if st.length_rise_fraction is not None:
            ok = len(base) >= st.min_samples
            med = statistics.median(base) if ok else 0.0
            line = (1 + st.length_rise_fraction) * med
            judge(
                "T5-length-explosion",
                "drift",
                ok and med > 0 and x > line,
                st.length_high_steps,
                line,
                f"> {_fmt(line)} (+{st.length_rise_fraction:.0%} over its {len(base)}-step median {_fmt(med)})",
            )
        recent = history[-st.length_collapse_window :]
        if st.length_drop_fraction is not None:
            ok = len(recent) >= st.min_samples
            med = statistics.median(recent) if ok else 0.0
            line = (1 - st.length_drop_fraction) * med
            judge(
                "T7-length-collapse",
                "drop",
                ok and x < line,
                st.length_low_steps,
                line,
                f"< {_fmt(line)} (−{st.length_drop_fraction:.0%} from its {len(recent)}-step median {_fmt(med)})",
            )
        return out

    # T6
    def _truncation(self, step: int, rate: float, derived: dict[str, Any]) -> list[Finding]:
        st = self.settings
        n_warn = self._streak(derived, "trunc", st.truncation_warn is not None and rate > st.truncation_warn)
        n_crit = self._streak(
            derived, "trunc_crit", st.truncation_critical is not None and rate > st.truncation_critical
        )
        sev: Severity
        if st.truncation_critical is not None and n_crit >= st.truncation_critical_steps:
            line, n, sev = st.truncation_critical, n_crit, "critical"
        elif st.truncation_warn is not None and n_warn >= st.truncation_warn_steps:
            line, n, sev = st.truncation_warn, n_warn, "warn"
        else:
            return []
        return [
            self._finding(
                "T6-truncation",
                sev,
                "rate",
                "response_length/clip_ratio",
                rate,
                line,
                f"{rate:.1%} of responses hit max_response_length {self.max_response_length:,} (> {line:.0%}) "
                f"for {n} steps at step {step} (response_length/clip_ratio with response_length/max at the cap)",
                step,
            )
        ]

    # T8
    def _reward(self, step: int, tag: str, x: float, derived: dict[str, Any]) -> list[Finding]:
        st = self.settings
        out: list[Finding] = []
        ema = self._ema(derived, "reward", x, st.reward_ema_alpha)
        derived["reward_n"] += 1
        best = derived["reward_max"]
        best = ema if best is None else max(best, ema)
        derived["reward_max"] = best
        if st.reward_drop is not None:
            ok = derived["reward_n"] >= st.reward_min_samples
            line = best - st.reward_drop
            n = self._streak(derived, "reward_drop", ok and ema < line)
            if n >= st.reward_steps:
                out.append(
                    self._finding(
                        "T8-reward-collapse",
                        "critical",
                        "drop",
                        tag,
                        ema,
                        line,
                        f"mean reward EMA {ema:+.3f} is {best - ema:.2f} below its best {best:+.3f} "
                        f"(> {st.reward_drop:g}) for {n} steps at step {step} ({tag})",
                        step,
                    )
                )
        if st.reward_floor is not None:
            n = self._streak(derived, "reward_floor", x < st.reward_floor)
            if n >= st.reward_steps:
                out.append(
                    self._finding(
                        "T8-reward-collapse",
                        "critical",
                        "floor",
                        tag,
                        x,
                        st.reward_floor,
                        f"mean reward {x:+.3f} < {st.reward_floor:+g} for {n} steps at step {step} ({tag}); "
                        "nearly every answer is scored wrong",
                        step,
                    )
                )
        return out

    # T2
    def _grad(self, step: int, got: tuple[str, float] | None, derived: dict[str, Any]) -> list[Finding]:
        st = self.settings
        spikes: list[list[Any]] = derived["spikes"]
        if got is not None:
            tag, x = got
            base = self._window("grad_norm", max(st.grad_window, st.grad_median_window))
            lines: list[float] = []
            if len(base) >= st.min_samples:
                sig_base = base[-st.grad_window :]
                if st.grad_sigma is not None and len(sig_base) >= 2:
                    mean = math.fsum(sig_base) / len(sig_base)
                    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in sig_base) / len(sig_base))
                    lines.append(mean + st.grad_sigma * sd)
                if st.grad_median_factor is not None:
                    lines.append(st.grad_median_factor * statistics.median(base[-st.grad_median_window :]))
            if lines and x > min(lines):
                spikes.append([step, x, min(lines), tag])
        keep = max(st.hold_steps, st.grad_critical_window)
        spikes[:] = [s for s in spikes if step - s[0] < keep]
        if not spikes or step - spikes[-1][0] >= st.hold_steps:
            return []
        at, value, line, tag = spikes[-1]
        recent = sum(1 for s in spikes if step - s[0] < st.grad_critical_window)
        sev: Severity = "critical" if recent >= st.grad_critical_count else "warn"
        count = f"; {recent} spikes in the last {st.grad_critical_window} steps" if recent > 1 else ""
        how = " or ".join(
            w
            for w in (
                f"mean + {st.grad_sigma:g}σ over {st.grad_window} steps" if st.grad_sigma is not None else "",
                f"{st.grad_median_factor:g}× the {st.grad_median_window}-step median"
                if st.grad_median_factor is not None
                else "",
            )
            if w
        )
        return [
            self._finding(
                "T2-grad-norm-spike",
                sev,
                "grad_norm",
                tag,
                value,
                line,
                f"grad norm {_fmt(value)} at step {at} > {_fmt(line)} ({how}){count} ({tag})",
                step,
            )
        ]

    # S3
    def _step_time(self, step: int, tag: str, x: float, derived: dict[str, Any]) -> list[Finding]:
        st = self.settings
        base = self._window("step_time_net", st.step_time_window)
        if st.step_time_ratio is None or len(base) < st.min_samples:
            self._streak(derived, "step_time", False)
            return []
        med = statistics.median(base)
        line = st.step_time_ratio * med
        n = self._streak(derived, "step_time", med > 0 and x > line)
        if n < st.step_time_steps:
            return []
        return [
            self._finding(
                "S3-slowdown",
                "warn",
                "step_time",
                tag,
                x,
                line,
                f"step time {x:,.1f} s (less validation and checkpoint saving) > {st.step_time_ratio:g}× the "
                f"{len(base)}-step median {med:,.1f} s for {n} steps at step {step} ({tag})",
                step,
            )
        ]


# -- progress rules ----------------------------------------------------------------------------------------


def _event_time(e: Mapping[str, Any]) -> float | None:
    from justrl_hpc.ledger import parse_time

    t = e.get("time")
    if isinstance(t, int | float):
        return float(t)
    if isinstance(t, str):
        try:
            return parse_time(t)
        except ValueError:
            return None
    return None


def _p(values: Sequence[float], q: float) -> float | None:
    xs = sorted(v for v in values if isinstance(v, int | float) and math.isfinite(v) and v > 0)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _pfinding(
    rule: str,
    severity: Severity,
    subject: str,
    metric: str,
    value: Any,
    threshold: Any,
    msg: str,
    step: int | None,
) -> Finding:
    return Finding.of(rule, severity, subject, metric, value, threshold, msg, step=step)


def evaluate_progress(
    events: Sequence[Mapping[str, Any]],
    last_step: int | None,
    last_step_time: float | None,
    step_times: Sequence[float],
    job_running: bool,
    now: float,
    settings: ProgressSettings | None = None,
    save_freq: int | None = None,
) -> list[Finding]:
    """Progress findings that hold at `now`, from the run's ledger events (oldest first, as Ledger.read()
    gives them), the newest TensorBoard step and its wall time, recent step durations (timing_s/step) and
    whether the Slurm job is RUNNING. Pure.

    - S1-stall: no new step for max(factor × p95 step time, floor) while the job runs; a chunk still waiting
      for its first step gets startup_grace_s more (model load, vLLM start, validation before training).
    - S4-no-progress: chunks that ended (trainer-exited progress=false, or chunk-failed before the trainer)
      since the newest verified save; S4-restart-storm: many chunk starts in a short window;
      S4-run-failed: the chain stopped with `failed` and was not resubmitted.
    - S6-checkpoint-overdue: steps past a save_freq multiple with no `saved` event (needs save_freq), or the
      newest save older than factor × save_freq × median step time (+ slack) while the job runs.
    - S7-step-repeated: two `step` events of one step in one chunk (the trainer restarted inside a chunk);
      S7-resume-behind: the newest chunk's trainer started behind the newest verified save (a verified
      checkpoint was lost); S7-steps-retrained (info): it re-trains steps an earlier chunk had logged but not
      saved (normal after a kill or SIGTERM-only preemption; counted as lost work). Only the newest chunk is
      judged, so these resolve when the next chunk starts. Duplicate TensorBoard points of one step are not
      judged here: the tail reader's preemption rule replaces them, and the ledger sees every step.
    """
    st = settings or ProgressSettings()
    out: list[Finding] = []
    evs = [e for e in events if isinstance(e, Mapping)]

    starts = [i for i, e in enumerate(evs) if e.get("event") == "trainer-started"]
    last_start = evs[starts[-1]] if starts else None
    last_start_t = _event_time(last_start) if last_start else None
    # The newest chunk start (`started` comes before Ray bring-up, `trainer-started` after it).
    chunk_starts = [e for e in evs if e.get("event") in ("started", "trainer-started")]
    chunk_start_t = _event_time(chunk_starts[-1]) if chunk_starts else None
    saved = [e for e in evs if e.get("event") == "saved" and isinstance(e.get("step"), int)]
    last_saved = saved[-1] if saved else None
    durations = [t for t in step_times if isinstance(t, int | float) and math.isfinite(t) and t > 0]
    median_step = statistics.median(durations) if durations else None

    # S1 stall
    if job_running and (last_step_time is not None or chunk_start_t is not None):
        p95 = _p(step_times, 0.95) or st.stall_default_step_s
        ref = max(t for t in (last_step_time, chunk_start_t) if t is not None)
        waiting_first = chunk_start_t is not None and (
            last_step_time is None or chunk_start_t >= last_step_time
        )
        grace = st.startup_grace_s if waiting_first else 0.0
        age = now - ref
        warn_s = max(st.stall_warn_factor * p95, st.stall_warn_min_s) + grace
        crit_s = max(st.stall_critical_factor * p95, st.stall_critical_min_s) + grace
        if age > warn_s:
            sev: Severity = "critical" if age > crit_s else "warn"
            line = crit_s if sev == "critical" else warn_s
            what = (
                f"no first step {age / 60:.0f} min after the chunk's {chunk_starts[-1].get('event')} event "
                f"(job {chunk_starts[-1].get('job_id')} chunk {chunk_starts[-1].get('chunk')})"
                if waiting_first
                else f"no new step for {age / 60:.0f} min after step {last_step}"
            )
            out.append(
                _pfinding(
                    "S1-stall",
                    sev,
                    "run",
                    "step_age_s",
                    round(age),
                    round(line),
                    f"{what}; the job is running (limit {line / 60:.0f} min: p95 step {p95:,.0f} s)",
                    last_step,
                )
            )

    # S4 no progress / failed / restart storm
    streak: list[Mapping[str, Any]] = []
    counted: set[tuple[Any, Any]] = set()  # one per chunk, however many exit lines it wrote
    for e in reversed(evs):
        name = e.get("event")
        if name in ("saved", "submitted"):
            break
        if name == "chunk-failed" or (name == "trainer-exited" and e.get("progress") is False):
            if (e.get("job_id"), e.get("chunk")) not in counted:
                counted.add((e.get("job_id"), e.get("chunk")))
                streak.append(e)
    if streak:
        newest = streak[0]
        sev = "critical" if len(streak) >= st.no_progress_critical else "warn"
        out.append(
            _pfinding(
                "S4-no-progress",
                sev,
                "chunks",
                "chunks_without_progress",
                len(streak),
                st.no_progress_critical,
                f"{len(streak)} chunk(s) in a row ended without a new checkpoint; the newest, job "
                f"{newest.get('job_id')} chunk {newest.get('chunk')}: {newest.get('event')} "
                f"reason={newest.get('reason')}",
                newest.get("step") if isinstance(newest.get("step"), int) else None,
            )
        )
    terminal = [e for e in evs if e.get("event") in ("failed", "finished", "submitted")]
    if terminal and terminal[-1].get("event") == "failed":
        e = terminal[-1]
        out.append(
            _pfinding(
                "S4-run-failed",
                "critical",
                "run",
                "ledger",
                "failed",
                None,
                f"the chain stopped: job {e.get('job_id')} chunk {e.get('chunk')} failed at step {e.get('step')}: "
                f"{e.get('reason')}",
                e.get("step") if isinstance(e.get("step"), int) else None,
            )
        )
    recent_starts = [t for t in (_event_time(e) for e in evs if e.get("event") == "started") if t is not None]
    recent_starts = [t for t in recent_starts if now - t <= st.restart_storm_window_s]
    if len(recent_starts) >= st.restart_storm_count:
        out.append(
            _pfinding(
                "S4-restart-storm",
                "warn",
                "chunks",
                "chunk_starts",
                len(recent_starts),
                st.restart_storm_count,
                f"{len(recent_starts)} chunk starts in the last {st.restart_storm_window_s / 60:.0f} min",
                last_step,
            )
        )

    # S6 checkpoint overdue
    saved_step = last_saved["step"] if last_saved else None
    base_step = max(
        [s for s in (saved_step, last_start.get("step") if last_start else None) if isinstance(s, int)] or [0]
    )
    if save_freq and st.checkpoint_overdue_steps is not None and last_step is not None:
        due = (base_step // save_freq + 1) * save_freq
        if last_step >= due + st.checkpoint_overdue_steps:
            out.append(
                _pfinding(
                    "S6-checkpoint-overdue",
                    "warn",
                    "steps",
                    "steps_since_save",
                    last_step - base_step,
                    save_freq + st.checkpoint_overdue_steps,
                    f"step {last_step} but no verified checkpoint since step {base_step}; one was due at step "
                    f"{due} (save_freq {save_freq})",
                    last_step,
                )
            )
    if save_freq and st.checkpoint_age_factor is not None and job_running and median_step:
        since = [t for t in (_event_time(last_saved) if last_saved else None, last_start_t) if t is not None]
        if since:
            age = now - max(since)
            limit = st.checkpoint_age_factor * save_freq * median_step + st.checkpoint_age_slack_s
            if age > limit:
                out.append(
                    _pfinding(
                        "S6-checkpoint-overdue",
                        "warn",
                        "age",
                        "checkpoint_age_s",
                        round(age),
                        round(limit),
                        f"newest checkpoint (step {saved_step}) or chunk start is {age / 3600:.1f} h old; "
                        f"expected one every ~{save_freq * median_step / 3600:.1f} h (save_freq {save_freq} × "
                        f"median step {median_step:,.0f} s)",
                        last_step,
                    )
                )

    # S7 the same step trained twice
    if last_start is not None:
        i0 = starts[-1]
        job, chunk = last_start.get("job_id"), last_start.get("chunk")
        seen: dict[int, int] = {}
        for e in evs[i0:]:
            if e.get("event") == "step" and e.get("job_id") == job and e.get("chunk") == chunk:
                s = e.get("step")
                if isinstance(s, int):
                    seen[s] = seen.get(s, 0) + 1
        repeated = sorted(s for s, n in seen.items() if n > 1)
        if repeated:
            out.append(
                _pfinding(
                    "S7-step-repeated",
                    "warn",
                    f"{job}:{chunk}",
                    "step",
                    repeated[0],
                    None,
                    f"job {job} chunk {chunk} logged step {repeated[0]} more than once"
                    + (f" ({len(repeated)} steps repeated)" if len(repeated) > 1 else "")
                    + ": the trainer restarted inside the chunk",
                    repeated[0],
                )
            )
        before = evs[:i0]
        prev_saved = max(
            (e["step"] for e in before if e.get("event") == "saved" and isinstance(e.get("step"), int)),
            default=None,
        )
        prev_logged = max(
            (e["step"] for e in before if e.get("event") == "step" and isinstance(e.get("step"), int)),
            default=None,
        )
        r = last_start.get("step")
        if isinstance(r, int) and prev_saved is not None and r < prev_saved:
            skipped = [e.get("step") for e in evs if e.get("event") == "checkpoint-skipped"]
            out.append(
                _pfinding(
                    "S7-resume-behind",
                    "critical" if r == 0 else "warn",
                    f"{job}:{chunk}",
                    "resume_step",
                    r,
                    prev_saved,
                    f"job {job} chunk {chunk} resumed from step {r}, behind the newest verified checkpoint "
                    f"{prev_saved}"
                    + (f" (checkpoint-skipped: {skipped})" if skipped else "")
                    + ("; it started over" if r == 0 else ""),
                    r,
                )
            )
        elif isinstance(r, int) and prev_logged is not None and r < prev_logged:
            out.append(
                _pfinding(
                    "S7-steps-retrained",
                    "info",
                    f"{job}:{chunk}",
                    "steps_retrained",
                    prev_logged - r,
                    None,
                    f"job {job} chunk {chunk} resumed from step {r}: steps {r + 1}–{prev_logged} are trained "
                    "again (logged by an earlier chunk after its last checkpoint)",
                    r,
                )
            )
    return out


# -- `python -m justrl_hpc.monitor.train_rules CONFIG`: check a monitor config -----------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    from dataclasses import asdict

    from justrl_hpc.errors import cli_entry

    parser = argparse.ArgumentParser(
        prog="python -m justrl_hpc.monitor.train_rules",
        description="Check a monitor settings file (configs/monitor.yaml) and print the settings it resolves to.",
    )
    parser.add_argument("config", help="path to the monitor YAML file")
    args = parser.parse_args(argv)

    @cli_entry
    def run() -> int:
        import json

        settings = load_monitor_settings(args.config)
        print(json.dumps({k: asdict(getattr(settings, k)) for k in SECTIONS}, indent=2, sort_keys=True))
        return 0

    return run()


if __name__ == "__main__":
    sys.exit(main())
