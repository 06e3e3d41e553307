"""`justrl-monitor [RUN …]`: the terminal dashboard of one or more runs (rich `Live`, refreshed every few s).

    justrl-monitor                       every run under ./runs/
    justrl-monitor RUN [RUN …]           runs by folder or by name under ./runs/
    justrl-monitor --once RUN            print one frame and exit (scripts, tests, the README)

Keys: q quits; tab / arrows switch runs; r reloads now. It only reads the run folder (see view.py), so it
is safe to leave open on a login node for the whole run. The data comes from `view.load_view`; this module
holds only render functions (`render_*(view) -> rich renderable`, no state) and the loop.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from justrl_hpc.errors import UserError, cli_entry
from justrl_hpc.monitor.view import (
    AlertView,
    ChunkView,
    Curve,
    GpuCell,
    NodeView,
    RunView,
    ViewCache,
    clock,
    duration,
    find_runs,
    load_view,
)

DEFAULT_INTERVAL_S = 5.0
MIN_INTERVAL_S = 0.5
LARGE_MIN_WIDTH = 140  # two columns of panels from here on
LARGE_MIN_HEIGHT = 36
WIDE_CELLS_MIN_WIDTH = 96  # a GPU panel this wide gets two-line cells (util, temp / memory, power)

STATUS_STYLE = {
    "running": "bold green",
    "finished": "bold green",
    "pending": "bold yellow",
    "requeued": "bold yellow",
    "submitted": "bold cyan",
    "failed": "bold white on red",
    "stopped": "bold white on red",
}
SEVERITY_STYLE = {"critical": "bold white on red", "warn": "bold black on yellow", "info": "bold cyan"}
SEVERITY_TAG = {"critical": "CRIT", "warn": "WARN", "info": "INFO"}
CELL_STYLE = {
    "ok": "black on green",
    "idle": "white on blue",
    "warm": "black on yellow",
    "hot": "bold white on red",
    "busy-low-power": "bold white on magenta",
    "mem-full": "black on cyan",
    "error": "bold white on red",
    "na": "dim",
}
CURVE_STATE_STYLE = {
    "ok": "green",
    "low": "bold yellow",
    "high": "bold yellow",
    "nan": "bold red",
    "none": "dim",
}
BLOCKS = " ▁▂▃▄▅▆▇█"
# chunk endings that are part of the plan (chunk.py's stop reasons); any other ending is a failure
PLANNED_ENDINGS = ("time-limit", "preempted", "save-now", "sigterm", "signal")


# -- sparklines ------------------------------------------------------------------------------------------------


def resample(values: Sequence[float], width: int) -> list[float]:
    """At most `width` points: the mean of equal slices (a non-finite value poisons its slice, so a NaN
    stays visible however long the run)."""
    if width <= 0:
        return []
    if len(values) <= width:
        return list(values)
    out = []
    for i in range(width):
        part = values[i * len(values) // width : (i + 1) * len(values) // width] or [values[-1]]
        out.append(sum(part) / len(part) if all(math.isfinite(v) for v in part) else math.nan)
    return out


class Sparkline:
    """A sparkline `height` rows tall that fills the width it is given (newest at the right). Points outside
    the band are drawn in the warning colour, non-finite ones as a red `!`."""

    def __init__(self, curve: Curve, height: int = 1, style: str = "cyan") -> None:
        self.curve = curve
        self.height = max(1, height)
        self.style = style

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(1, options.max_width)
        points = resample(self.curve.values, width)
        finite = [v for v in points if math.isfinite(v)]
        if not finite:  # nothing yet (the value beside it says "no data"), or nothing but NaN
            yield Text("!" * len(points), style="bold red")
            return
        lo, hi = min(finite), max(finite)
        levels = self.height * 8
        rows = [Text() for _ in range(self.height)]
        pad = width - len(points)
        for r in rows:
            r.append(" " * pad)
        for v in points:
            if not math.isfinite(v):
                for i, r in enumerate(rows):
                    r.append("!" if i == self.height - 1 else " ", style="bold red")
                continue
            level = 1 + round((v - lo) / (hi - lo) * (levels - 1)) if hi > lo else levels // 2
            band = self.curve.band.judge(v) if self.curve.band is not None else "ok"
            style = self.style if band == "ok" else "yellow"
            for i, r in enumerate(rows):
                floor = (self.height - 1 - i) * 8  # levels below this row
                fill = min(8, max(0, level - floor))
                r.append(BLOCKS[fill], style=style)
        yield from rows


# -- panels ----------------------------------------------------------------------------------------------------


def _fmt(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return format(value, fmt)


def _model_name(model: str | None) -> str:
    """The model's own name: the last part of a hub id or a local path (two parts when the last is a
    generic folder name such as `model`)."""
    if not model:
        return "-"
    parts = [p for p in model.rstrip("/").split("/") if p] or [model]
    return "/".join(parts[-2:]) if len(parts[-1]) < 8 else parts[-1]


class Bar:
    """A progress bar that fills its width and still reads without colour (a --once frame in a README)."""

    def __init__(self, fraction: float | None) -> None:
        self.fraction = fraction

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(1, options.max_width)
        done = 0 if self.fraction is None else round(max(0.0, min(1.0, self.fraction)) * width)
        yield Text.assemble(("━" * done, "green"), ("─" * (width - done), "dim"))


def render_header(view: RunView) -> RenderableType:
    """Three lines: the run and its state; step / target with a bar and ETA; chunk, job and checkpoint."""
    grid = Table.grid(expand=True)
    grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    grid.add_column(justify="right", no_wrap=True)
    title = Text.assemble(
        (view.name, "bold"), (" · ", "dim"), view.recipe or "-", (" · ", "dim"), _model_name(view.model)
    )
    status = Text(f" {view.status.upper()} ", style=STATUS_STYLE.get(view.status, "dim"))
    if view.status_reason:
        status = Text.assemble(status, (f" {view.status_reason}", "dim"))
    grid.add_row(title, status)

    bar = Table.grid(expand=True, padding=(0, 1))
    bar.add_column(no_wrap=True)
    bar.add_column(ratio=1)
    bar.add_column(no_wrap=True)
    step = "-" if view.step is None else f"{view.step:,}"
    target = "?" if view.target_steps is None else f"{view.target_steps:,}"
    pct = "" if view.progress is None else f"{100 * view.progress:.1f}%"
    rate = "" if view.step_s is None else f"{view.step_s:,.1f} s/step"
    eta = f"ETA {duration(view.eta_s)}" if view.eta_s else ("" if view.status != "finished" else "done")
    good = "" if view.goodput is None else f"goodput {100 * view.goodput:.0f}%"
    bar.add_row(
        Text.assemble(("step ", "dim"), (step, "bold"), f"/{target}"),
        Bar(view.progress),
        Text("  ".join(x for x in (pct, rate, eta, good) if x)),
    )
    return Group(grid, bar, _job_line(view))


def _job_line(view: RunView) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append("chunk ", "dim").append(str(view.chunk or "-"))
    job = view.job
    if job is None:
        line.append(" · no job yet", "dim")
    else:
        line.append(" · job ", "dim").append(job.job_id, "bold")
        if job.from_slurm:
            line.append(f" {job.state}", {"RUNNING": "green", "PENDING": "yellow"}.get(job.state, "red"))
        elif view.status in ("finished", "failed"):
            line.append(" (ended)", "dim")
        elif job.state == "asking":
            line.append(" (asking Slurm)", "dim")
        else:
            line.append(" (no Slurm)", "dim")  # scontrol did not answer: what follows is the ledger's
        if job.state == "PENDING" and job.reason:
            line.append(f" ({job.reason})", "yellow")
        if job.nodes:
            line.append(" on ", "dim").append(job.nodes)
        if job.time_left_s is not None:
            line.append(" · ", "dim")
            line.append(
                f"{duration(job.time_left_s)} left", "bold" if job.time_left_s > 600 else "bold yellow"
            )
    line.append(" · ", "dim")
    if view.ckpt_step is None:
        line.append("no checkpoint yet", "dim")
    else:
        line.append("ckpt ", "dim").append(f"{view.ckpt_step:,}")
        line.append(f", {duration(view.ckpt_age_s)} ago", "dim")
    return line


def render_curves(view: RunView, height: int = 1) -> RenderableType:
    """One row per training curve: name, latest value (coloured by its healthy band), sparkline, band."""
    table = Table.grid(expand=True, padding=(0, 1))
    table.add_column(width=12, no_wrap=True)
    table.add_column(width=9, justify="right", no_wrap=True)
    table.add_column(ratio=1)
    table.add_column(width=12, no_wrap=True)
    for c in view.curves:
        state = c.state
        value = Text(_fmt(c.latest, c.fmt) if c.latest is not None else "no data", CURVE_STATE_STYLE[state])
        band = Text(c.band.text() if c.band else "", "dim")
        if state in ("low", "high"):
            band = Text(f"{state}! {c.band.text() if c.band else ''}", "bold yellow")
        table.add_row(Text(c.label, "bold" if c.tag else "dim"), value, Sparkline(c, height=height), band)
    return table


def _gpu_summary(node: NodeView) -> str:
    temps = [g.temp for g in node.gpus if g.temp is not None]
    power = [g.power for g in node.gpus if g.power is not None]
    used = [g.mem_used_mib for g in node.gpus if g.mem_used_mib is not None]
    total = [g.mem_total_mib for g in node.gpus if g.mem_total_mib is not None]
    parts = []
    if temps:
        parts.append(f"{min(temps):.0f}–{max(temps):.0f}°C")
    if power:
        parts.append(f"{sum(power) / 1000:.1f}kW")
    if used and total:
        parts.append(f"mem {sum(used) / 1024:.0f}/{sum(total) / 1024:.0f}G")
    return " ".join(parts)


def _node_label(node: NodeView, short: bool = False) -> Text:
    """What is wrong with a node as a whole (silent agent, NVML failing), or that its agent stopped."""
    if node.state == "silent":
        return Text(f"SILENT {duration(node.age_s)}", "bold white on red")
    if node.state == "error" or (short and node.nvml_error):
        style = "bold white on red" if node.state == "error" else "bold red"
        return Text("NVML ERROR" if short else f"NVML {node.nvml_error}", style)
    if node.state == "stopped":
        return Text("stopped" if short else f"stopped {duration(node.age_s)} ago", "dim")
    if node.nvml_error:
        return Text(f"NVML {node.nvml_error}", "bold red")
    return Text("")


def _cell_text(g: GpuCell, wide: bool, dim: bool) -> Text:
    style = CELL_STYLE.get(g.state, "")
    if dim:
        style = "dim"
    if g.state == "error":
        word = "LOST" if g.error == "GPU_IS_LOST" else "ERR"
        if not wide:
            return Text(f"{word:^4}", style)
        return Text(f"{word:^9}\n{'' if word == 'LOST' else (g.error or '')[:9]:^9}", style)
    util = "n/a" if g.util is None else f"{g.util:.0f}%"
    if not wide:
        return Text(f"{util:>4}", style)
    temp = "" if g.temp is None else f"{g.temp:.0f}°"
    mem = "" if g.mem_used_mib is None else f"{g.mem_used_mib / 1024:.0f}G"
    power = "" if g.power is None else f"{g.power:.0f}W"
    return Text(f"{util:>4} {temp:>4}\n{mem:>4} {power:>4}", style)


def render_gpus(view: RunView, wide: bool = False) -> RenderableType:
    """Nodes × GPUs: each cell is coloured by its state; a silent node or an NVML error says so in red
    before anything else on its row (under the node's name when `wide`). `wide` cells have two lines
    (utilisation and temperature / memory and power)."""
    if not view.nodes:
        return Text("no telemetry (no node agent has written to telemetry/ yet)", "dim")
    table = Table.grid(padding=(0, 1), expand=True)
    host_w = max(len(n.host) for n in view.nodes)
    if wide:
        host_w = max(host_w, *(len(_node_label(n, short=True)) for n in view.nodes))
    table.add_column(no_wrap=True, style="bold", width=min(14, host_w))
    gpu_count = max((len(n.gpus) for n in view.nodes), default=0)
    for _ in range(gpu_count):
        table.add_column(no_wrap=True, width=9 if wide else 4)
    table.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    for node in view.nodes:
        label = _node_label(node)
        host: RenderableType = node.host
        if wide and node.gpus and label.plain:  # the state under the name, where no cell can crowd it out
            host = Text.assemble((node.host, "bold"), "\n", _node_label(node, short=True))
            label = Text(f"NVML {node.nvml_error}", "bold red") if node.nvml_error else Text("")
        if not node.gpus:
            what = Text("no GPUs" if not node.nvml_error else "", "dim")
            if node.cpu_percent is not None:
                what.append(f"  cpu {node.cpu_percent:.0f}%", "dim")
            if node.ram_used_bytes is not None and node.ram_total_bytes:
                what.append(
                    f"  ram {node.ram_used_bytes / 2**30:.1f}/{node.ram_total_bytes / 2**30:.0f}G", "dim"
                )
            cells: list[RenderableType] = [Text("")] * gpu_count
            table.add_row(host, *cells, Text.assemble(label, " ", what) if label.plain else what)
            continue
        dim = node.state in ("silent", "stopped")
        cells = [_cell_text(g, wide, dim) for g in node.gpus]
        cells += [Text("")] * (gpu_count - len(cells))
        # wide cells carry temperature and power themselves; the row's summary would only be cut off
        summary = Text("" if wide else _gpu_summary(node), "dim")
        table.add_row(
            host, *cells, Text.assemble(label, "\n" if wide else " ", summary) if label.plain else summary
        )
    return table


def render_alerts(view: RunView, limit: int = 4, resolved: int = 0) -> RenderableType:
    """The monitor's own state first (a blind monitor must not look healthy), then the open alerts by
    severity, then the last resolved ones."""
    lines: list[RenderableType] = []
    mon = view.monitor
    if mon is not None and mon.blind:
        lines.append(Text(f"⚠ {mon.text}", "bold white on red", no_wrap=True, overflow="ellipsis"))
    shown = view.open_alerts[:limit]
    for a in shown:
        lines.append(_alert_line(a, view.now))
    if len(view.open_alerts) > len(shown):
        lines.append(Text(f"… and {len(view.open_alerts) - len(shown)} more open", "yellow"))
    if not view.open_alerts:
        lines.append(Text("no open alerts", "green"))
    for a in view.resolved_alerts[:resolved]:
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append("resolved ", "dim green").append(a.rule, "dim").append(f" {a.message}", "dim")
        line.append(f"  {clock(a.last_time)} after {duration(a.last_time - a.since)}", "dim")
        lines.append(line)
    return Group(*lines)


def _alert_line(a: AlertView, now: float) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(
        f"{SEVERITY_TAG.get(a.severity, a.severity.upper()[:4]):<4}", SEVERITY_STYLE.get(a.severity, "")
    )
    line.append(f" since {clock(a.since)} ({duration(now - a.since)}) ", "dim")
    line.append(a.rule, "bold").append(f" {a.message}")
    return line


def render_chunks(view: RunView, limit: int = 8) -> RenderableType:
    """The chunk timeline, newest last: start, end, steps done, why it ended, time lost."""
    if not view.chunks:
        return Text("no chunk has started yet", "dim")
    table = Table(box=None, padding=(0, 1), expand=True, show_edge=False, header_style="dim")
    for name, kw in (
        ("#", {"justify": "right"}),
        ("job", {}),
        ("start", {}),
        ("end", {}),
        ("wall", {"justify": "right"}),
        ("steps", {"justify": "right"}),
        ("ended", {"ratio": 1, "overflow": "ellipsis"}),
        ("lost", {"justify": "right"}),
    ):
        table.add_column(name, no_wrap=True, **kw)
    rows = view.chunks[-limit:] if limit > 0 else []
    for c in rows:
        table.add_row(*_chunk_row(c, view.now))
    return table


def _chunk_row(c: ChunkView, now: float) -> list[RenderableType]:
    running = c.end is None
    wall = (now if running else c.end or now) - c.start if c.start is not None else None
    steps = "-"
    if c.last_step is not None:
        steps = f"{c.start_step or 0}→{c.last_step} +{c.steps_done}"
    ended_style = (
        "green" if c.ended in ("finished", "running") else ("yellow" if c.ended in PLANNED_ENDINGS else "red")
    )
    return [
        str(c.chunk),
        c.job_id or "-",
        clock(c.start),
        "running" if running else clock(c.end),
        duration(wall),
        steps,
        Text(c.ended, ended_style),
        "-" if c.lost_s is None else duration(c.lost_s),
    ]


def render_tabs(views: Sequence[RunView], selected: int) -> RenderableType:
    """One line naming every run shown; ⚠ marks a run with a critical alert or a blind monitor."""
    line = Text(no_wrap=True, overflow="ellipsis")
    for i, v in enumerate(views):
        step = "-" if v.step is None else str(v.step)
        trouble = any(a.severity == "critical" for a in v.open_alerts) or (
            v.monitor is not None and v.monitor.blind
        )
        label = f" {v.name} {step}/{v.target_steps or '?'} {v.status}{' ⚠' if trouble else ''} "
        line.append(label, "bold reverse" if i == selected else "dim")
        line.append(" ")
    return line


def render_footer(view: RunView, interval: float | None, runs: int) -> RenderableType:
    """Keys, when the folder was read, the monitor daemon's heartbeat, and any source that is missing."""
    line = Text(no_wrap=True, overflow="ellipsis", style="dim")
    line.append("q quit")
    if runs > 1:
        line.append(" · tab/←→ switch run")
    line.append(f" · read {time.strftime('%H:%M:%S', time.localtime(view.now))}")
    if interval:
        line.append(f" every {interval:g}s")
    mon = view.monitor
    if mon is not None:
        line.append(" · ")
        line.append(mon.text, "bold red" if mon.blind else "dim")
    if view.notes:
        line.append(" · " + "; ".join(view.notes))
    return line


def _section(title: str, body: RenderableType) -> RenderableType:
    head = Text(f"─ {title} ", style="bold blue", no_wrap=True, overflow="ellipsis")
    return Group(head, body)


def _chunks_title(view: RunView) -> str:
    lost = [c.lost_s for c in view.chunks if c.lost_s is not None]
    if not view.chunks:
        return "chunks"
    return f"chunks · {len(view.chunks)}" + (f", {duration(sum(lost))} lost" if lost else "")


def _gpu_rows(view: RunView, wide: bool) -> int:
    return max(1, sum(2 if wide and n.gpus else 1 for n in view.nodes))


def render_screen(
    views: Sequence[RunView], selected: int, width: int, height: int, interval: float | None = None
) -> RenderableType:
    """The whole frame for a console of width × height: stacked sections on a small terminal (80×24 shows
    every section), two columns of panels with taller curves on a large one."""
    view = views[selected]
    parts: list[Layout] = []
    if len(views) > 1:
        parts.append(Layout(render_tabs(views, selected), size=1))
    parts.append(Layout(render_header(view), size=3))
    avail = height - sum(p.size or 0 for p in parts) - 1
    blind = 1 if view.monitor is not None and view.monitor.blind else 0
    if width >= LARGE_MIN_WIDTH and height >= LARGE_MIN_HEIGHT:
        parts += _large(view, width, avail, blind)
    else:
        parts += _stacked(view, width, avail, blind)
    parts.append(Layout(render_footer(view, interval, len(views)), size=1))
    root = Layout()
    root.split_column(*parts)
    return root


def _stacked(view: RunView, width: int, avail: int, blind: int) -> list[Layout]:
    """Sections one under the other, each as tall as it needs while there is room: first every curve and
    node, then the open alerts (at least one line), then the chunks, then the last resolved alerts."""
    wide = width >= WIDE_CELLS_MIN_WIDTH
    curves_h = 1 + len(view.curves)
    if curves_h + 1 + _gpu_rows(view, wide) + 2 + 4 > avail:
        wide = False
    gpu_h = 1 + _gpu_rows(view, wide)
    open_want = blind + max(1, len(view.open_alerts))
    chunks_want = 1 + max(1, len(view.chunks))  # table header + rows
    left = avail - curves_h - gpu_h - 2  # two section titles below
    alerts_lines = max(1, min(open_want, left - min(chunks_want, 3)))
    left -= alerts_lines
    chunk_lines = max(1, min(chunks_want, left))
    left -= chunk_lines
    resolved = max(0, min(len(view.resolved_alerts), 3, left))
    alerts_lines += resolved
    shown_open = max(1, alerts_lines - resolved - blind)
    return [
        Layout(_section("training curves", render_curves(view)), size=curves_h),
        Layout(_section("GPUs", render_gpus(view, wide=wide)), size=gpu_h),
        Layout(
            _section("alerts", render_alerts(view, limit=shown_open, resolved=resolved)),
            size=1 + alerts_lines,
        ),
        Layout(_section(_chunks_title(view), render_chunks(view, limit=chunk_lines - 1))),
    ]


def _large(view: RunView, width: int, avail: int, blind: int) -> list[Layout]:
    """Curves (taller sparklines) on the left; GPUs and alerts on the right; the chunk timeline below, as
    tall as its rows (up to 20) need."""
    n = max(1, len(view.curves))
    chunk_h = 3 + max(1, min(len(view.chunks), 20))
    top_h = max(12, avail - chunk_h)
    per_curve = (top_h - 2) // n
    curve_h = min(6, per_curve - 1) if per_curve >= 4 else 1  # a tall curve needs its 3-line label
    half = width // 2 - 4
    wide = half >= WIDE_CELLS_MIN_WIDTH - 2
    gpu_h = min(top_h - 5, _gpu_rows(view, wide) + 2)
    right = Layout()
    right.split_column(
        Layout(Panel(render_gpus(view, wide=wide), title="GPUs", title_align="left"), size=gpu_h),
        Layout(
            Panel(
                render_alerts(view, limit=max(1, top_h - gpu_h - 2 - blind - 3), resolved=3),
                title="alerts",
                title_align="left",
            )
        ),
    )
    top = Layout(size=top_h)
    top.split_row(
        Layout(Panel(_spaced_curves(view, curve_h), title="training curves", title_align="left")), right
    )
    chunks = Layout(
        Panel(
            render_chunks(view, limit=max(1, avail - top_h - 3)),
            title=_chunks_title(view),
            title_align="left",
        )
    )
    return [top, chunks]


def _spaced_curves(view: RunView, height: int) -> RenderableType:
    if height <= 1:
        return render_curves(view)
    table = Table.grid(expand=True, padding=(0, 1))
    table.add_column(width=14, no_wrap=True)
    table.add_column(ratio=1)
    for c in view.curves:
        state = c.state
        head = Text(c.label + "\n", "bold" if c.tag else "dim")
        head.append(_fmt(c.latest, c.fmt) if c.latest is not None else "no data", CURVE_STATE_STYLE[state])
        if c.band is not None and c.band.text():
            head.append(
                f"\n{'out of ' if state in ('low', 'high') else ''}band {c.band.text()}",
                "bold yellow" if state in ("low", "high") else "dim",
            )
        table.add_row(head, Sparkline(c, height=height))
        table.add_row("", "")
    return table


# -- the loop --------------------------------------------------------------------------------------------------


KEYS = {
    b"\x1b[C": "next",
    b"\x1bOC": "next",
    b"\x1b[B": "next",
    b"\x1bOB": "next",
    b"\t": "next",
    b"\x1b[D": "prev",
    b"\x1bOD": "prev",
    b"\x1b[A": "prev",
    b"\x1bOA": "prev",
    b"\x1b[Z": "prev",
    b"q": "quit",
    b"Q": "quit",
    b"r": "reload",
}


def parse_keys(data: bytes) -> list[str]:
    """Key names in a burst of terminal input (arrows arrive as escape sequences)."""
    out = []
    i = 0
    while i < len(data):
        for seq in sorted(KEYS, key=len, reverse=True):
            if data.startswith(seq, i):
                out.append(KEYS[seq])
                i += len(seq)
                break
        else:
            i += 1
    return out


class KeyReader:
    """Reads keys from the terminal in cbreak mode on a thread; the terminal's settings are restored on
    exit, whatever ends the dashboard."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.keys: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._saved: Any = None
        self._thread = threading.Thread(target=self._loop, name="keys", daemon=True)

    def __enter__(self) -> KeyReader:
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)  # ISIG stays on: ctrl-c still interrupts
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import termios

        self._stop.set()
        self._thread.join(timeout=1.0)
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def _loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 64)
            except OSError:
                return
            if not data:
                return
            for key in parse_keys(data):
                self.keys.put(key)


def _raise_exit(signum: int, _frame: Any) -> NoReturn:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Readers log corrupt lines as warnings; on a full-screen display they would tear the frame."""
    logger = logging.getLogger("justrl_hpc")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    before = logger.propagate
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = before


def _live(runs: list[Path], interval: float) -> int:
    from rich.live import Live

    wake: queue.Queue[str] = queue.Queue()
    cache = ViewCache(slurm_in_background=True, on_update=lambda: wake.put("reload"))
    console = Console()
    selected = 0
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    signal.signal(signal.SIGTERM, _raise_exit)
    with contextlib.suppress(AttributeError, ValueError):  # SIGWINCH: redraw at the new size at once
        # only a flag: a handler that took the queue's lock could deadlock the thread it interrupts
        signal.signal(signal.SIGWINCH, lambda *_: _RESIZED.append(True))
    keys = KeyReader(fd) if fd is not None else contextlib.nullcontext()
    with _quiet_logs(), Live(console=console, screen=True, auto_refresh=False) as live, keys as reader:
        source = reader.keys if isinstance(reader, KeyReader) else wake
        views: list[RunView] = []
        next_load = 0.0
        while True:
            if time.monotonic() >= next_load:
                views = [load_view(r, cache) for r in runs]
                next_load = time.monotonic() + interval
            width, height = console.size
            live.update(render_screen(views, selected, width, height, interval), refresh=True)
            key = _next_key(source, wake, next_load)
            if key == "quit":
                return 0
            if key == "next":
                selected = (selected + 1) % len(runs)
            elif key == "prev":
                selected = (selected - 1) % len(runs)
            elif key == "reload":
                next_load = 0.0


_RESIZED: list[bool] = []  # SIGWINCH arrived since the last frame


def _next_key(source: queue.Queue[str], wake: queue.Queue[str], until: float) -> str | None:
    """The next key (or resize, or Slurm's answer) before `until` (monotonic), else None."""
    while True:
        if _RESIZED:
            _RESIZED.clear()
            return "resize"
        with contextlib.suppress(queue.Empty):
            return wake.get_nowait()
        left = until - time.monotonic()
        if left <= 0:
            return None
        try:
            return source.get(timeout=min(left, 0.25))
        except queue.Empty:
            continue


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see `justrl-monitor --help`", "justrl-monitor")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(
        prog="justrl-monitor",
        description="The terminal dashboard of one or more runs; it only reads the run folders.",
        epilog=(
            "keys: q quits · tab / arrows switch runs · r reloads now\n\n"
            "also: justrl-monitor daemon RUN [RUN …]   the alerting service (never touches the job)\n"
            "      justrl-monitor scan RUN             one pass over what is new; alerts as JSON lines"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folder or name under ./runs/ (default: all)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        help=f"seconds between reads (default {DEFAULT_INTERVAL_S:g})",
    )
    return p.parse_args(list(argv) if argv is not None else None)


def resolve_runs(names: Sequence[str], root: Path = Path("runs")) -> list[Path]:
    if not names:
        found = find_runs(root)
        if not found:
            raise UserError(f"no run folders under {root.resolve()}; pass a run folder", "RUN")
        return found
    out = []
    for name in names:
        for candidate in (Path(name), root / name):
            if (candidate / "run.yaml").is_file() or (candidate / "ledger.jsonl").is_file():
                out.append(candidate)
                break
        else:
            raise UserError(
                f"{name!r} is not a run folder (no run.yaml or ledger.jsonl there or under {root}/)", "RUN"
            )
    return out


@cli_entry
def run_tui(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.interval >= MIN_INTERVAL_S):
        raise UserError(f"must be at least {MIN_INTERVAL_S:g} seconds, got {args.interval:g}", "--interval")
    runs = resolve_runs(args.runs)
    if args.once:
        console = Console()
        cache = ViewCache()
        with _quiet_logs():
            views = [load_view(r, cache) for r in runs]
        width, height = console.size
        for i in range(len(views)):
            console.print(render_screen(views, i, width, height))
        return 0
    try:
        return _live(runs, args.interval)
    except KeyboardInterrupt:
        return 0  # ctrl-c is a normal way to leave a dashboard


if __name__ == "__main__":
    sys.exit(run_tui())
