"""G12's host-RAM trend (rules/host.py) on constructed sample series: the dev cluster's saw-tooth of chunk
bring-ups is no leak (issue 22: the rehearsal's "host RAM rising 12.3 GiB/h; out of memory in ~89 min"), a
leak is one with or without that saw-tooth on top, and so is one long chunk's steady rise.

Every series below is constructed, not recorded: a 48 GiB host, 20 GiB used at rest, one sample every 5 s.
A "2-minute chunk" brings up 6 GiB in 60 s (Ray, verl's actors importing torch), holds it, and gives it back
at the chunk's end, when the next chunk's bring-up starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from justrl_hpc.monitor.rules.gpu_settings import GpuRuleSettings
from justrl_hpc.monitor.rules.host import rule_host_ram

GIB = 1 << 30
TOTAL = 48 * GIB
REST = 20.0  # GiB used with no chunk running
T0 = 1_800_000_000.0


def chunks(t: float) -> float:
    """GiB the 2-minute chunks hold t seconds into the series: 0 → 6 in 60 s, held, dropped at 120 s."""
    return 6.0 * min((t % 120.0) / 60.0, 1.0)


def leak(rate_gib_h: float) -> Callable[[float], float]:
    return lambda t: rate_gib_h * t / 3600.0


def series(used_gib: Callable[[float], float], until_s: float, every_s: float = 5.0) -> list[dict[str, Any]]:
    """Samples from T0 to T0 + until_s, RAM used as used_gib(seconds since T0)."""
    n = int(until_s // every_s)
    return [
        {
            "time": T0 + k * every_s,
            "host_stats": {"ram_used_bytes": int(used_gib(k * every_s) * GIB), "ram_total_bytes": TOTAL},
        }
        for k in range(n + 1)
    ]


def trend(samples: list[dict[str, Any]], st: GpuRuleSettings | None = None) -> list[Any]:
    now = samples[-1]["time"] + 1.0
    return [
        f for f in rule_host_ram("n1", samples, {}, now, st or GpuRuleSettings()) if f.rule == "G12-memory"
    ]


def bring_up_then_steady(t: float) -> float:
    """A long chunk starts 10 minutes in, takes 18 GiB in a minute and holds it (a little jitter on top)."""
    held = 18.0 * min(max(t - 600.0, 0.0) / 60.0, 1.0)
    return REST + held + 0.3 * math.sin(t / 37.0)


def steady_rise_with_steps(t: float) -> float:
    """One long chunk's steady state, its bring-up long past: 24 GiB/h of growth from 26 GiB, with each
    ~296 s training step's update holding 1 GiB more than its rollout (the production recipe's step time)."""
    return 26.0 + 24.0 * t / 3600.0 + (1.0 if t % 296.0 >= 148.0 else 0.0)


# name, RAM used (GiB) at t seconds into the series, seconds of series, expected (GiB/h, minutes to full)
# or None for no trend finding. The minutes to full count from the line through the lows plus the largest
# swing above it: when the next bring-up's peak reaches the host's 48 GiB.
CASES: list[tuple[str, Callable[[float], float], float, tuple[float, float] | None]] = [
    # Issue 22's saw-tooth: 30 minutes of 2-minute chunks, the window ending 0, 30, 60 and 90 s into a chunk
    # (at a low, on a rising edge, at the top, on the plateau).
    *(
        (f"2-minute chunks for 30 min, ending {e} s into one", lambda t: REST + chunks(t), 1800.0 + e, None)
        for e in (0, 30, 60, 90)
    ),
    # The rehearsal's: the window starts before the first bring-up (the run's start, or a chunk waiting in
    # the queue). The former line through the per-minute peaks read 14.8 GiB/h, full in ~89 min.
    (
        "5 idle minutes, then 2-minute chunks",
        lambda t: REST + (chunks(t - 300.0) if t >= 300 else 0.0),
        1500.0,
        None,
    ),
    # A long chunk's bring-up is one step of the floor, not a rise in every slice (the former rule: 48 GiB/h,
    # full in ~13 min).
    ("a long chunk's bring-up, then its steady state", bring_up_then_steady, 1800.0, None),
    # Leaks: 12 GiB/h from 20 GiB is 26 GiB after 30 min: full in (48 - 26) / 12 h = 110 min; with the
    # chunks' 6 GiB on top, the next peak is full in (48 - 26 - 6) / 12 h = 80 min, a minute sooner for each
    # 60 s the series runs on.
    ("a steady leak of 12 GiB/h", lambda t: REST + leak(12.0)(t), 1800.0, (12.0, 110.0)),
    *(
        (
            f"12 GiB/h under 2-minute chunks, ending {e} s into one",
            lambda t: REST + leak(12.0)(t) + chunks(t),
            1800.0 + e,
            (12.0, 80.0 - e / 60),
        )
        for e in (0, 30, 90)
    ),
    # 26 + 12 = 38 GiB after 30 min, steps' 1 GiB on top: full in (48 - 38 - 1) / 24 h = 22.5 min.
    ("one long chunk rising 24 GiB/h through its steps", steady_rise_with_steps, 1800.0, (24.0, 22.5)),
]


@pytest.mark.parametrize(("name", "used", "until_s", "expected"), CASES, ids=[c[0] for c in CASES])
def test_host_ram_trend(
    name: str, used: Callable[[float], float], until_s: float, expected: tuple[float, float] | None
) -> None:
    found = trend(series(used, until_s))
    if expected is None:
        assert found == [], f"{name}: {[f.message for f in found]}"
        return
    rate, minutes = expected
    (f,) = found
    assert (f.key, f.severity, f.node) == ("G12-memory:n1:ram-trend", "warn", "n1")
    assert f.value == pytest.approx(rate, abs=0.05), f.message
    # The message's minutes, from `now` (one second after the last sample).
    assert f"rising {rate:.1f} GiB/h" in f.message, f.message
    got = int(f.message.rsplit("~", 1)[1].split()[0])
    assert abs(got - minutes) <= 1, f.message


def test_level_alarm_is_unchanged_and_wins_over_the_trend() -> None:
    """RAM used above 90 % of the host is the level alarm, as before, and the trend is not added to it."""
    samples = series(lambda t: REST + leak(12.0)(t) + chunks(t), 1800.0)
    samples[-1]["host_stats"]["ram_used_bytes"] = int(44 * GIB)  # 92 % of 48 GiB
    (f,) = trend(samples)
    assert (f.key, f.threshold) == ("G12-memory:n1:ram", 0.9) and "92% used" in f.message


def test_too_short_a_series_projects_nothing() -> None:
    """Under trend_min_span_s (10 min) of samples, even a fast leak waits."""
    assert trend(series(lambda t: REST + leak(60.0)(t), 590.0)) == []
    assert trend(series(lambda t: REST + leak(60.0)(t), 610.0))


def test_a_slice_shorter_than_the_chunks_misses_their_lows() -> None:
    """ram_trough_s must be longer than RAM's cycle: a 60 or 90 s slice can lie wholly on a 2-minute chunk's
    plateau, its low is no low, the floor zigzags and the leak under the chunks goes unreported (silent, not
    false); from one cycle (120 s) up, each slice holds a chunk's low and the leak is found."""
    leaky = series(lambda t: REST + leak(12.0)(t) + chunks(t), 1800.0)
    for width in (60.0, 90.0):
        assert trend(leaky, GpuRuleSettings(ram_trough_s=width)) == [], width
    for width in (120.0, 600.0):
        (f,) = trend(leaky, GpuRuleSettings(ram_trough_s=width))
        assert f.value == pytest.approx(12.0, abs=0.05), width
