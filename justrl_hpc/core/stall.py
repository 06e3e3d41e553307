"""When a run's steps count as stalled: one figure for the monitor's S1 alert and the chunk's hang dump.

The monitor alerts at it (monitor/rules/progress.py); the chunk, which alone may act on its own allocation,
takes the hung trainer's stacks at it (jobs/train/recovery.py, stacks.py). Both read the defaults here, so a run whose
settings are the defaults dumps stacks when S1 first warns. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

WARN_FACTOR = 3.0  # no new step for this × the p95 step time …
WARN_MIN_S = 1800.0  # … and at least this long
DEFAULT_STEP_S = 300.0  # the p95 before any step time is known
STARTUP_GRACE_S = 1800.0  # more for a trainer's first step (model load, vLLM start, validation)


def quantile(values: Sequence[float], q: float) -> float | None:
    xs = sorted(v for v in values if isinstance(v, int | float) and math.isfinite(v) and v > 0)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def limit_s(step_durations: Sequence[float], waiting_first: bool, factor: float = WARN_FACTOR,
            floor_s: float = WARN_MIN_S, default_step_s: float = DEFAULT_STEP_S,
            startup_grace_s: float = STARTUP_GRACE_S) -> float:
    """Seconds without a step after which the steps count as stalled: max(factor × p95 step, floor), plus the
    start-up grace while the trainer waits for its first step."""
    p95 = quantile(step_durations, 0.95) or default_step_s
    return max(factor * p95, floor_s) + (startup_grace_s if waiting_first else 0.0)
