"""Diverted calls as events, and the sinks that show or record them.

Handlers and the engine build an :class:`Event` for every call they divert
and hand it to :meth:`EventBus.emit`; the bus writes it to stderr (``--ui
plain`` or ``json``), to the ``--events`` file (JSON lines), and to any
subscriber (the live dashboard subscribes; it only reads events, it never
drives the tracer). ``emit`` runs on the tracer thread, between two ptrace
stops, so it formats outside the lock and holds the lock only to write.

Human messages that are not calls ("using a local agent", "agent lost") go
through :meth:`EventBus.notice`, which keeps them one line each and in the
same format as the events on stderr.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Event", "EventBus", "StreamStats", "format_plain", "make_bus", "notice_text"]

# The keys of an event's JSON object, in order (CONTRACT.md, --events).
EVENT_KEYS = ("ts", "pid", "comm", "syscall", "kind", "target", "via", "result", "latency_us")


@dataclass(slots=True)
class Event:
    """One diverted call: what COMMAND asked for and where it went.

    ``target`` is what COMMAND asked for (``web:80``, ``/etc/app.conf``);
    ``via`` is what it was diverted to (``agent 198.18.0.10:8080``,
    ``local``); ``result`` is ``"0"`` or the negated errno name
    (``"-ECONNREFUSED"``).
    """

    ts: float
    pid: int
    comm: str
    syscall: str
    kind: str
    target: str
    via: str
    result: str
    latency_us: int
    detail: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": self.ts,
            "pid": self.pid,
            "comm": self.comm,
            "syscall": self.syscall,
            "kind": self.kind,
            "target": self.target,
            "via": self.via,
            "result": str(self.result),
            "latency_us": self.latency_us,
        }
        if self.detail is not None:
            out["detail"] = self.detail
        return out

    def to_json(self) -> str:
        """One JSON object, no newline; ``detail`` only when set."""
        return json.dumps(self.to_dict(), ensure_ascii=False, default=str)


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One relayed TCP stream as the relay counted it (`Session.open_streams`).

    target and via are the text of the stream's connect event; pid and comm the
    process that connected; opened is when the stream joined its socket
    (time.time()); sent and received count the bytes the program wrote to the pod
    and the bytes the pod's end delivered to the program, so far.
    """

    target: str
    via: str
    pid: int
    comm: str
    opened: float
    sent: int
    received: int


def format_latency(us: int) -> str:
    if us < 1000:
        return f"{us}µs"
    if us < 1_000_000:
        return f"{us / 1000:.1f}ms"
    return f"{us / 1_000_000:.2f}s"


def format_plain(event: Event, start: float) -> str:
    """One aligned line, time relative to start, e.g. (spaces squeezed here)

    ``  12.345 curl[1234] connect 198.18.0.10:80 → agent 198.18.0.10:80 0 1.2ms``

    Columns are padded to common widths; a longer value pushes the rest of
    its line right rather than being cut. A file event ends with the rule that
    sent it to the pod, in parentheses.
    """
    who = f"{event.comm}[{event.pid}]"
    line = (
        f"{event.ts - start:8.3f} {who:<18} {event.syscall:<10} {event.target:<28} "
        f"→ {event.via:<24} {event.result:<6} {format_latency(event.latency_us):>7}"
    )
    rule = (event.detail or {}).get("rule")
    return f"{line}  ({rule})" if rule else line


def notice_text(ui: str, text: str) -> str:
    """A notice as the stderr line for this ui (JSON for json, else text)."""
    text = " ".join(text.split())
    if ui == "json":
        return json.dumps({"kind": "notice", "message": text}, ensure_ascii=False)
    return text


Subscriber = Callable[[Event], None]


class EventBus:
    """Fans events out to stderr, an events file and subscribers.

    ``fmt`` is how events appear on ``stream``: ``"plain"``, ``"json"`` or
    None (not at all). Notices always reach ``stream`` (as JSON when fmt is
    json): the contract promises, for example, one line when a local agent
    is used, even with ``--ui none``.
    """

    def __init__(
        self,
        *,
        fmt: str | None,
        stream: TextIO | None = None,
        events_file: TextIO | None = None,
        start: float | None = None,
    ) -> None:
        if fmt not in (None, "plain", "json"):
            raise ValueError(f"unknown event format {fmt!r}")
        self.fmt = fmt
        self.stream = stream
        self.start = time.time() if start is None else start
        self._file = events_file
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        self._notices: Callable[[str], None] | None = None
        self._closed = False

    def emit(self, event: Event) -> None:
        """Record one event (thread-safe; cheap enough for the tracer thread)."""
        if self._closed:
            return
        line = None
        if self.fmt == "plain":
            line = format_plain(event, self.start) + "\n"
        elif self.fmt == "json":
            line = event.to_json() + "\n"
        record = event.to_json() + "\n" if self._file is not None else None
        with self._lock:
            if self._closed:
                return
            if line is not None and self.stream is not None:
                self.stream.write(line)
                self.stream.flush()
            if record is not None and self._file is not None:
                # Line buffered: each event is in the file once write returns.
                self._file.write(record)
        # A tuple swapped on subscribe, so no lock is needed to iterate.
        for callback in self._subscribers:
            callback(event)

    def notice(self, text: str) -> None:
        """Show one human line on stderr (a JSON notice object with --ui json), or hand
        it to whoever took the notices over (the live dashboard draws them itself)."""
        if self._closed:
            return
        if self._notices is not None:
            self._notices(text)
            return
        if self.stream is None:
            return
        line = notice_text("json" if self.fmt == "json" else "plain", text) + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()

    def take_notices(self, callback: Callable[[str], None]) -> None:
        """From now on notices go to callback(text), not to the stream: a live view owns
        the terminal, and a line written past it would tear the view."""
        self._notices = callback

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call callback(event) on every emit, on the emitting thread.

        The callback must be quick (queue the event, do not render). Returns
        a function that unsubscribes.
        """
        with self._lock:
            self._subscribers = (*self._subscribers, callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not callback)

        return unsubscribe

    def close(self) -> None:
        """Flush and close the events file; later emits are dropped. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._subscribers = ()
            if self._file is not None:
                self._file.flush()
                self._file.close()
            if self.stream is not None:
                self.stream.flush()
        atexit.unregister(self.close)

    def __enter__(self) -> EventBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_bus(ui: str, events_file: Path | None, stream: TextIO | None = None) -> EventBus:
    """The bus for ``--ui ui`` and ``--events events_file``.

    ``live`` writes no lines: the dashboard (supervisor/display.py) subscribes
    to the bus and takes its notices over.
    """
    if stream is None:
        stream = sys.stderr
    fmt = {"live": None, "plain": "plain", "json": "json", "none": None}.get(ui, "")
    if fmt == "":
        raise ValueError(f"unknown ui {ui!r}")
    file = None
    if events_file is not None:
        from supervisor.errors import UsageError

        try:
            file = open(events_file, "w", buffering=1, encoding="utf-8")
        except OSError as err:
            raise UsageError(
                f"--events: cannot write {events_file} ({err.strerror})",
                "give a path in a folder you can write to",
            ) from err
    bus = EventBus(fmt=fmt, stream=stream, events_file=file)
    # Also close (flush) at interpreter exit, in case the runner is cut short.
    atexit.register(bus.close)
    return bus
