"""``mirrortrace replay FILE``: a recorded session's dashboard, rebuilt from its --events file.

A colleague or a bug report gets the JSON lines file, not the terminal, so
the replay feeds the file's events through the same :class:`DashState` the
live run used and prints the same final view and summary. The summary is
built from events alone, which is what makes its numbers match the live
run's; only the duration differs, since the file records calls, not the
session's start and end (the replay takes the first and last event).

The file is read a line at a time and the state is bounded, so a replay
of a long session takes as little memory as the session did. A line that
is not an event stops the replay with its line number: a file cut short or
edited by hand should say where, not show a summary quietly missing calls.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console

from supervisor.dashboard import MAX_ROWS, render_live, render_summary
from supervisor.dashboard_state import DashState, SessionInfo
from supervisor.errors import UsageError
from supervisor.events import Event

__all__ = ["load_events", "make_console", "replay"]

HINT = "replay reads the JSON lines written by: mirrortrace run --events FILE"
# The contract's keys (CONTRACT.md, --events) and the JSON types each may have.
_NUMBER = (int, float)
_FIELDS: dict[str, tuple[type, ...]] = {
    "ts": _NUMBER,
    "pid": (int,),
    "comm": (str,),
    "syscall": (str,),
    "kind": (str,),
    "target": (str,),
    "via": (str,),
    "result": (str, int),
    "latency_us": _NUMBER,
}


def load_events(path: Path | str) -> Iterator[Event]:
    """The events of an --events file, in order; notices and blank lines skipped.

    Keys beyond the contract's are ignored, so files from a newer mirrortrace
    still replay. Raises UsageError naming the file (and line) when it cannot
    be read or a line is not an event.
    """
    path = Path(path)
    try:
        file = open(path, "rb")  # bytes: a bad encoding is reported with its line
    except FileNotFoundError as err:
        raise UsageError(f"replay: no such file: {path}", HINT) from err
    except OSError as err:
        raise UsageError(f"replay: cannot read {path} ({err.strerror})", HINT) from err
    with file:
        for number, raw in enumerate(file, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as err:  # UnicodeDecodeError is one too
                raise _bad(path, number, f"not JSON ({err})") from err
            if isinstance(obj, dict) and obj.get("kind") == "notice":
                continue
            yield _event(obj, path, number)


def _event(obj: Any, path: Path, number: int) -> Event:
    if not isinstance(obj, dict):
        raise _bad(path, number, f"a JSON {type(obj).__name__}, not an object")
    for key, types in _FIELDS.items():
        value = obj.get(key)
        if value is None:
            raise _bad(path, number, f'no "{key}"')
        if isinstance(value, bool) or not isinstance(value, types):
            raise _bad(path, number, f'"{key}" is {json.dumps(value)[:40]}')
    detail = obj.get("detail")
    if detail is not None and not isinstance(detail, dict):
        raise _bad(path, number, '"detail" is not an object')
    return Event(float(obj["ts"]), obj["pid"], obj["comm"], obj["syscall"], obj["kind"],
                 obj["target"], obj["via"], str(obj["result"]), int(obj["latency_us"]), detail)


def _bad(path: Path, number: int, reason: str) -> UsageError:
    return UsageError(f"replay: {path}:{number}: not an event: {reason}", HINT)


def replay(path: Path | str, console: Console, *, live: bool = True) -> DashState:
    """Print the session's final dashboard (with ``live``) and its summary; return the state.

    The whole file is read before anything is printed, so a bad line gives
    one error and no half-drawn view.
    """
    state: DashState | None = None
    for event in load_events(path):
        if state is None:
            state = DashState(SessionInfo(f"replay of {path}", {}, event.ts))
        state.add(event)
    if state is None:  # a run that diverted nothing: still a summary, all zeros
        state = DashState(SessionInfo(f"replay of {path}", {}, 0.0))
    state.finished(None, at=state.last_ts if state.last_ts is not None else 0.0)
    if live:
        console.print(render_live(state, rows=MAX_ROWS))
    console.print(render_summary(state))
    return state


def make_console(width: str | int | None = None, file: TextIO | None = None) -> Console:
    """A console on stdout: the terminal's width, else 100 columns (a file or a pipe)."""
    file = sys.stdout if file is None else file
    columns: int | None = None
    if width is not None:
        try:
            columns = int(width)
        except ValueError:
            columns = 0
        if columns < 40:
            raise UsageError(f"--width: expected a number of columns, at least 40, not {width!r}",
                             "see mirrortrace replay --help")
    elif not file.isatty():
        columns = 100
    return Console(file=file, width=columns, highlight=False)
