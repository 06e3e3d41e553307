"""The dashboard's frame: which panel goes where for a terminal of a given size, and the keys.

`render_screen(views, selected, width, height)` lays the panels out in named regions (a rich `Layout`;
`frame[GPUS]` is the GPU region): stacked sections on a small terminal (80×24 shows every section), two
columns of panels with taller curves from LARGE_MIN_WIDTH × LARGE_MIN_HEIGHT on. `parse_keys` turns terminal
input into key names and `select_run` moves the selection between runs. No state and no I/O: app.py reads
the terminal and runs the loop.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.layout import Layout
from rich.panel import Panel
from rich.text import Text

from justrl_hpc.monitor.dashboard.panels import (
    chunks_title,
    render_alerts,
    render_chunks,
    render_curves,
    render_footer,
    render_gpus,
    render_header,
    render_tabs,
)
from justrl_hpc.monitor.dashboard.snapshot import RunView

LARGE_MIN_WIDTH = 140  # two columns of panels from here on
LARGE_MIN_HEIGHT = 36
WIDE_CELLS_MIN_WIDTH = 96  # a GPU panel this wide gets two-line cells (util, temp / memory, power)

# The regions of a frame, named once. Top to bottom: the tabs (several runs only), the header, the panels,
# the footer; on a large screen TOP holds the curves beside SIDE (GPUs over alerts), the chunks below.
TABS, HEADER, FOOTER = "tabs", "header", "footer"
CURVES, GPUS, ALERTS, CHUNKS = "curves", "gpus", "alerts", "chunks"
TOP, SIDE = "top", "side"


def render_screen(
    views: Sequence[RunView], selected: int, width: int, height: int, interval: float | None = None
) -> Layout:
    """The whole frame for a console of width × height, showing views[selected]."""
    view = views[selected]
    parts: list[Layout] = []
    if len(views) > 1:
        parts.append(Layout(render_tabs(views, selected), name=TABS, size=1))
    parts.append(Layout(render_header(view), name=HEADER, size=3))
    avail = height - sum(p.size or 0 for p in parts) - 1
    blind = 1 if view.monitor is not None and view.monitor.blind else 0
    if width >= LARGE_MIN_WIDTH and height >= LARGE_MIN_HEIGHT:
        parts += _large(view, width, avail, blind)
    else:
        parts += _stacked(view, width, avail, blind)
    parts.append(Layout(render_footer(view, interval, len(views)), name=FOOTER, size=1))
    root = Layout(name="frame")
    root.split_column(*parts)
    return root


def _section(title: str, body: RenderableType) -> RenderableType:
    """A section of the stacked layout: a one-line title over its panel."""
    head = Text(f"─ {title} ", style="bold blue", no_wrap=True, overflow="ellipsis")
    return Group(head, body)


def _panel(body: RenderableType, title: str) -> Panel:
    """A boxed panel of the large layout."""
    return Panel(body, title=title, title_align="left")


def _gpu_rows(view: RunView, wide: bool) -> int:
    return max(1, sum(2 if wide and n.gpus else 1 for n in view.nodes))


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
    alerts = render_alerts(view, limit=shown_open, resolved=resolved)
    return [
        Layout(_section("training curves", render_curves(view)), name=CURVES, size=curves_h),
        Layout(_section("GPUs", render_gpus(view, wide=wide)), name=GPUS, size=gpu_h),
        Layout(_section("alerts", alerts), name=ALERTS, size=1 + alerts_lines),
        Layout(_section(chunks_title(view), render_chunks(view, limit=chunk_lines - 1)), name=CHUNKS),
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
    alerts = render_alerts(view, limit=max(1, top_h - gpu_h - 2 - blind - 3), resolved=3)
    side = Layout(name=SIDE)
    side.split_column(
        Layout(_panel(render_gpus(view, wide=wide), "GPUs"), name=GPUS, size=gpu_h),
        Layout(_panel(alerts, "alerts"), name=ALERTS),
    )
    top = Layout(name=TOP, size=top_h)
    top.split_row(Layout(_panel(render_curves(view, height=curve_h), "training curves"), name=CURVES), side)
    chunks = render_chunks(view, limit=max(1, avail - top_h - 3))
    return [top, Layout(_panel(chunks, chunks_title(view)), name=CHUNKS)]


# -- keys ------------------------------------------------------------------------------------------------------


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


def select_run(selected: int, key: str | None, runs: int) -> int:
    """The run shown after `key`: next and prev go round the runs; any other key keeps the selection."""
    if key == "next":
        return (selected + 1) % runs
    if key == "prev":
        return (selected - 1) % runs
    return selected
