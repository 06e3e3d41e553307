"""The dashboard's panels: pure render functions `render_*(view) -> rich renderable`, no state, no I/O.

    render_header   the run and its state; step / target with a bar, ETA and goodput; chunk, job, checkpoint
    render_curves   one row per training curve (taller sparklines when given a height)
    render_gpus     nodes × GPUs, each cell coloured by its state
    render_alerts   the monitor's own state, the open alerts, the last resolved ones
    render_chunks   the chunk timeline
    render_tabs     one line naming every run shown
    render_footer   keys, when the folder was read, the daemon's heartbeat, missing sources

`screen.render_screen` places them in a frame; the data comes from `snapshot.load_view`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from justrl_hpc.monitor.dashboard.snapshot import ChunkView, RunView
from justrl_hpc.monitor.dashboard.sources import AlertView, Curve, GpuCell, NodeView, clock, duration

STATUS_STYLE = {
    "running": "bold green",
    "finished": "bold green",
    "pending": "bold yellow",
    "requeued": "bold yellow",
    "submitted": "bold cyan",
    "failed": "bold white on red",
    "stopped": "bold white on red",
    "verl folder": "bold cyan",
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


BARE = "absent: not a suite run (no run.yaml or ledger.jsonl)"


def _job_line(view: RunView) -> Text:
    line = Text(no_wrap=True, overflow="ellipsis")
    if view.bare:
        if view.metrics_from:
            line.append("metrics: ", "dim").append(view.metrics_from).append(" · ", "dim")
        line.append("chunks, goodput, job: absent (not a suite run)", "dim")
        return line
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
        elif job.state == "unreachable":
            line.append(" (Slurm unreachable)", "bold red")
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
    """One row per training curve: name, latest value (coloured by its healthy band), sparkline, band. With
    `height` > 1 (a large screen) each curve has a sparkline that many rows tall, its name, value and band
    stacked beside it."""
    if height > 1:
        return _tall_curves(view, height)
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
        table.add_row(Text(c.label, "bold" if c.tag else "dim"), value, Sparkline(c), band)
    return table


def _tall_curves(view: RunView, height: int) -> RenderableType:
    table = Table.grid(expand=True, padding=(0, 1))
    table.add_column(width=14, no_wrap=True)
    table.add_column(ratio=1)
    for c in view.curves:
        state = c.state
        head = Text(c.label + "\n", "bold" if c.tag else "dim")
        head.append(_fmt(c.latest, c.fmt) if c.latest is not None else "no data", CURVE_STATE_STYLE[state])
        if c.band is not None and c.band.context:
            head.append(f"\n{c.band.text()}", "dim")  # context (the paper's band), never a judgement
        elif c.band is not None and c.band.text():
            head.append(
                f"\n{'out of ' if state in ('low', 'high') else ''}band {c.band.text()}",
                "bold yellow" if state in ("low", "high") else "dim",
            )
        table.add_row(head, Sparkline(c, height=height))
        table.add_row("", "")
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
        if view.bare:
            return Text(f"GPUs: {BARE}: no node agent writes telemetry/ here", "dim")
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
        return Text(f"chunks: {BARE}" if view.bare else "no chunk has started yet", "dim")
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


def chunks_title(view: RunView) -> str:
    """The chunks panel's title: how many, and the time they lost in all."""
    lost = [c.lost_s for c in view.chunks if c.lost_s is not None]
    if not view.chunks:
        return "chunks"
    return f"chunks · {len(view.chunks)}" + (f", {duration(sum(lost))} lost" if lost else "")
