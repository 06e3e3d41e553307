"""The monitor's shared vocabulary: what a rule finds and what a sink receives.

Rules are pure functions over what the collectors read; they return the Findings that hold *now*.
The daemon turns the set of findings into alert transitions (firing once per key, re-fired after a
cool-down while it lasts, resolved when it stops holding) and hands those Alerts to the sinks.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warn", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warn", "critical")


@dataclass
class Finding:
    """A condition that holds at this poll. `key` identifies it for de-duplication (rule + subject)."""

    rule: str
    severity: Severity
    key: str
    metric: str
    value: float | int | str | None
    threshold: float | int | str | None
    message: str
    step: int | None = None
    node: str | None = None
    gpu: int | None = None

    @classmethod
    def of(
        cls,
        rule: str,
        severity: Severity,
        subject: str,
        metric: str,
        value: float | int | str | None,
        threshold: float | int | str | None,
        message: str,
        **where: Any,
    ) -> Finding:
        """The finding of `rule` about `subject` (a host, a GPU, a metric): one de-duplication key per pair."""
        return cls(rule, severity, f"{rule}:{subject}", metric, value, threshold, message, **where)


@dataclass
class Alert:
    """A transition sent to the sinks: a finding that started (or re-fired) or ended."""

    run: str
    rule: str
    severity: Severity
    key: str
    metric: str
    value: float | int | str | None
    threshold: float | int | str | None
    message: str
    step: int | None = None
    node: str | None = None
    gpu: int | None = None
    state: Literal["firing", "resolved"] = "firing"
    time: float = field(default_factory=time.time)

    @classmethod
    def from_finding(
        cls, run: str, finding: Finding, state: Literal["firing", "resolved"] = "firing"
    ) -> Alert:
        return cls(run=run, state=state, **asdict(finding))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def one_line(self) -> str:
        where = "".join(
            f" {k}={v}"
            for k, v in (("step", self.step), ("node", self.node), ("gpu", self.gpu))
            if v is not None
        )
        return f"[{self.severity}] {self.run}: {self.rule} {self.state}{where}: {self.message}"
