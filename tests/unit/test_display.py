"""What each --ui mode puts together (supervisor/display.py), without a real run."""

from __future__ import annotations

import io
import sys

import pytest

from supervisor.display import Display, describe_modes, describe_source
from supervisor.errors import MirrortraceError
from supervisor.events import Event, EventBus
from supervisor.options import RunOptions


def options(ui: str, **kw: object) -> RunOptions:
    base: dict[str, object] = {"command": ["app"], "agent_exec": "agent --x 'a b'",
                               "agent_source": "exec", "ui": ui}
    base.update(kw)
    return RunOptions(**base)  # type: ignore[arg-type]


def connect_event(result: str = "0") -> Event:
    return Event(1.0, 7, "curl", "connect", "connect", "web:80", "agent", result, 900)


def test_none_and_json_keep_no_state_and_import_no_rich() -> None:
    for ui in ("none", "json"):
        shown = Display(options(ui), EventBus(fmt=None))
        assert shown.state is None and shown.view is None and shown.terminal is None
        assert shown.child_setup is None
        shown.finish(0)  # nothing to print, nothing to fail


def test_plain_prints_the_summary_at_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = EventBus(fmt="plain", stream=io.StringIO())
    shown = Display(options("plain"), bus)
    assert shown.view is None and shown.terminal is None  # lines only, no pty
    bus.emit(connect_event())
    bus.emit(connect_event("-ECONNREFUSED"))
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    shown.finish(3)
    text = err.getvalue()
    assert "mirrortrace summary" in text and "exit status 3" in text
    assert "ECONNREFUSED" in text
    shown.close()  # after finish: nothing more
    assert err.getvalue() == text


def test_a_failed_run_gets_no_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = Display(options("plain"), EventBus(fmt="plain", stream=io.StringIO()))
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    shown.close()  # the run raised: its error line is the last word
    assert err.getvalue() == ""


def test_live_without_a_pty_falls_back_to_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pty(*_a: object, **_k: object) -> None:
        raise MirrortraceError("cannot open a pseudo-terminal for COMMAND (No such device)")

    import supervisor.terminal

    monkeypatch.setattr(supervisor.terminal.AppTerminal, "open", no_pty)
    stream = io.StringIO()
    bus = EventBus(fmt=None, stream=stream)
    shown = Display(options("live"), bus)
    assert shown.ui == "plain" and bus.fmt == "plain" and shown.view is None
    assert "pseudo-terminal" in stream.getvalue() and "plain lines" in stream.getvalue()
    bus.emit(connect_event())
    assert "web:80" in stream.getvalue()  # the events now show as lines


def test_the_header_names_the_agent_and_the_modes() -> None:
    assert describe_source(options("live")) == "agent: agent --x 'a b'"
    assert describe_source(options("live", agent_source="local", agent_exec="x")) == (
        "local agent (no cluster)")
    target = options("live", agent_source="target", agent_exec=None,
                     target="deployment/web", namespace="dev", context="staging")
    assert describe_source(target) == "deployment/web -n dev --context staging"
    assert describe_modes(options("live", dns=False, fs="write")) == {
        "dns": "off", "outgoing": "remote", "fs": "write", "env": "merge", "incoming": "off"}

