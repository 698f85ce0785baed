"""Events: the JSON the contract promises, the plain lines, and no lost or torn lines."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.events import Event, EventBus, format_plain, make_bus

CONTRACT_KEYS = ["ts", "pid", "comm", "syscall", "kind", "target", "via", "result", "latency_us"]


def event(**changes: Any) -> Event:
    values: dict[str, Any] = dict(
        ts=1000.0,
        pid=1234,
        comm="curl",
        syscall="connect",
        kind="connect",
        target="198.18.0.10:80",
        via="agent 198.18.0.10:80",
        result="0",
        latency_us=1200,
    )
    values.update(changes)
    return Event(**values)


def test_json_has_exactly_the_contract_keys() -> None:
    obj = json.loads(event().to_json())
    assert list(obj) == CONTRACT_KEYS
    assert obj == {
        "ts": 1000.0,
        "pid": 1234,
        "comm": "curl",
        "syscall": "connect",
        "kind": "connect",
        "target": "198.18.0.10:80",
        "via": "agent 198.18.0.10:80",
        "result": "0",
        "latency_us": 1200,
    }


def test_json_detail_only_when_set() -> None:
    obj = json.loads(event(detail={"answer": "NOERROR 198.18.0.10"}).to_json())
    assert list(obj) == [*CONTRACT_KEYS, "detail"]
    assert obj["detail"] == {"answer": "NOERROR 198.18.0.10"}


def test_event_has_slots() -> None:
    with pytest.raises(AttributeError):
        event().extra = 1  # type: ignore[attr-defined]


def test_plain_line_is_aligned_and_relative() -> None:
    line = format_plain(event(ts=1012.345), start=1000.0)
    assert line == (
        "  12.345 curl[1234]         connect    198.18.0.10:80               "
        "→ agent 198.18.0.10:80     0        1.2ms"
    )
    short = format_plain(event(ts=1000.5, latency_us=850, result="-ECONNREFUSED"), 1000.0)
    assert short.startswith("   0.500 curl[1234]         connect    ")
    assert short.endswith(" -ECONNREFUSED   850µs")
    assert format_plain(event(latency_us=2_500_000), 1000.0).endswith("  2.50s")
    # Same widths for other values: the arrow stays in one column.
    other = format_plain(event(ts=1001.0, comm="python3", pid=7, syscall="sendto"), 1000.0)
    assert other.index("→") == line.index("→")


def test_a_file_event_names_the_rule_that_decided() -> None:
    e = event(syscall="openat", kind="open", target="/etc/app/config.yaml", via="pod",
              detail={"rule": "the pod's: not on this machine"})
    line = format_plain(e, 1000.0)
    assert line.endswith("1.2ms  (the pod's: not on this machine)")


def test_plain_bus_writes_one_line_per_event() -> None:
    stream = io.StringIO()
    bus = EventBus(fmt="plain", stream=stream, start=1000.0)
    bus.emit(event(ts=1001.0))
    bus.emit(event(ts=1002.0, kind="dns", syscall="sendto"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("   1.000 curl[1234]")
    assert " sendto " in lines[1]


def test_json_bus_writes_json_lines_and_json_notices() -> None:
    stream = io.StringIO()
    bus = make_bus("json", None, stream=stream)
    bus.emit(event())
    bus.notice("mirrortrace: using a local agent")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(first) == CONTRACT_KEYS
    assert second == {"kind": "notice", "message": "mirrortrace: using a local agent"}
    bus.close()


@pytest.mark.parametrize("ui", ["plain", "live", "none"])
def test_notices_are_one_plain_line(ui: str) -> None:
    stream = io.StringIO()
    bus = make_bus(ui, None, stream=stream)
    bus.notice("agent: started\nsecond line")
    assert stream.getvalue() == "agent: started second line\n"
    bus.close()


def test_ui_none_shows_no_events() -> None:
    stream = io.StringIO()
    bus = make_bus("none", None, stream=stream)
    bus.emit(event())
    assert stream.getvalue() == ""
    bus.close()


def test_live_writes_no_event_lines_and_hands_notices_over() -> None:
    stream = io.StringIO()
    bus = make_bus("live", None, stream=stream)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    bus.emit(event())
    assert stream.getvalue() == "" and len(seen) == 1  # the dashboard draws it
    taken: list[str] = []
    bus.take_notices(taken.append)
    bus.notice("mirrortrace: the agent is gone")
    assert taken == ["mirrortrace: the agent is gone"] and stream.getvalue() == ""
    bus.close()


def test_subscribers_see_every_event_and_can_leave() -> None:
    bus = EventBus(fmt=None)
    seen: list[Event] = []
    leave = bus.subscribe(seen.append)
    first = event()
    bus.emit(first)
    leave()
    bus.emit(event())
    assert seen == [first]


def test_file_sink_has_every_event_after_close(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    bus = make_bus("none", path, stream=io.StringIO())
    for i in range(500):
        bus.emit(event(pid=i))
    bus.notice("not an event")
    bus.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["pid"] for line in lines] == list(range(500))
    bus.close()  # idempotent
    bus.emit(event())  # after close: dropped, no error


def test_file_sink_is_line_buffered(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    bus = make_bus("none", path)
    bus.emit(event())
    # Readable before close: a crash right after the call loses nothing.
    assert json.loads(path.read_text(encoding="utf-8"))["pid"] == 1234
    bus.close()


def test_many_threads_emitting_never_tear_lines(tmp_path: Path) -> None:
    stream = io.StringIO()
    path = tmp_path / "events.jsonl"
    bus = make_bus("json", path, stream=stream)
    threads, per_thread = 16, 300

    def work(n: int) -> None:
        for i in range(per_thread):
            bus.emit(event(pid=n, latency_us=i, target="x" * (i % 50)))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    bus.close()
    for text in (stream.getvalue(), path.read_text(encoding="utf-8")):
        objects = [json.loads(line) for line in text.splitlines()]
        assert len(objects) == threads * per_thread
        for n in range(threads):
            mine = [o["latency_us"] for o in objects if o["pid"] == n]
            assert mine == list(range(per_thread))  # each thread's order kept


def test_unwritable_events_file_is_a_usage_error(tmp_path: Path) -> None:
    from supervisor.errors import UsageError

    with pytest.raises(UsageError, match="--events"):
        make_bus("none", tmp_path)  # a directory


@given(
    st.text(max_size=30),
    st.text(max_size=30),
    st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
)
def test_any_text_round_trips_through_json(target: str, comm: str, detail: Any) -> None:
    obj = json.loads(event(target=target, comm=comm, detail=detail).to_json())
    assert obj["target"] == target and obj["comm"] == comm
    assert obj.get("detail") == detail
    assert "\n" not in event(target=target).to_json()
