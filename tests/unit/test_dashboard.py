"""The dashboard: what its model counts, what its views show, and that both stay bounded."""

from __future__ import annotations

import io
import re
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console, RenderableType

from supervisor.dashboard import (
    TOP_PER_KIND,
    LiveView,
    app_lines,
    plain_summary,
    render_live,
    render_summary,
    shorten,
)
from supervisor.dashboard_state import DashState, SessionInfo
from supervisor.events import Event, StreamStats

T0 = 1000.0
MODES = {"dns": "on", "outgoing": "remote", "fs": "read", "env": "merge", "incoming": "off"}


def ev(**changes: Any) -> Event:
    values: dict[str, Any] = dict(ts=T0 + 1, pid=1234, comm="curl", syscall="connect",
                                  kind="connect", target="web:8080", via="agent", result="0",
                                  latency_us=1200)
    values.update(changes)
    return Event(**values)


def state_with(events: list[Event], **kwargs: Any) -> DashState:
    state = DashState(SessionInfo("deployment/web -n dev", dict(MODES), T0), **kwargs)
    for event in events:
        state.add(event)
    return state


def lines(renderable: RenderableType, width: int = 100, height: int = 40) -> list[tuple[str, str]]:
    """Each rendered line as (its text, its red pieces joined by spaces)."""
    console = Console(width=width, height=height, file=io.StringIO(), color_system="truecolor",
                      legacy_windows=False)
    out = []
    for line in console.render_lines(renderable, console.options, pad=False):
        text = "".join(seg.text for seg in line)
        red = " ".join(seg.text for seg in line
                       if seg.style and seg.style.color and seg.style.color.name == "red")
        out.append((text.rstrip(), red))
    return out


def text(renderable: RenderableType, width: int = 100) -> str:
    return "\n".join(line for line, _ in lines(renderable, width))


def line_with(renderable: RenderableType, *needles: str, width: int = 100) -> tuple[str, str]:
    found = [(t, red) for t, red in lines(renderable, width) if all(n in t for n in needles)]
    assert len(found) == 1, (needles, text(renderable, width))
    return found[0]


def starting(renderable: RenderableType, label: str, width: int = 100) -> tuple[str, str]:
    found = [(t, red) for t, red in lines(renderable, width) if t.startswith(label)]
    assert len(found) == 1, (label, text(renderable, width))
    return found[0]


# --- the header -------------------------------------------------------------------------------


def test_header_shows_target_agent_rtt_uptime_and_modes() -> None:
    state = state_with([])
    state.set_agent("connected", 3.24)
    shown = text(render_live(state, now=T0 + 83))
    assert "deployment/web -n dev" in shown
    assert "agent connected rtt 3.2 ms" in shown
    assert "up 1m 23s" in shown
    assert "dns on  outgoing remote  fs read  env merge  incoming off" in shown


def test_a_lost_agent_is_red_and_shows_no_rtt() -> None:
    state = state_with([])
    state.set_agent("lost: channel closed", 2.0)
    line, red = line_with(render_live(state, now=T0), "lost: channel closed")
    assert red == "lost: channel closed"
    assert "rtt" not in line


def test_uptime_stops_when_the_session_ends() -> None:
    state = state_with([])
    state.finished(0, at=T0 + 3725)
    assert "ran 1h 02m" in text(render_live(state, now=T0 + 99999))


# --- the counters -----------------------------------------------------------------------------


MIXED = [
    ev(kind="dns", syscall="sendto", target="web.default.svc.cluster.local A",
       via="agent 10.96.0.10:53", detail={"answer": "NOERROR 198.18.0.10", "sent": 40,
                                          "received": 56}),
    ev(kind="dns", syscall="sendto", target="nope.default.svc.cluster.local A",
       via="agent 10.96.0.10:53", result="-NXDOMAIN"),
    ev(target="198.18.0.10:8080"),
    ev(target="198.18.0.10:8080", result="-EINPROGRESS"),  # a non-blocking connect: fine
    ev(target="198.18.0.11:5432", result="-ECONNREFUSED"),
    ev(target="127.0.0.1:6379", via="local"),
    ev(kind="open", syscall="openat", target="/etc/app/config.yaml", via="pod",
       detail={"rule": "not here"}),
    ev(kind="open", syscall="openat", target="/etc/app/missing", via="pod", result="-ENOENT"),
    ev(kind="open", syscall="openat", target="/usr/bin/tool", via="refused", result="-EACCES"),
    ev(kind="listen", syscall="listen", target="0.0.0.0:8000", via="local"),
    ev(syscall="close", target="198.18.0.10:8080", latency_us=5_000_000,
       detail={"sent": 1000, "received": 2_000_000}),
]


def test_counters_split_calls_into_diverted_local_and_failed_per_kind() -> None:
    counts = state_with(MIXED).counts()
    got = {k: (c.diverted, c.local, c.failed) for k, c in counts.items() if c.calls}
    assert got == {"dns": (1, 0, 1), "connect": (2, 1, 1), "open": (1, 0, 2),
                   "listen": (0, 1, 0)}
    assert list(counts)[:7] == ["dns", "connect", "udp", "open", "stat", "listen", "incoming"]


def test_a_stream_end_adds_its_bytes_but_is_not_a_call() -> None:
    counts = state_with(MIXED).counts()
    assert counts["connect"].calls == 4
    assert (counts["connect"].sent, counts["connect"].received) == (1000, 2_000_000)
    assert (counts["dns"].sent, counts["dns"].received) == (40, 56)
    assert counts["connect"].ended == 1 and counts["connect"].broken == 0


def test_a_reset_stream_is_counted_as_broken_and_shown() -> None:
    state = state_with([ev(), ev(syscall="close", result="-ECONNRESET", detail={"sent": 5})])
    assert state.counts()["connect"].broken == 1
    assert state.counts()["connect"].failed == 0
    _, red = starting(render_live(state, now=T0), "failed")
    assert "+1 reset" in red


def test_counters_grid_shows_each_kind_in_its_column() -> None:
    view = render_live(state_with(MIXED), now=T0 + 5)
    header = line_with(view, "dns", "connect", "incoming")[0].split()
    assert header == ["dns", "connect", "udp", "open", "stat", "listen", "incoming"]
    assert starting(view, "diverted")[0].split()[1:] == ["1", "2", "0", "1", "0", "0", "0"]
    assert starting(view, "local")[0].split()[1:] == ["0", "1", "0", "0", "0", "1", "0"]
    failed_line, red = starting(view, "failed")
    assert failed_line.split()[1:] == ["1", "1", "0", "2", "0", "0", "0"]
    assert red.split() == ["1", "1", "2"]  # only the non-zero failures are red
    assert "1.9 MiB" in starting(view, "↓ received")[0]


def test_an_unusual_kind_gets_a_column_and_too_many_share_one() -> None:
    state = state_with([ev(kind="env")] + [ev(kind=f"k{i}") for i in range(100)], max_kinds=10)
    counts = state.counts()
    assert "env" in counts and len(counts) == 10
    assert list(counts)[7:] == ["env", "k0", "other"]
    assert counts["other"].calls == 99


# --- the recent calls ---------------------------------------------------------------------------


def test_repeated_calls_share_a_row_with_a_count_and_the_latest_pid_and_latency() -> None:
    events = [ev(ts=T0 + i, pid=100 + i % 3, latency_us=1000 + i) for i in range(214)]
    events.append(ev(ts=T0 + 300, target="198.18.0.11:5432", result="-ECONNREFUSED",
                     latency_us=900))
    state = state_with(events)
    rows = state.recent_rows()
    assert [(r.target, r.count) for r in rows] == [("web:8080", 214), ("198.18.0.11:5432", 1)]
    assert (rows[0].pid, rows[0].latency_us, rows[0].max_latency_us) == (100 + 213 % 3, 1213,
                                                                         1213)
    view = render_live(state, now=T0 + 301, rows=12)
    ok_line, ok_red = line_with(view, "×214")
    assert "web:8080" in ok_line and "curl[100]" in ok_line and "1.2ms" in ok_line
    assert ok_red == ""
    fail_line, fail_red = line_with(view, "ECONNREFUSED")
    assert "198.18.0.11:5432" in fail_line and "×" not in fail_line
    assert "ECONNREFUSED" in fail_red and "198.18.0.11:5432" in fail_red


def test_different_results_are_different_rows() -> None:
    state = state_with([ev(), ev(result="-ECONNREFUSED"), ev()])
    assert [(r.result, r.count) for r in state.recent_rows()] == [("-ECONNREFUSED", 1),
                                                                    ("0", 2)]


def test_the_table_shows_what_was_asked_and_where_it_went() -> None:
    view = render_live(state_with(MIXED), now=T0 + 5, rows=12)
    line = line_with(view, "web.default.svc.cluster.local A", width=120)[0]
    assert "198.18.0.10" in line and " ok " in line  # a name: what it resolved to
    line = line_with(view, "nope.default.svc.cluster.local A", width=120)[0]
    assert "agent 10.96.0.10:53" in line and "NXDOMAIN" in line
    line = line_with(view, "/etc/app/config.yaml")[0]
    assert line.split() == ["1.000", "curl[1234]", "openat", "/etc/app/config.yaml", "pod",
                            "ok", "1.2ms"]
    line = line_with(view, "close")[0]
    assert "↑1000 B ↓1.9 MiB" in line and "5.00s" in line


def test_a_failure_out_of_sight_is_shown_below_the_recent_calls() -> None:
    events = [ev(target="db:5432", result="-ECONNREFUSED")]
    events += [ev(ts=T0 + i, target=f"10.0.0.{i}:80") for i in range(2, 30)]
    view = render_live(state_with(events), now=T0 + 30, rows=5)
    shown = text(view)
    assert "recent calls, after 1 earlier failure" in shown
    assert shown.index("db:5432") < shown.index("10.0.0.25:80")  # above the latest calls
    assert "10.0.0.24:80" not in shown
    assert "ECONNREFUSED" in line_with(view, "db:5432")[1]


def test_an_empty_session_says_so() -> None:
    assert "no diverted calls yet" in text(render_live(state_with([]), now=T0))


def test_rows_fit_the_terminal_height_and_leave_room_for_the_app() -> None:
    state = state_with([ev(target=f"10.0.0.{i}:80") for i in range(50)])
    for height in (24, 30, 40, 100):
        drawn = lines(render_live(state, now=T0), height=height)
        assert len(drawn) <= max(height * 2 // 3, 17)
    assert sum("10.0.0." in t for t, _ in lines(render_live(state, now=T0), height=100)) == 12


# --- bounded -----------------------------------------------------------------------------------


def test_twenty_thousand_distinct_calls_keep_memory_bounded_and_totals_exact() -> None:
    state = DashState(SessionInfo("x", {}, T0))
    for i in range(20_000):
        state.add(ev(ts=T0 + i, comm=f"c{i % 50}", target=f"10.{i // 250}.{i % 250}.1:80",
                     result="0" if i % 7 else "-ETIMEDOUT"))
    assert len(state.recent_rows()) == 200
    assert len(state.aggregates()) <= 5000
    counts = state.counts()["connect"]
    assert (counts.calls, counts.failed) == (20_000, 2858)
    untracked = state.untracked_calls()["connect"]
    assert untracked + sum(a.calls for a in state.aggregates()) == 20_000
    shown = plain_summary(state)
    assert "…and 4,995+ more" in shown and "19,995" in shown


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["dns", "connect", "open", "zz"]),
                          st.sampled_from(["connect", "close", "openat"]),
                          st.integers(0, 12),
                          st.sampled_from(["0", "-ENOENT", "-EINPROGRESS"]),
                          st.sampled_from(["agent", "local", "pod"]),
                          st.integers(0, 10_000)), max_size=120))
def test_counters_add_up_and_structures_stay_bounded(calls: list[tuple]) -> None:
    state = DashState(SessionInfo("x", {}, T0), recent=5, failures=3, max_targets=10,
                      max_kinds=5)
    for kind, syscall, n, result, via, size in calls:
        state.add(ev(kind=kind, syscall=syscall, target=f"t{n}", result=result, via=via,
                     detail={"sent": size}))
    not_ends = sum(1 for c in calls if c[1] != "close")
    counts = state.counts()
    assert sum(c.calls for c in counts.values()) == not_ends
    assert sum(c.ended for c in counts.values()) == len(calls) - not_ends
    assert sum(c.sent for c in counts.values()) == sum(c[5] for c in calls)
    aggregates = state.aggregates()
    assert sum(a.calls for a in aggregates) + sum(state.untracked_calls().values()) == not_ends
    assert len(state.recent_rows()) <= 5 and len(aggregates) <= 10 and len(counts) <= 8
    assert sum(r.count for r in state.recent_rows()) <= len(calls)


def test_feeding_from_many_threads_while_rendering_loses_nothing() -> None:
    state = state_with([])

    def feed(n: int) -> None:
        for i in range(2000):
            state.add(ev(pid=n, target=f"10.0.{n}.{i % 300}:80"))

    threads = [threading.Thread(target=feed, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        text(render_live(state))
    assert state.counts()["connect"].calls == 8000 and state.events == 8000


def test_adding_an_event_is_cheap() -> None:
    state = state_with([])
    events = [ev(target=f"10.0.{i % 200}.{i % 37}:80") for i in range(20_000)]
    started = time.perf_counter()
    for event in events:
        state.add(event)
    per_event = (time.perf_counter() - started) / len(events)
    assert per_event < 100e-6  # typically under 10 µs; generous for slow CI machines


# --- shortening ---------------------------------------------------------------------------------


def test_a_long_path_keeps_its_end() -> None:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert shorten(path, 24) == "…/serviceaccount/token"
    assert shorten(path, 10) == "…/token"
    assert shorten(path, 6) == "…token"
    assert shorten(path, 60) == path


def test_a_long_host_keeps_its_start_and_its_port() -> None:
    short = shorten("payments-api.production.svc.cluster.local:8443", 24)
    assert short.startswith("payments-api") and short.endswith(":8443") and "…" in short
    assert cell_len(short) == 24
    dns = shorten("payments-api.production.svc.cluster.local AAAA", 24)
    assert dns.startswith("payments-api") and dns.endswith(" AAAA")


@given(st.text(alphabet=st.sampled_from("ab/:. 界1"), max_size=60), st.integers(0, 70))
def test_shorten_fits_and_leaves_short_text_alone(value: str, width: int) -> None:
    short = shorten(value, width)
    assert cell_len(short) <= width
    if cell_len(value) <= width:
        assert short == value
    elif value.startswith("/") and width >= 4:
        assert value.endswith(short.lstrip("…")) and short.startswith("…")


def test_a_long_path_in_the_table_is_cut_at_its_start() -> None:
    target = "/var/run/secrets/kubernetes.io/serviceaccount/some-very-long-folder-name/token"
    state = state_with([ev(kind="open", syscall="openat", target=target, via="pod")])
    for width in (70, 100):
        line = line_with(render_live(state, now=T0), "openat", width=width)[0]
        assert "…" in line and "/token" in line and "/var/run" not in line


@pytest.mark.parametrize("width", [60, 80, 100, 140])
def test_no_line_is_wider_than_the_terminal(width: int) -> None:
    events = MIXED + [ev(target="x" * 200, via="agent " + "y" * 80, comm="averylongcommand")]
    state = state_with(events)
    state.set_streams([StreamStats("z" * 120, "agent", 7, "curl", T0, 10, 20)])
    state.set_agent("connected", 1.0)
    for view in (render_live(state, now=T0, rows=12), render_summary(state, now=T0)):
        assert all(cell_len(line) <= width for line, _ in lines(view, width))


def test_brackets_are_shown_not_read_as_markup() -> None:
    state = state_with([ev(target="[::1]:8080", via="agent [red]", comm="a[b]")])
    line = line_with(render_live(state, now=T0), "[::1]:8080")[0]
    assert "agent [red]" in line and "a[b][1234]" in line


# --- open streams --------------------------------------------------------------------------------


def test_open_streams_show_live_bytes_and_count_in_the_live_totals_only() -> None:
    state = state_with([ev()])
    state.set_streams([StreamStats("web:8080", "agent", 1234, "curl", T0, 2048, 3 << 20),
                       StreamStats("db:5432", "agent", 1234, "curl", T0 + 50, 10, 20)])
    view = render_live(state, now=T0 + 61)
    assert "open streams (2)" in text(view)
    line = line_with(view, "web:8080", "1m 01s")[0]
    assert "2.0 KiB" in line and "3.0 MiB" in line
    assert "3.0 MiB" in starting(view, "↓ received")[0]
    assert "3.0 MiB" not in text(render_summary(state, now=T0 + 61))


def test_a_stream_that_ended_leaves_the_open_list_at_once() -> None:
    state = state_with([])
    state.set_streams([StreamStats("web:8080", "agent", 1234, "curl", T0, 5, 5),
                       StreamStats("web:8080", "agent", 99, "other", T0, 5, 5)])
    state.add(ev(syscall="close", detail={"sent": 5, "received": 5}))
    assert [s.pid for s in state.streams()] == [99]
    assert "open streams (1)" in text(render_live(state, now=T0))


def test_many_open_streams_show_the_busiest_and_how_many_more() -> None:
    state = state_with([])
    state.set_streams([StreamStats(f"h{i}:80", "agent", i, "c", T0, i, 0) for i in range(50)])
    shown = text(render_live(state, now=T0))
    assert "open streams (50)" in shown and "…and 46 more" in shown
    assert "h49:80" in shown and "h0:80" not in shown
    assert "1.2 KiB" in starting(render_live(state, now=T0), "↑ sent")[0]  # all 50: 1225 B


# --- the summary ----------------------------------------------------------------------------------


def test_summary_has_totals_per_kind_and_top_targets() -> None:
    events = MIXED + [ev(ts=T0 + i, target="198.18.0.10:8080", latency_us=i * 100)
                      for i in range(1, 200)]
    state = state_with(events)
    state.finished(3, at=T0 + 62)
    summary = render_summary(state)
    assert "deployment/web -n dev  1m 02s  209 calls  exit status 3" in text(summary)
    assert line_with(summary, "exit status")[1] == "3"
    assert starting(summary, "connect     ")[0].split() == ["connect", "203", "201", "1", "1",
                                                          "1000", "B", "1.9", "MiB"]
    assert starting(summary, "total")[0].split()[:5] == ["total", "209", "203", "2", "4"]
    top = line_with(summary, "198.18.0.10:8080")[0]
    assert top.split() == ["connect", "198.18.0.10:8080", "agent", "201", "1000", "B", "1.9",
                           "MiB", "9.9ms", "19.9ms"]  # a stream's bytes go with its connects
    fail_line, red = line_with(summary, "/etc/app/missing")
    assert "1 ENOENT" in red


def test_summary_lists_a_few_targets_per_kind_and_counts_the_rest() -> None:
    state = state_with([ev(target=f"10.0.0.{i}:80") for i in range(20) for _ in range(i + 1)])
    summary = text(render_summary(state, now=T0))
    assert "10.0.0.19:80" in summary and "10.0.0.0:80" not in summary
    assert sum("10.0.0." in line for line in summary.splitlines()) == TOP_PER_KIND
    hidden = sum(range(1, 16))  # targets 0..14 were called 1..15 times
    assert f"…and {20 - TOP_PER_KIND} more" in summary and f"{hidden}" in summary


def test_summary_does_not_depend_on_the_order_of_events() -> None:
    forward = state_with(MIXED)
    backward = state_with(list(reversed(MIXED)))
    for state in (forward, backward):
        state.finished(0, at=T0 + 10)
    assert plain_summary(forward) == plain_summary(backward)


def test_plain_summary_is_text_without_escapes() -> None:
    state = state_with(MIXED)
    state.finished(1, at=T0 + 10)
    summary = plain_summary(state, width=100)
    assert "\x1b" not in summary
    assert "mirrortrace summary: deployment/web -n dev  10s  10 calls  exit status 1" in summary
    assert max(map(cell_len, summary.splitlines())) <= 100


# --- the terminal ---------------------------------------------------------------------------------


def terminal(width: int = 80) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, height=40, force_terminal=True,
                   color_system="truecolor", legacy_windows=False), out


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_app_output_goes_above_the_view_line_by_line_with_its_colours() -> None:
    console, out = terminal()
    view = LiveView(state_with([]), console, flush_after=60)
    view.start()
    view.app_output(b"one\r\ntw")
    view.app_output(b"o\r\n\x1b[31mred\x1b[0m plain\n10%\r50%\r100%\r\n")
    view.app_output("caf\u00e9\n".encode()[:4])  # a character cut between two reads
    view.app_output("caf\u00e9\n".encode()[4:])
    view.stop(0)
    written = out.getvalue()
    assert "one\ntwo\n\x1b[31mred\x1b[0m plain\n100%\ncafé\n" in written
    assert "\ntw\n" not in written and "10%" not in written


def test_a_prompt_without_newline_is_shown_soon() -> None:
    console, out = terminal()
    view = LiveView(state_with([]), console, flush_after=0.02)
    view.start()
    try:
        view.app_output(b"line\npassword: ")
        assert wait_for(lambda: "password: " in out.getvalue())
    finally:
        view.stop(0)


def test_the_last_partial_line_is_printed_at_stop_before_the_summary() -> None:
    console, out = terminal()
    view = LiveView(state_with([ev()]), console, flush_after=60)
    view.start()
    view.app_output(b"bye without newline")
    view.stop(7)
    written = out.getvalue()
    assert "bye without newline" in written
    assert written.index("bye without newline") < written.index("mirrortrace summary")
    assert "exit status" in written[written.index("mirrortrace summary"):]
    view.stop(7)  # idempotent
    assert out.getvalue().count("mirrortrace summary") == 1


def test_a_flood_of_output_is_printed_by_the_writer_itself() -> None:
    console, out = terminal()
    view = LiveView(state_with([]), console, flush_after=60, max_buffer=100)
    view.start()
    try:
        view.app_output(b"x" * 150 + b"\n")
        assert "x" * 60 in out.getvalue()  # no timer needed: the caller printed it
    finally:
        view.stop(0)


def test_a_notice_comes_after_the_app_lines_before_it() -> None:
    console, out = terminal()
    view = LiveView(state_with([]), console, flush_after=60)
    view.start()
    view.app_output(b"app says hello\n")
    view.notice("mirrortrace: agent lost;\n  calls now fail")
    view.stop(1)
    written = out.getvalue()
    assert written.index("app says hello") < written.index("mirrortrace: agent lost; calls now")


def test_app_lines_keep_colours_and_drop_what_would_draw_over_the_view() -> None:
    text, state = app_lines("\x1b[2J\x1b[Hclear\x1b]0;title\x07ed\x1b[5A\x1b7\r\n"
                            "\x1b[1mbold \x1b[31mred\r\n", "")
    assert text == "cleared\n\x1b[1mbold \x1b[31mred\x1b[0m\n"  # reset before the view
    assert state == "1;31"
    # The next lines start in the colours still in force, until the app resets them.
    text, state = app_lines("still\r\n\x1b[0mplain\r\n", state)
    assert text == "\x1b[1;31mstill\n\x1b[0mplain\n" and state == ""


def test_app_lines_show_what_a_progress_bar_shows_last() -> None:
    text, _ = app_lines("get 10%\r50%\r100%\r\nnext\r\n", "")
    assert text == "100%\nnext\n"


@given(st.text(alphabet=st.sampled_from(
    ["a", " ", "\t", "\r", "\n", "\x1b", "[", "]", "0", "3", "1", ";", "m", "H", "J", "\x07",
     "\x00", "\x08", "é"]), max_size=80))
def test_app_lines_leave_no_escape_but_colours(raw: str) -> None:
    text, _ = app_lines(raw + "\n", "")
    rest = re.sub(r"\x1b\[[0-9;:]*m", "", text)
    assert not re.search(r"\x1b[\[\]]", rest), repr(text)  # no CSI or OSC but SGR
    assert not re.search(r"[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f\r]", rest), repr(text)
    assert text.count("\n") == raw.count("\n") + 1  # one line out per line in


def test_the_colour_state_stays_bounded_for_an_app_that_never_resets() -> None:
    state = ""
    for i in range(1000):
        _, state = app_lines(f"\x1b[3{i % 8}mline\r\n", state)
    assert len(state) < 130 and state.endswith(f"3{999 % 8}")
