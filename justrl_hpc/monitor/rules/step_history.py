"""The per-step history a training watch judges against: bounded, rewindable, and plain JSON to persist."""

from __future__ import annotations

import copy
import math
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from justrl_hpc.monitor.findings import Finding, Severity


class StepHistory:
    """The last `keep` steps, oldest first, each {"step", "wall", "values": {name: finite value}, "derived":
    the watch's state after that step}, with every metric's values indexed by name for its windows."""

    def __init__(self, keep: int, records: Iterable[dict[str, Any]] = ()) -> None:
        self.keep = keep
        self.records: list[dict[str, Any]] = copy.deepcopy(list(records))
        self._series: dict[str, list[tuple[int, float]]] = {}  # name → (step, value): an index of records
        self._trim()
        self._reindex()

    @property
    def last_step(self) -> int | None:
        return self.records[-1]["step"] if self.records else None

    def last_derived(self) -> dict[str, Any] | None:
        """A copy of the derived state after the newest step, for the next step to update."""
        return copy.deepcopy(self.records[-1]["derived"]) if self.records else None

    def window(self, name: str, n: int) -> list[float]:
        """The last n values of a metric before the step being judged (steps without it skipped)."""
        return [v for _s, v in self._series.get(name, ())[-n:]]

    def append(
        self, step: int, wall: float | None, values: dict[str, float], derived: dict[str, Any]
    ) -> None:
        self.records.append({"step": step, "wall": wall, "values": values, "derived": derived})
        for name, v in values.items():
            self._series.setdefault(name, []).append((step, v))
        self._trim()

    def rewind(self, step: int) -> None:
        """Forget steps ≥ `step`."""
        while self.records and self.records[-1]["step"] >= step:
            self.records.pop()
        for series in self._series.values():
            while series and series[-1][0] >= step:
                series.pop()

    def _trim(self) -> None:
        if len(self.records) > self.keep:
            del self.records[: len(self.records) - self.keep]
            first = self.records[0]["step"]
            for series in self._series.values():
                if series and series[0][0] < first:
                    del series[: bisect_left(series, (first, -math.inf))]

    def _reindex(self) -> None:
        self._series = {}
        for rec in self.records:
            for name, v in rec["values"].items():
                self._series.setdefault(name, []).append((rec["step"], v))


# -- the evidence every training rule keeps in a step's derived state ------------------------------------------


def streak(derived: dict[str, Any], key: str, holds: bool) -> int:
    """How many consecutive steps `key` has held, this one included (0 when it does not hold now)."""
    n = derived["streaks"].get(key, 0) + 1 if holds else 0
    if n:
        derived["streaks"][key] = n
    else:
        derived["streaks"].pop(key, None)
    return n


def ema(derived: dict[str, Any], name: str, x: float, alpha: float) -> float:
    prev = derived["ema"].get(name)
    value = x if prev is None else alpha * x + (1 - alpha) * prev
    derived["ema"][name] = value
    return value


def finding(rule: str, severity: Severity, subject: str, metric: str, value: Any, threshold: Any, msg: str,
            step: int) -> Finding:
    value = round(value, 4) if isinstance(value, float) else value
    threshold = round(threshold, 4) if isinstance(threshold, float) else threshold
    return Finding.of(rule, severity, subject, metric, value, threshold, msg, step=step)
