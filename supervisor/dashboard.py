"""The live dashboard's views: the frame drawn while COMMAND runs, the summary after.

The model is supervisor/dashboard_state.py. Rendering happens on rich's
refresh thread (:class:`LiveView`, about four times a second), from a small
copy of the state taken under its lock, and never looks at more rows than it
shows; the tables are drawn by hand (:class:`_Grid`) because rich's Table
took ~20 ms a frame, time the tracer thread would wait for the GIL.
"""

from __future__ import annotations

import codecs
import io
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.cells import cell_len, get_character_cell_size, set_cell_size
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from supervisor.dashboard_state import (
    STREAM_END,
    Aggregate,
    DashState,
    KindCounts,
    Row,
    SessionInfo,
    Snapshot,
)
from supervisor.events import format_latency

__all__ = [
    "LiveView",
    "format_bytes",
    "plain_summary",
    "render_live",
    "render_summary",
    "shorten",
]

MODES = ("dns", "outgoing", "fs", "env", "incoming")
MAX_ROWS = 12  # recent calls shown live: the app's own output needs the rest of the screen
TOP_PER_KIND = 5  # targets per kind in the summary
ERROR = "red"


# --- text helpers ---------------------------------------------------------------------------


def format_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def shorten(text: str, width: int) -> str:
    """Fit text in width cells, keeping the part that tells two calls apart.

    A path keeps its end (the file name and as many folders as fit:
    ``…/app/config.yaml``); anything else (a host and port, a DNS question)
    keeps its trailing ``:port`` or `` TYPE`` and loses the middle of the
    rest, since a name's start is its own and its end is the cluster's.
    """
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…" if width == 1 else ""
    if text.startswith("/") or ("/" in text and " " not in text):
        # Whole folders when they fill most of the room, else as much of the end as fits.
        parts = text.split("/")
        for i in range(1, len(parts)):
            tail = "…/" + "/".join(parts[i:])
            if cell_len(tail) <= width:
                if cell_len(tail) * 3 >= width * 2:
                    return tail
                break
        return "…" + _tail(text, width - 1)
    cut = max(text.rfind(":"), text.rfind(" "))
    suffix = text[cut:] if cut > 0 and len(text) - cut <= 8 else ""
    head = text[: len(text) - len(suffix)]
    room = width - cell_len(suffix) - 1
    if room < 2:
        return _head(text, width - 1) + "…"
    front = room - room // 3
    return _head(head, front) + "…" + _tail(head, room - front) + suffix


def _head(text: str, width: int) -> str:
    used = 0
    for i, ch in enumerate(text):
        used += get_character_cell_size(ch)
        if used > width:
            return text[:i]
    return text


def _tail(text: str, width: int) -> str:
    return _head(text[::-1], width)[::-1]


def _result_text(result: str) -> str:
    return "ok" if result == "0" else result.lstrip("-")


def _modes_text(modes: dict[str, str]) -> Text:
    text = Text()
    for name in [*MODES, *sorted(set(modes) - set(MODES))]:
        if name in modes:
            if text:
                text.append("  ")
            text.append(f"{name} ", style="dim")
            text.append(modes[name], style="bold")
    return text


# --- rendering ---------------------------------------------------------------------------------

_GAP = 2  # blank cells between two columns
_BOLD = Style(bold=True)
Cell = str | Text


@dataclass(frozen=True)
class _Col:
    header: str
    justify: str = "left"
    flex: int = 0  # a share of the room the fixed columns leave; its cells are shortened
    drop: int = 0  # on a narrow terminal, the highest goes first


def _cell_len(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _fitted(cols: list[_Col], rows: list[tuple[list[Cell], str | None]], width: int, *,
            title: str | None = None, sections: Iterable[int] = ()) -> _Grid:
    """A table that never wraps: fixed columns as wide as their cells, flexible ones
    sharing the rest, each of their cells shortened by shorten().

    rich's own layout would wrap long cells or cut their informative end.
    """
    widths = [max([_cell_len(col.header)] + [_cell_len(cells[i]) for cells, _ in rows])
              for i, col in enumerate(cols)]
    while True:
        flex = [i for i, col in enumerate(cols) if col.flex]
        fixed = sum(w for i, w in enumerate(widths) if i not in flex)
        room = width - _GAP * (len(cols) - 1) - fixed
        victim = max(range(len(cols)), key=lambda i: cols[i].drop)
        if room >= 10 * len(flex) or not cols[victim].drop:
            break
        cols = cols[:victim] + cols[victim + 1:]
        del widths[victim]
        rows = [(cells[:victim] + cells[victim + 1:], style) for cells, style in rows]
    # Weighted max-min: a column that needs less than its share keeps what it needs,
    # and the others share the rest by weight.
    pending = list(flex)
    while pending:
        total = sum(cols[i].flex for i in pending)
        fits = [i for i in pending if widths[i] <= room * cols[i].flex // total]
        if not fits:
            for i in pending:
                widths[i] = max(6, room * cols[i].flex // total)
            break
        for i in fits:
            room -= widths[i]
            pending.remove(i)
    rows = [([shorten(c, w) if isinstance(c, str) and col.flex else c
              for c, col, w in zip(cells, cols, widths, strict=True)], style)
            for cells, style in rows]
    return _Grid(title, cols, widths, rows, frozenset(sections))


@dataclass
class _Grid:
    """A table drawn straight to segments, in rich's SIMPLE_HEAD look.

    rich's Table takes about 20 ms for one frame of the dashboard: on the
    refresh thread, four times a second, that is GIL time taken from the
    tracer. Our cells are single lines of known width, so this takes well
    under a millisecond. Cells are plain text, never markup: "[::1]:80" is an
    address, not a tag.
    """

    title: str | None
    cols: list[_Col]
    widths: list[int]
    rows: list[tuple[list[Cell], str | None]]
    sections: frozenset[int]  # rows followed by a blank line

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        if self.title:
            yield Segment(set_cell_size(self.title, min(width, cell_len(self.title))), _BOLD)
            yield Segment.line()
        yield from self._line(console, [Text(c.header) for c in self.cols], _BOLD, width)
        total = sum(self.widths) + _GAP * (len(self.widths) - 1)
        yield Segment("─" * min(total, width))
        yield Segment.line()
        for i, (cells, style) in enumerate(self.rows):
            yield from self._line(console, cells, console.get_style(style) if style else None,
                                  width)
            if i in self.sections:
                yield Segment.line()

    def _line(self, console: Console, cells: list[Cell], style: Style | None,
              width: int) -> Iterator[Segment]:
        line: list[Segment] = []
        for i, (cell, col, w) in enumerate(zip(cells, self.cols, self.widths, strict=True)):
            if i:
                line.append(Segment(" " * _GAP, style))
            text = cell.copy() if isinstance(cell, Text) else Text(cell)
            text.truncate(w, overflow="ellipsis")
            pad = Segment(" " * (w - text.cell_len), style)
            if col.justify == "right":
                line.append(pad)
            # Text.render leaves out the Text's own style: it is the cell's base.
            base = style
            if text.style:
                own = console.get_style(text.style)
                base = base + own if base else own
            line.extend(Segment(seg.text, base + seg.style if base and seg.style else
                                (seg.style or base)) for seg in text.render(console))
            if col.justify != "right":
                line.append(pad)
        if sum(seg.cell_length for seg in line) > width:
            line = Segment.adjust_line_length(line, width)
        yield from line
        yield Segment.line()


def render_live(state: DashState, now: float | None = None, *,
                rows: int | None = None) -> RenderableType:
    """The dashboard: header, counters, recent calls, failures gone by, open streams.

    With ``rows=None`` the recent calls get what is left of two thirds of the
    terminal's height, at most MAX_ROWS, so the app's output above stays in
    sight.
    """
    return _LiveRender(state.snapshot(now, rows or MAX_ROWS), rows)


class _LiveRender:
    """One frame. rich draws the frame again below every line printed above it,
    so the segments are kept: a burst of app output costs no new layout."""

    def __init__(self, snap: Snapshot, rows: int | None) -> None:
        self.snap = snap
        self.rows = rows
        self._drawn: tuple[tuple[int, int], list[Segment]] | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        size = (options.max_width, options.size.height)
        if self._drawn is None or self._drawn[0] != size:
            self._drawn = (size, list(console.render(self._layout(options), options)))
        yield from self._drawn[1]

    def _layout(self, options: ConsoleOptions) -> Group:
        snap, width = self.snap, options.max_width
        shown = {_row_key(r) for r in snap.rows}
        hidden = [r for r in snap.failures if _row_key(r) not in shown][-3:]
        rows = self.rows
        if rows is None:
            used = 4 + 7 + 3 + (len(hidden) + 1 if hidden else 0)
            if snap.streams:
                used += len(snap.streams) + 3 + (snap.stream_count > len(snap.streams))
            rows = min(MAX_ROWS, max(3, options.size.height * 2 // 3 - used))
        parts: list[RenderableType] = [
            _header(snap, width),
            _counters_grid(snap),
            _calls_table(snap.rows[-rows:], hidden, snap.session.started, width),
        ]
        if snap.streams:
            parts.append(_streams_table(snap, width))
        return Group(*parts)


def _row_key(row: Row) -> tuple[str, ...]:
    return (row.comm, row.syscall, row.target, row.via, row.result)


def _header(snap: Snapshot, width: int) -> Panel:
    status = Text()
    if snap.agent_status is not None:
        lost = not snap.agent_status.startswith("connected")
        status.append("   agent ", style="dim")
        status.append(snap.agent_status, style=ERROR if lost else "green")
        if snap.agent_rtt_ms is not None and not lost:
            status.append(f" rtt {snap.agent_rtt_ms:.1f} ms")
    end = snap.ended if snap.ended is not None else snap.now
    status.append("   ran " if snap.ended is not None else "   up ", style="dim")
    status.append(format_duration(end - snap.session.started))
    status.append("   events ", style="dim")
    status.append(f"{snap.events:,}")
    room = max(16, width - 4 - status.cell_len)  # 4: the panel's borders and padding
    lines = [Text(shorten(snap.session.target, room), style="bold") + status]
    if snap.session.modes:
        lines.append(_modes_text(snap.session.modes))
    return Panel(Group(*lines), title="mirrortrace", title_align="left", box=box.ROUNDED,
                 padding=(0, 1))


def _counters_grid(snap: Snapshot) -> _Grid:
    """Kinds across and counters down, so every kind fits in seven lines.

    The open streams' bytes so far count with the connects, so the totals move
    while a long transfer runs, not only when it ends.
    """
    kinds = list(snap.counts)
    counts = [snap.counts[k] for k in kinds]

    def line(values: list[int], fmt: Any = "{:,}".format, style: str | None = None) -> list:
        return [Text(fmt(v), style=(style if v else "dim")) for v in values]

    failed = line([c.failed for c in counts], style=ERROR)
    for cell, c in zip(failed, counts, strict=True):
        if c.broken:
            cell.append(f" +{c.broken} reset", style=ERROR)
    sent = [c.sent + (snap.stream_sent if k == "connect" else 0)
            for k, c in zip(kinds, counts, strict=True)]
    received = [c.received + (snap.stream_received if k == "connect" else 0)
                for k, c in zip(kinds, counts, strict=True)]
    cols = [_Col("")] + [_Col(kind, "right") for kind in kinds]
    rows: list[tuple[list[Cell], str | None]] = [
        (["diverted", *line([c.diverted for c in counts])], None),
        (["local", *line([c.local for c in counts])], None),
        (["failed", *failed], None),
        (["↑ sent", *line(sent, format_bytes)], None),
        (["↓ received", *line(received, format_bytes)], None),
    ]
    return _fitted(cols, rows, 10_000)


_CALL_COLS = [_Col("time", "right", drop=2), _Col("", "right"), _Col("pid/comm", drop=1),
              _Col("call"),
              _Col("asked for", flex=3), _Col("went", flex=2), _Col("result"),
              _Col("latency", "right")]


def _calls_table(rows: list[Row], hidden: list[Row], started: float, width: int) -> _Grid:
    """The latest calls; above a line, failures that scrolled out of them."""
    lines: list[tuple[list[Cell], str | None]] = []
    for row in hidden + rows:
        went = row.via
        if row.answer and row.answer.startswith("NOERROR "):  # a name: what it resolved to
            went = row.answer.removeprefix("NOERROR ")
        if row.syscall == STREAM_END:  # where it went is on the connect's row
            went = f"↑{format_bytes(row.sent)} ↓{format_bytes(row.received)}"
        cells: list[Cell] = [
            f"{row.ts - started:.3f}", Text(f"×{row.count}" if row.count > 1 else "", "cyan"),
            shorten(f"{row.comm}[{row.pid}]", 22), row.syscall, row.target, went,
            _result_text(row.result), format_latency(row.latency_us)]
        style = ERROR if row.failed else ("dim" if row.syscall == STREAM_END else None)
        lines.append((cells, style))
    if not lines:
        lines.append((["", "", "", "", Text("no diverted calls yet"), "", "", ""], "dim"))
    title = "recent calls"
    if hidden:
        title += f", after {len(hidden)} earlier failure{'s' if len(hidden) > 1 else ''}"
    return _fitted(_CALL_COLS, lines, width, title=title,
                   sections=[len(hidden) - 1] if hidden else [])


def _streams_table(snap: Snapshot, width: int) -> _Grid:
    cols = [_Col("to", flex=3), _Col("via", flex=2), _Col("pid/comm"),
            _Col("open", "right"), _Col("↑ sent", "right"), _Col("↓ received", "right")]
    rows: list[tuple[list[Cell], str | None]] = [
        ([s.target, s.via, shorten(f"{s.comm}[{s.pid}]", 22),
          format_duration(snap.now - s.opened), format_bytes(s.sent), format_bytes(s.received)],
         None) for s in snap.streams]
    more = snap.stream_count - len(snap.streams)
    if more > 0:
        rows.append(([Text(f"…and {more:,} more"), "", "", "", "", ""], "dim"))
    return _fitted(cols, rows, width, title=f"open streams ({snap.stream_count})")


# --- the summary ---------------------------------------------------------------------------------


def render_summary(state: DashState, now: float | None = None) -> RenderableType:
    """What stays on screen at exit: totals per kind and each kind's busiest targets.

    Built from events alone (no stream snapshot, no agent status), so that a
    replay of the --events file shows the same numbers as the live run.
    """
    session, ended, exit_status = state.ending()
    end = ended if ended is not None else (time.time() if now is None else now)
    return _SummaryRender(session, end, exit_status, state.counts(), state.aggregates(),
                          state.untracked_calls())


@dataclass
class _SummaryRender:
    session: SessionInfo
    end: float
    exit_status: int | None
    counts: dict[str, KindCounts]
    aggregates: list[Aggregate]
    untracked: dict[str, int]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        total = KindCounts()
        for c in self.counts.values():
            for name in KindCounts.__slots__:  # type: ignore[attr-defined]
                setattr(total, name, getattr(total, name) + getattr(c, name))
        status = Text(f"  {format_duration(self.end - self.session.started)}", style="dim")
        status.append(f"  {total.calls:,} calls")
        if self.exit_status is not None:
            status.append("  exit status ")
            status.append(str(self.exit_status), style=ERROR if self.exit_status else "green")
        title = Text("mirrortrace summary: ", style="bold")
        room = max(16, options.max_width - title.cell_len - status.cell_len)
        yield title + Text(shorten(self.session.target, room)) + status
        cols = [_Col("kind")] + [_Col(name, "right") for name in
                                 ("calls", "diverted", "local", "failed", "↑ sent",
                                  "↓ received")]
        rows: list[tuple[list[Cell], str | None]] = []
        for kind, c in [*self.counts.items(), ("total", total)]:
            failed = Text(f"{c.failed:,}", style=ERROR if c.failed else "")
            if c.broken:
                failed.append(f" +{c.broken} reset", style=ERROR)
            rows.append(([kind, f"{c.calls:,}", f"{c.diverted:,}", f"{c.local:,}", failed,
                          format_bytes(c.sent), format_bytes(c.received)],
                         "bold" if kind == "total" else (None if c.calls else "dim")))
        yield _fitted(cols, rows, options.max_width, sections=[len(rows) - 2])
        yield self._top_targets(options.max_width)

    def _top_targets(self, width: int) -> RenderableType:
        by_kind: dict[str, list[Aggregate]] = {}
        for agg in self.aggregates:
            by_kind.setdefault(agg.kind, []).append(agg)
        if not by_kind:
            return Text("no diverted calls", style="dim")
        cols = [_Col("kind"), _Col("asked for", flex=2), _Col("went", flex=1, drop=2),
                _Col("calls", "right"), _Col("failed", "right"), _Col("↑ sent", "right"),
                _Col("↓ received", "right"), _Col("avg", "right", drop=3),
                _Col("slowest", "right", drop=1)]
        rows: list[tuple[list[Cell], str | None]] = []
        ends: list[int] = []
        kinds = [k for k in self.counts if k in by_kind] + sorted(set(by_kind) - set(self.counts))
        for kind in kinds:
            group = by_kind[kind]
            # Ties broken by name, so the summary does not depend on the events' order.
            top = sorted(group, key=lambda a: (-a.weight, a.target, a.via))[:TOP_PER_KIND]
            for agg in top:
                failed = f"{agg.failed:,}" if agg.failed else ""
                if agg.errors:  # the commonest error, named
                    worst = max(agg.errors.items(), key=lambda kv: (kv[1], kv[0]))
                    failed += f" {worst[0].lstrip('-')}"
                avg = format_latency(agg.total_latency_us // agg.calls) if agg.calls else ""
                slowest = format_latency(agg.max_latency_us) if agg.calls else ""
                rows.append(([kind, agg.target, agg.via, f"{agg.calls:,}",
                              Text(failed, style=ERROR), format_bytes(agg.sent),
                              format_bytes(agg.received), avg, slowest], None))
            more = len(group) - len(top)
            lost = self.untracked.get(kind, 0)
            if more > 0 or lost:
                calls = sum(a.calls for a in group) - sum(a.calls for a in top) + lost
                # "+": targets that fell out of the table are not counted, their calls are
                what = f"…and {more:,}{'+' if lost else ''} more" if more > 0 else "…and more"
                rows.append((["", Text(what), "", f"{calls:,}", "", "", "", "", ""], "dim"))
            ends.append(len(rows) - 1)
        return _fitted(cols, rows, width, title="top targets", sections=ends[:-1])


def plain_summary(state: DashState, width: int = 100) -> str:
    """The summary as plain text, for --ui plain and logs."""
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False,
                      record=True, legacy_windows=False)
    console.print(render_summary(state))
    return console.export_text()


# --- the terminal -------------------------------------------------------------------------------


# Escape sequences an app's output may carry: colours (SGR, kept) and everything else
# (cursor moves, clears, titles: dropped, or they would draw over the view).
_OTHER_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-ln-~]"  # CSI other than SGR ("m")
    r"|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"  # OSC (window titles, hyperlinks)
    r"|\x1b[ -/]*[0-Z\\-~]"  # other escapes (ESC 7, ESC c, charset selection)
    r"|[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f]"  # other controls (\n and \t stay)
)
_SGR = re.compile(r"\x1b\[([0-9;:]*)m")
# What is left of an escape that is not a colour (cut short, or unknown): the ESC goes,
# or the terminal would read on into what follows (the view itself).
_STRAY_ESC = re.compile(r"\x1b(?!\[[0-9;:]*m)")


def app_lines(done: str, sgr: str) -> tuple[str, str]:
    """Complete lines of the app's output as they will be written above the view, and
    the colour state after them.

    Written as they are (rich's own parsing and wrapping cost ~30 µs a line, and a
    build log has hundreds of thousands), but made safe first: a line keeps only what
    follows its last \r (how a progress bar redraws itself, and the pty's \r\n), and
    escape sequences other than colours are dropped. Colours carry over: `sgr`, the
    state left by the previous lines, is set again first, and the lines end with a
    reset so the view below is drawn in its own colours.
    """
    if "\r" in done:
        done = "\n".join(line.rpartition("\r")[2] if "\r" in line else line
                         for line in (ln.rstrip("\r") for ln in done.split("\n")))
    done = _STRAY_ESC.sub("", _OTHER_ESCAPES.sub("", done))
    # The colour state after these lines: the SGR parameters since the last reset.
    state = sgr
    for params in _SGR.findall(done):
        if params in ("", "0") or params.startswith("0;"):
            state = params[2:]
        elif state and len(state) < 120:
            state = f"{state};{params}"
        else:
            state = params  # an app that never resets: keep its latest colour, bounded
    prefix = f"\x1b[{sgr}m" if sgr else ""
    suffix = "\x1b[0m" if state else ""
    if suffix and done.endswith("\n"):
        done = done[:-1] + suffix + "\n"
    return prefix + done, state


class _Verbatim:
    """Text written as it is (see app_lines), for Live to put above the view."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Segment(self.text)


class LiveView:
    """The dashboard at the bottom of the terminal, the app's output scrolling above.

    ``app_output`` takes the app's raw terminal bytes (from its pty) on any
    thread and only buffers them; a timer prints them ``flush_after`` seconds
    later, all at once, because every print above a rich Live redraws the
    view. A line still without its newline by then (a prompt) is printed as
    it is. Past ``max_buffer`` characters the caller prints itself, which
    slows a flood of output to what the terminal takes.
    """

    def __init__(self, state: DashState, console: Console, *, refresh_per_second: float = 4,
                 flush_after: float = 0.1, max_buffer: int = 1 << 16) -> None:
        self.state = state
        self.console = console
        self.flush_after = flush_after
        self.max_buffer = max_buffer
        self._on_refresh: Callable[[], None] | None = None
        # stdout stays the app's; our own stderr lines go above the view.
        self._live = Live(console=console, get_renderable=self._frame,
                          refresh_per_second=refresh_per_second, transient=True,
                          redirect_stdout=False, redirect_stderr=True)
        self._lock = threading.Lock()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._sgr = ""  # the app's colours still in force after its last line
        self._chunks: list[str] = []
        self._size = 0
        self._partial_since: float | None = None  # when the unfinished line began
        self._timer: threading.Timer | None = None
        self._stopped = False

    def set_on_refresh(self, callback: Callable[[], None] | None) -> None:
        """Call callback before each frame (e.g. to read the open streams' byte counts
        once a frame, not once a chunk)."""
        self._on_refresh = callback

    @property
    def started(self) -> bool:
        return self._live.is_started

    def start(self) -> None:
        self._live.start()

    def _frame(self) -> RenderableType:
        if self._on_refresh is not None:
            self._on_refresh()
        return render_live(self.state)

    def pause(self) -> None:
        """Before the supervisor stops (^Z): the shell gets its cursor back."""
        if self.started:
            self.console.show_cursor(True)

    def resume(self) -> None:
        """After `fg`: hide the cursor again and redraw at once."""
        if self.started and not self._stopped:
            self.console.show_cursor(False)
            self._live.refresh()

    def app_output(self, data: bytes) -> None:
        """Queue the app's output for the lines above the view (thread-safe)."""
        with self._lock:
            text = self._decoder.decode(data)
            if self._stopped or not text:
                return
            now = time.monotonic()
            newline = text.rfind("\n")
            if newline >= 0:
                self._partial_since = now if newline < len(text) - 1 else None
            elif self._partial_since is None:
                self._partial_since = now
            self._chunks.append(text)
            self._size += len(text)
            if self._size > self.max_buffer:
                self._print_pending(now, final=False)
            elif self._timer is None:
                self._arm(self.flush_after)

    def notice(self, text: str) -> None:
        """A supervisor line ("agent lost", ...) above the view, after the app's lines."""
        with self._lock:
            self._print_pending(time.monotonic(), final=False)
            self.console.print(Text(" ".join(text.split()), style="yellow"))

    def stop(self, exit_status: int | None = None, *, summary: bool = True) -> None:
        """Print the app's last words, clear the view, leave the summary (unless the run
        failed before it could be one: its error is then the last word). Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
            self._chunks.append(self._decoder.decode(b"", final=True))
            self._print_pending(time.monotonic(), final=True)
        self.state.finished(exit_status)
        self._live.stop()
        if summary:
            self.console.print(render_summary(self.state))

    def _arm(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._on_timer)
        self._timer.daemon = True
        self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
            if not self._stopped:
                self._print_pending(time.monotonic(), final=False)

    def _print_pending(self, now: float, *, final: bool) -> None:
        text = "".join(self._chunks)
        cut = text.rfind("\n") + 1
        done, rest = text[:cut], text[cut:]
        since = self._partial_since
        if rest and (final or since is None or now - since >= self.flush_after):
            done, rest = done + rest + "\n", ""
        self._chunks = [rest] if rest else []
        self._size = len(rest)
        if not rest:
            self._partial_since = None
        elif self._timer is None and since is not None:
            self._arm(max(0.0, since + self.flush_after - now))
        if done:
            text, self._sgr = app_lines(done, self._sgr)
            self.console.print(_Verbatim(text))
