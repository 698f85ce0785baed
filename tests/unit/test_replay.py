"""mirrortrace replay: the recorded session's numbers, and one clear line for a bad file."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from cli_run import invoke, one_error_line
from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console

from supervisor.dashboard import plain_summary
from supervisor.dashboard_state import DashState, SessionInfo
from supervisor.errors import UsageError
from supervisor.events import Event, EventBus
from supervisor.replay import load_events, replay

T0 = 1_700_000_000.0


def session_events() -> list[Event]:
    events = []
    for i in range(300):
        events.append(Event(T0 + i / 10, 40 + i % 3, "app", "connect", "connect",
                            f"198.18.0.{i % 4}:8080", "agent", "0" if i % 9 else "-ECONNREFUSED",
                            800 + i))
    for i in range(50):
        events.append(Event(T0 + 31 + i, 41, "app", "openat", "open", f"/etc/app/conf.d/{i}.yaml",
                            "pod", "0" if i % 5 else "-ENOENT", 3000, {"rule": "not here"}))
    events.append(Event(T0 + 2, 40, "app", "sendto", "dns", "web.dev.svc.cluster.local A",
                        "agent 10.96.0.10:53", "0", 900,
                        {"answer": "NOERROR 198.18.0.1", "sent": 43, "received": 59}))
    events.append(Event(T0 + 90, 40, "app", "close", "connect", "198.18.0.1:8080", "agent",
                        "-ECONNRESET", 60_000_000, {"sent": 4096, "received": 1 << 20}))
    return events


def record(path: Path, events: list[Event]) -> DashState:
    """Run events through the bus as a live run does: to the file and to a dashboard."""
    state = DashState(SessionInfo(f"replay of {path}", {}, events[0].ts))
    with EventBus(fmt=None, events_file=open(path, "w", buffering=1, encoding="utf-8")) as bus:
        bus.subscribe(state.add)
        for event in events:
            bus.emit(event)
    return state


def test_replay_shows_the_same_summary_as_the_live_run(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = session_events()
    live = record(path, events)
    live.finished(None, at=max(e.ts for e in events))
    out = io.StringIO()
    replayed = replay(path, Console(file=out, width=100), live=False)
    assert replayed.counts() == live.counts()
    def by_target(agg: Any) -> tuple[str, str, str]:
        return (agg.kind, agg.target, agg.via)

    assert sorted(replayed.aggregates(), key=by_target) == sorted(live.aggregates(),
                                                                  key=by_target)
    assert plain_summary(replayed) == plain_summary(live)
    assert out.getvalue() == plain_summary(live)
    assert "recent calls" not in out.getvalue()


def test_replay_prints_the_final_view_then_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    record(path, session_events())
    out = io.StringIO()
    state = replay(path, Console(file=out, width=100), live=True)
    shown = out.getvalue()
    header = shown.splitlines()[1]
    assert "replay of /" in header and ".jsonl" in header  # a long path shortened to fit
    assert "ran 1m 30s" in header  # first to last event
    assert shown.index("recent calls") < shown.index("mirrortrace summary")
    assert "/etc/app/conf.d/49.yaml" in shown and "ECONNRESET" in shown
    assert state.counts()["connect"].calls == 300 and state.counts()["connect"].broken == 1


def test_notices_blank_lines_and_unknown_keys_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    event = session_events()[0].to_dict()
    path.write_text("\n".join([
        json.dumps({"kind": "notice", "message": "mirrortrace: using a local agent"}),
        "",
        json.dumps({**event, "result": 0, "future_key": [1, 2]}),
        json.dumps({**event, "ts": 1_700_000_001, "latency_us": 12.7}),
    ]) + "\n")
    loaded = list(load_events(path))
    assert [(e.ts, e.result, e.latency_us) for e in loaded] == [(T0, "0", 800),
                                                               (T0 + 1, "-ECONNREFUSED", 12)]


@given(st.lists(st.builds(
    Event,
    ts=st.floats(0, 2e9, allow_nan=False),
    pid=st.integers(1, 1 << 22),
    comm=st.text(max_size=15),
    syscall=st.sampled_from(["connect", "openat", "sendto", "close"]),
    kind=st.sampled_from(["dns", "connect", "open", "udp"]),
    target=st.text(max_size=40),
    via=st.text(max_size=20),
    result=st.sampled_from(["0", "-ENOENT", "-ECONNREFUSED"]),
    latency_us=st.integers(0, 10**9),
    detail=st.none() | st.dictionaries(st.sampled_from(["rule", "sent", "received"]),
                                       st.integers(0, 10**9) | st.text(max_size=10)),
), max_size=20))
def test_events_come_back_as_they_were_written(events: list[Event]) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as file:
        file.writelines(event.to_json() + "\n" for event in events)
    try:
        assert list(load_events(file.name)) == events
    finally:
        Path(file.name).unlink()


@pytest.mark.parametrize(("content", "reason"), [
    (b'{"ts": 1, "pid": 2}\n', 'no "comm"'),
    (b"not json at all\n", "not JSON"),
    (b"[1, 2]\n", "a JSON list, not an object"),
    (b'{"ts": "x", "pid": 1}\n', '"ts" is "x"'),
    (b"\xff\xfe\n", "not JSON"),
])
def test_a_bad_line_is_named_by_its_number(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "events.jsonl"
    good = session_events()[0].to_json().encode()
    path.write_bytes(good + b"\n\n" + content)
    with pytest.raises(UsageError) as caught:
        list(load_events(path))
    assert f"{path}:3: not an event: {reason}" in str(caught.value)


def test_the_cli_replays_a_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    record(path, session_events())
    result = invoke("replay", str(path))
    assert result.exit_code == 0, result.output
    assert "recent calls" in result.stdout and "mirrortrace summary" in result.stdout
    # Not a terminal: 100 columns, and no colour codes in a file meant for a bug report.
    assert max(map(cell_len, result.stdout.splitlines())) <= 100
    assert "\x1b" not in result.stdout
    summary_only = invoke("replay", "--summary", "--width", "60", str(path))
    assert summary_only.exit_code == 0, summary_only.output
    assert "recent calls" not in summary_only.stdout
    assert max(map(cell_len, summary_only.stdout.splitlines())) <= 60


def test_the_cli_replays_an_empty_file_as_an_empty_session(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("")
    result = invoke("replay", "--summary", str(path))
    assert result.exit_code == 0, result.output
    assert "0 calls" in result.stdout and "no diverted calls" in result.stdout


def test_a_bad_line_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(session_events()[0].to_json() + "\n{oops\n")
    line = one_error_line(invoke("replay", str(path)))
    assert line.startswith(f"mirrortrace: replay: {path}:2: not an event: not JSON")
    assert line.endswith("; replay reads the JSON lines written by: mirrortrace run --events FILE")


def test_a_missing_file_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    line = one_error_line(invoke("replay", str(tmp_path / "none.jsonl")))
    assert f"no such file: {tmp_path / 'none.jsonl'}" in line


def test_a_folder_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    line = one_error_line(invoke("replay", str(tmp_path)))
    assert f"cannot read {tmp_path}" in line


def test_a_bad_width_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("")
    line = one_error_line(invoke("replay", "--width", "wide", str(path)))
    assert "--width" in line and "'wide'" in line


def test_replay_without_a_file_names_the_command() -> None:
    line = one_error_line(invoke("replay"))
    assert "(see mirrortrace replay --help)" in line
