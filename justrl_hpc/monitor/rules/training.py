"""Training-dynamics rules over verl's per-step metrics (monitor-facts.md section (b): T1–T8, S3).

    watch = TrainingWatch(settings, max_response_length)
    watch.observe(step, {tag: value, ...}, wall_time) -> list[Finding]   # the findings that hold AT that step
    watch.rewind(step)                                                  # history from `step` on was replaced
    watch.state() -> dict; TrainingWatch.from_state(state, settings)    # JSON, for the daemon's SQLite store

The training rules are judged step by step, so an anomaly that recovered before the daemon read the event
files is still found at its step (the daemon feeds every step it reads, oldest first). Windows are in steps
(JustRL does ~12 steps an hour) and hold finite values only: one NaN must not poison the baseline (the
OLMo-core lesson). Every condition needs a minimum number of steps of evidence (`*_steps`) except the point
events (NaN/Inf, grad-norm spike), which instead hold for `hold_steps` after they were seen, so a burst of
spikes is one alert episode, not one per spike. Relative rules wait for `min_samples` values in their window.
The progress rules over the ledger (S1, S4, S6, S7) are progress.py's.
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Mapping
from typing import Any

from justrl_hpc.monitor.findings import Finding, Severity
from justrl_hpc.monitor.rules import entropy
from justrl_hpc.monitor.rules.entropy import ENTROPY_PUBLISHED  # noqa: F401  (the dashboard reads the bands here)
from justrl_hpc.monitor.rules.step_history import StepHistory, ema, finding, streak
from justrl_hpc.monitor.rules.training_settings import (  # noqa: F401
    LENGTH_BAND_FRACTIONS,
    TRUNCATION_WARN,
    TrainRuleSettings,
)
from justrl_hpc.monitor.schema import pick, truncation_rate

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
        self._history = StepHistory(self.settings.history_steps())

    # -- persistence ---------------------------------------------------------------------------------------

    @property
    def last_step(self) -> int | None:
        return self._history.last_step

    def state(self) -> dict[str, Any]:
        """JSON-serialisable (no NaN: non-finite values are kept as text); bounded by history_steps()."""
        return {
            "version": self.VERSION,
            "max_response_length": self.max_response_length,
            "records": copy.deepcopy(self._history.records),
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
            watch._history = StepHistory(watch.settings.history_steps(), state.get("records") or [])
        return watch

    def rewind(self, step: int) -> None:
        """Forget steps ≥ `step` (a resume re-logs them; TensorBoard's preemption rule). A rewind behind the
        kept history resets the watch: its windows warm up again."""
        self._history.rewind(step)

    # -- evaluation ----------------------------------------------------------------------------------------

    def _window(self, name: str, n: int) -> list[float]:
        """The last n values of a canonical metric before the current step (steps without it skipped)."""
        return self._history.window(name, n)

    def observe(self, step: int, values: Mapping[str, Any], wall_time: float | None = None) -> list[Finding]:
        """Judge one step's scalars (every tag logged at that step, all at once). A step at or before the
        newest one seen replaces the history from there on (an implicit rewind): a resume's re-logged steps,
        or the newest step fed again once a later poll read the rest of its tags."""
        last = self._history.last_step
        if last is not None and step <= last:
            self.rewind(step)
        derived = self._history.last_derived() or _initial_derived()
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
            history = self._window("entropy", self.settings.history_steps())
            findings += entropy.judge(self.settings, step, got["entropy"][0], current["entropy"], derived, history)
        if "length_mean" in current:
            findings += self._length(step, got["length_mean"][0], current["length_mean"], derived)
        if "truncation" in current:
            findings += self._truncation(step, current["truncation"], derived)
        if "reward" in current:
            findings += self._reward(step, got["reward"][0], current["reward"], derived)
        findings += self._grad(step, got.get("grad_norm"), derived)
        if "step_time_net" in current:
            findings += self._step_time(step, got["step_time"][0], current["step_time_net"], derived)

        self._history.append(step, wall_time, current, derived)
        return findings

    _streak = staticmethod(streak)
    _ema = staticmethod(ema)
    _finding = staticmethod(finding)

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
            if lines:
                line = min(lines)
                if st.grad_min_ratio is not None:
                    line = max(line, st.grad_min_ratio * statistics.median(base[-st.grad_median_window :]))
                if st.grad_min_abs is not None:
                    line = max(line, st.grad_min_abs)
                if x > line:
                    spikes.append([step, x, line, tag])
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
        floor = [f"{st.grad_min_ratio:g}× the median" if st.grad_min_ratio is not None else "",
                 f"{st.grad_min_abs:g}" if st.grad_min_abs is not None else ""]
        if any(floor):
            how += ", at least " + " and ".join(f for f in floor if f)
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
