"""T3/T4, the entropy rules: against the run's own early reference, against a long log-linear trend, against its
recent median, and against an absolute band only where a rules file sets one.

Why not the paper's band. JustRL's figure shows 1.2–1.4 (1.0–1.6 late), but verl ≤ 0.4 miscomputed entropy with
dynamic batch size (thunlp/JustRL#5) and a reproducer on current rollouts saw ~0.97 at the start where ~0.6 was
read off that figure (thunlp/JustRL#3): a line drawn from it alarms on a healthy run. Another task's healthy
entropy can sit at 0.2. So the absolute band is off by default and the dashboard shows the paper's band beside
the curve as context. Tried on real verl GRPO logs (tests/data/real_verl_logs), a check against the rolling
median alone misses a slow collapse (0.39 → 0.024 over ~200 steps: the median falls along with it) and reports
a fast early one (0.35 → 0.10 in 18 steps) only once the window has filled. So:

- reference: the median of the run's first values after warm-up, kept for the whole run (in the watch's state,
  not its bounded window). A recent median (a few steps, so one low step is not a fall) below a fraction of it
  for a few steps is a collapse, whenever it happens, however slowly. A fall to 40 % warns, to 10 % is critical:
  JustRL's own late drift (1.4 → 1.0) is a fall to ~70 %, and a healthy real GRPO run here ends at 51 %.
- trend: a least-squares line through ln(entropy) over a long window; when it is a good fit and halves the
  entropy within the window, the entropy is falling steadily even if it has not yet crossed a line.
- drift: the EMA against its rolling median (sudden drops and rises relative to recent history).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from justrl_hpc.monitor.findings import Finding, Severity
from justrl_hpc.monitor.rules.step_history import ema, finding, streak
from justrl_hpc.monitor.rules.training_settings import TrainRuleSettings

# JustRL's published entropy (justrl-recipe.md, "Training dynamics reported"): context the dashboard shows beside
# the curve, never an alert line (see above).
ENTROPY_PUBLISHED = (1.0, 1.6)


def judge(st: TrainRuleSettings, step: int, tag: str, x: float, derived: dict[str, Any],
          history: list[float]) -> list[Finding]:
    """The entropy findings that hold at `step` (x its value; history the values before it, oldest first)."""
    e = ema(derived, "entropy", x, st.entropy_ema_alpha)
    out = _band(st, step, tag, e, derived)
    out += _reference(st, step, tag, x, derived, history)
    out += _trend(st, step, tag, x, derived, history)
    out += _drift(st, step, tag, e, derived, history[-st.entropy_window :])
    return out


def _band(st: TrainRuleSettings, step: int, tag: str, e: float, derived: dict[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    for rule, low, i, steps in (
        ("T3-entropy-collapse", True, 0, st.entropy_low_steps),
        ("T4-entropy-explosion", False, 1, st.entropy_high_steps),
    ):
        band, crit = st.entropy_band, st.entropy_critical_band
        side = "low" if low else "high"
        n_warn = streak(derived, f"entropy_{side}", band is not None and (e < band[i] if low else e > band[i]))
        n_crit = streak(derived, f"entropy_{side}_crit", crit is not None and (e < crit[i] if low else e > crit[i]))
        sev: Severity
        if crit is not None and n_crit >= st.entropy_critical_steps:
            line, n, sev = crit[i], n_crit, "critical"
        elif band is not None and n_warn >= steps:
            line, n, sev = band[i], n_warn, "warn"
        else:
            continue
        word = "<" if low else ">"
        out.append(finding(rule, sev, "band", tag, e, line,
                           f"entropy EMA {e:.3f} {word} {line:g} for {n} steps at step {step} ({tag}; the rules "
                           f"file's {'critical ' if sev == 'critical' else ''}band)", step))
    return out


def _reference(st: TrainRuleSettings, step: int, tag: str, x: float, derived: dict[str, Any],
               history: list[float]) -> list[Finding]:
    ref = derived.setdefault("entropy_ref", {"seen": 0, "values": [], "value": None})
    ref["seen"] += 1
    if ref["value"] is None:
        if ref["seen"] > st.entropy_warmup_steps:
            ref["values"].append(x)
        if len(ref["values"]) >= st.entropy_reference_steps:
            ref["value"], ref["values"] = statistics.median(ref["values"]), []
            ref["step"] = step
        streak(derived, "entropy_ref", False)
        return []
    base = ref["value"]
    recent = statistics.median([*history[-(st.entropy_recent_steps - 1) :], x]) if st.entropy_recent_steps > 1 else x
    warn, crit = st.entropy_reference_drop, st.entropy_reference_critical
    if base <= 0 or (warn is None and crit is None):
        return []
    sev: Severity | None = None
    if crit is not None and recent < (1 - crit) * base:
        sev, frac = "critical", crit
    elif warn is not None and recent < (1 - warn) * base:
        sev, frac = "warn", warn
    # One streak for both levels: a fall that deepens from warn to critical is one episode that escalates.
    n = streak(derived, "entropy_ref", sev is not None)
    if sev is None or n < st.entropy_collapse_steps:
        return []
    line = (1 - frac) * base
    return [finding("T3-entropy-collapse", sev, "reference", tag, recent, line,
                    f"entropy {recent:.3g} (median of the last {st.entropy_recent_steps} steps) is {recent / base:.0%} "
                    f"of the run's early reference {base:.3g} (steps after warm-up, to step {ref.get('step')}; "
                    f"line {line:.3g}) for {n} steps at step {step} ({tag})", step)]


def _trend(st: TrainRuleSettings, step: int, tag: str, x: float, derived: dict[str, Any],
           history: list[float]) -> list[Finding]:
    w = st.entropy_slope_window
    values = [*history[-(w - 1) :], x]
    fit = _log_fit(values) if st.entropy_slope_fall is not None and len(values) >= w else None
    holds = fit is not None and fit[1] >= st.entropy_slope_min_r2 and math.exp(fit[0] * (w - 1)) < 1 - st.entropy_slope_fall
    n = streak(derived, "entropy_trend", holds)
    if not holds or n < st.entropy_collapse_steps or fit is None:
        return []
    factor = math.exp(fit[0] * (w - 1))
    return [finding("T3-entropy-collapse", "warn", "trend", tag, factor, 1 - st.entropy_slope_fall,
                    f"entropy falling steadily: a log-linear fit over the last {w} steps (R² {fit[1]:.2f}) takes it "
                    f"to {factor:.0%} of where it was ({values[0]:.3g} → {x:.3g}) for {n} steps at step {step} "
                    f"({tag})", step)]


def _log_fit(values: list[float]) -> tuple[float, float] | None:
    """(slope per step, R²) of ln(value) against the step index, or None when a value is not positive."""
    if any(v <= 0 for v in values):
        return None
    ys = [math.log(v) for v in values]
    n = len(ys)
    mx, my = (n - 1) / 2, math.fsum(ys) / n
    sxx = math.fsum((i - mx) ** 2 for i in range(n))
    sxy = math.fsum((i - mx) * (y - my) for i, y in enumerate(ys))
    syy = math.fsum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return 0.0, 0.0
    slope = sxy / sxx
    return slope, (sxy * sxy) / (sxx * syy)


def _drift(st: TrainRuleSettings, step: int, tag: str, e: float, derived: dict[str, Any],
           baseline: list[float]) -> list[Finding]:
    if len(baseline) < st.min_samples:
        streak(derived, "entropy_drop", False)
        streak(derived, "entropy_rise", False)
        return []
    med = statistics.median(baseline)
    if med <= 0:
        return []
    out: list[Finding] = []
    if st.entropy_drop_fraction is not None:
        line = (1 - st.entropy_drop_fraction) * med
        n = streak(derived, "entropy_drop", e < line)
        if n >= st.entropy_drift_steps:
            out.append(finding("T3-entropy-collapse", "warn", "drift", tag, e, line,
                               f"entropy EMA {e:.3f} is {1 - e / med:.0%} below its {len(baseline)}-step median "
                               f"{med:.3f} (line {line:.3f}) for {n} steps at step {step} ({tag})", step))
    if st.entropy_rise_factor is not None:
        line = st.entropy_rise_factor * med
        # Above the run's early reference too: after a collapse the median is ~0, and a wiggle is "2× it".
        ref = (derived.get("entropy_ref") or {}).get("value")
        n = streak(derived, "entropy_rise", e >= line and (ref is None or e > ref))
        if n >= st.entropy_drift_steps:
            out.append(finding("T4-entropy-explosion", "critical", "drift", tag, e, line,
                               f"entropy EMA {e:.3f} is {e / med:.1f}× its {len(baseline)}-step median {med:.3f} "
                               f"(line {line:.3f}) for {n} steps at step {step} ({tag})", step))
    return out
