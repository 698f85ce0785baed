"""The dashboard's model: a bounded, thread-safe tally of the session's events.

:class:`DashState` is fed every :class:`~supervisor.events.Event` on the
tracer thread, between two ptrace stops, so :meth:`DashState.add` only
updates counters and a few bounded maps under a briefly held lock; nothing
is formatted there. The views (supervisor/dashboard.py) read small copies
taken under the same lock, and `mirrortrace replay` feeds it from a file.

Memory stays bounded however long the session runs: identical calls (same
comm, syscall, target, via and result) share one row with a count; the
recent rows, the failures and the per-target totals for the summary each
have a cap, and what falls off the per-target totals is still counted.

It only reads events (STYLE.md); the runner feeds it the agent's status
(:meth:`DashState.set_agent`) and the open streams
(:meth:`DashState.set_streams`).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from copy import copy
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from supervisor.events import Event, StreamStats

__all__ = ["Aggregate", "DashState", "KindCounts", "Row", "SessionInfo", "Snapshot",
           "is_failure", "is_local"]

KINDS = ("dns", "connect", "udp", "open", "stat", "listen", "incoming")
# A relayed stream's end: its bytes and duration, not a new call.
STREAM_END = "close"
# A non-blocking connect(2) answers EINPROGRESS when all is well (Go, node and
# curl all connect that way), so it is not a failure.
NOT_FAILURES = frozenset({"-EINPROGRESS"})


@dataclass
class SessionInfo:
    """What the header says about the session: where calls go and how."""

    target: str
    modes: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.time)


@dataclass(slots=True)
class KindCounts:
    """One kind's calls, split three ways (failed first), and its bytes."""

    diverted: int = 0
    local: int = 0
    failed: int = 0
    sent: int = 0
    received: int = 0
    ended: int = 0  # streams that ended ("close" events)
    broken: int = 0  # of which ended with an error (reset)

    @property
    def calls(self) -> int:
        return self.diverted + self.local + self.failed


@dataclass(slots=True)
class Row:
    """Identical calls merged: the latest one's time, pid and latency, and a count."""

    ts: float
    pid: int
    comm: str
    syscall: str
    kind: str
    target: str
    via: str
    result: str
    latency_us: int
    max_latency_us: int
    failed: bool
    count: int = 1
    sent: int = 0
    received: int = 0
    answer: str | None = None


@dataclass(slots=True)
class Aggregate:
    """A (kind, target, via) for the summary: a stream's end adds to its connect's row."""

    kind: str
    target: str
    via: str
    calls: int = 0
    failed: int = 0
    ended: int = 0
    total_latency_us: int = 0
    max_latency_us: int = 0
    sent: int = 0
    received: int = 0
    last_ts: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def weight(self) -> int:
        return self.calls + self.ended


def is_failure(result: str) -> bool:
    """Whether a call failed: a negative errno, EINPROGRESS aside."""
    return result.startswith("-") and result not in NOT_FAILURES


def is_local(via: str) -> bool:
    return via == "local" or via.startswith("local")


def _byte_count(detail: dict[str, Any] | None, key: str) -> int:
    if not detail:
        return 0
    value = detail.get(key)
    # bool is an int; a recorded file may hold anything.
    return value if type(value) is int and value > 0 else 0


@dataclass
class Snapshot:
    """What one frame shows, copied under the lock so rendering needs none."""

    session: SessionInfo
    agent_status: str | None
    agent_rtt_ms: float | None
    counts: dict[str, KindCounts]
    rows: list[Row]
    failures: list[Row]
    streams: list[StreamStats]  # the busiest few
    stream_count: int
    stream_sent: int  # by all open streams so far
    stream_received: int
    events: int
    now: float
    ended: float | None
    exit_status: int | None


class DashState:
    """The session as the dashboard shows it; safe to feed from any thread.

    The caps bound memory, not correctness of the totals: the per-kind
    counters are exact, and calls whose target fell out of the per-target
    table are counted in :attr:`untracked_calls`.
    """

    def __init__(
        self,
        session: SessionInfo,
        *,
        recent: int = 200,
        failures: int = 50,
        max_targets: int = 5000,
        max_kinds: int = 16,
    ) -> None:
        self.session = session
        self._lock = threading.Lock()
        self._recent_cap = recent
        self._failures_cap = failures
        self._targets_cap = max_targets
        self._kinds_cap = max_kinds
        self._counts: dict[str, KindCounts] = {kind: KindCounts() for kind in KINDS}
        self._recent: OrderedDict[tuple[str, ...], Row] = OrderedDict()
        self._failures: OrderedDict[tuple[str, ...], Row] = OrderedDict()
        self._targets: dict[tuple[str, str, str], Aggregate] = {}
        self._untracked: dict[str, int] = {}
        self._streams: dict[tuple[int, str, str], list[StreamStats]] = {}
        self.events = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.agent_status: str | None = None
        self.agent_rtt_ms: float | None = None
        self.ended: float | None = None
        self.exit_status: int | None = None

    # --- feeding (tracer thread: O(1), no formatting) ------------------------------------

    def add(self, event: Event) -> None:
        """Count one event; cheap enough for the tracer thread."""
        sent = _byte_count(event.detail, "sent")
        received = _byte_count(event.detail, "received")
        answer = event.detail.get("answer") if event.detail else None
        failed = is_failure(event.result)
        end = event.syscall == STREAM_END
        key = (event.comm, event.syscall, event.target, event.via, event.result)
        with self._lock:
            self.events += 1
            if self.first_ts is None:
                self.first_ts = event.ts
            if self.last_ts is None or event.ts > self.last_ts:
                self.last_ts = event.ts
            kind = self._kind(event.kind)
            counts = self._counts[kind]
            counts.sent += sent
            counts.received += received
            if end:
                counts.ended += 1
                counts.broken += failed
                self._stream_ended(event)
            elif failed:
                counts.failed += 1
            elif is_local(event.via):
                counts.local += 1
            else:
                counts.diverted += 1
            # One Row in both maps, so a failure's count goes on while it is out of sight.
            row = self._recent.get(key) or (self._failures.get(key) if failed else None)
            if row is None:
                row = Row(event.ts, event.pid, event.comm, event.syscall, kind, event.target,
                          event.via, event.result, 0, 0, failed, 0)
            row.count += 1
            row.ts, row.pid, row.latency_us = event.ts, event.pid, event.latency_us
            row.max_latency_us = max(row.max_latency_us, event.latency_us)
            row.sent += sent
            row.received += received
            if isinstance(answer, str):
                row.answer = answer
            _touch(self._recent, key, row, self._recent_cap)
            if failed:
                _touch(self._failures, key, row, self._failures_cap)
            self._aggregate(event, kind, failed, end, sent, received)

    def set_agent(self, status: str, rtt_ms: float | None) -> None:
        """The agent's state for the header: "connected", "lost: <reason>", ..."""
        with self._lock:
            self.agent_status = status
            self.agent_rtt_ms = rtt_ms

    def set_streams(self, streams: list[StreamStats]) -> None:
        """Replace the open streams with the relay's latest snapshot."""
        by_owner: dict[tuple[int, str, str], list[StreamStats]] = {}
        for stream in streams:
            by_owner.setdefault((stream.pid, stream.target, stream.via), []).append(stream)
        with self._lock:
            self._streams = by_owner

    def finished(self, exit_status: int | None, *, at: float | None = None) -> None:
        """The session is over: freeze the uptime, and say how COMMAND ended."""
        with self._lock:
            self.exit_status = exit_status
            self.ended = time.time() if at is None else at

    def _kind(self, kind: str) -> str:
        if kind not in self._counts:
            if len(self._counts) >= self._kinds_cap - 1:  # room kept for "other"
                kind = "other"
            self._counts.setdefault(kind, KindCounts())
        return kind

    def _aggregate(self, event: Event, kind: str, failed: bool, end: bool, sent: int,
                   received: int) -> None:
        key = (kind, event.target, event.via)
        agg = self._targets.get(key)
        if agg is None:
            if len(self._targets) >= self._targets_cap:
                self._evict()
            agg = self._targets[key] = Aggregate(kind, event.target, event.via)
        agg.sent += sent
        agg.received += received
        agg.last_ts = event.ts
        if end:
            agg.ended += 1
            return
        agg.calls += 1
        agg.total_latency_us += event.latency_us
        agg.max_latency_us = max(agg.max_latency_us, event.latency_us)
        if failed:
            agg.failed += 1
            if event.result in agg.errors or len(agg.errors) < 4:
                agg.errors[event.result] = agg.errors.get(event.result, 0) + 1

    def _evict(self) -> None:
        # A tenth at a time, least counted (then oldest) first: amortised O(1) per
        # event (about 1 ms per 500 new targets), and a summary's targets are the
        # frequent ones.
        doomed = heapq.nsmallest(max(1, self._targets_cap // 10), self._targets.values(),
                                 key=lambda a: (a.weight, a.last_ts))
        for agg in doomed:
            del self._targets[(agg.kind, agg.target, agg.via)]
            self._untracked[agg.kind] = self._untracked.get(agg.kind, 0) + agg.calls

    def _stream_ended(self, event: Event) -> None:
        # Until the relay's next snapshot, forget the stream here, so its bytes
        # are not shown both in the totals and as still open.
        owned = self._streams.get((event.pid, event.target, event.via))
        if owned:
            owned.pop()

    # --- reading (any thread: copies, taken under the lock) --------------------------------

    def counts(self) -> dict[str, KindCounts]:
        """Each kind's counters, the standard kinds first."""
        with self._lock:
            return {kind: copy(c) for kind, c in self._counts.items()}

    def recent_rows(self, limit: int | None = None) -> list[Row]:
        """The latest merged rows, oldest first."""
        with self._lock:
            return _last(self._recent, limit)

    def aggregates(self) -> list[Aggregate]:
        """The per-target totals still tracked (at most max_targets)."""
        with self._lock:
            out = [copy(a) for a in self._targets.values()]
        for agg in out:
            agg.errors = dict(agg.errors)
        return out

    def untracked_calls(self) -> dict[str, int]:
        """Per kind, calls whose target fell out of the per-target table."""
        with self._lock:
            return dict(self._untracked)

    def snapshot(self, now: float | None = None, rows: int = 12, streams: int = 4) -> Snapshot:
        """What one frame shows: the newest rows and the busiest streams, copied."""
        with self._lock:
            session = self.session
            open_streams = [s for owned in self._streams.values() for s in owned]
            top = heapq.nlargest(streams, open_streams, key=lambda s: s.sent + s.received)
            return Snapshot(
                SessionInfo(session.target, dict(session.modes), session.started),
                self.agent_status, self.agent_rtt_ms,
                {kind: copy(c) for kind, c in self._counts.items()},
                _last(self._recent, rows),
                _last(self._failures, rows + 3),
                [copy(s) for s in top], len(open_streams), sum(s.sent for s in open_streams),
                sum(s.received for s in open_streams), self.events,
                time.time() if now is None else now, self.ended, self.exit_status)

    def ending(self) -> tuple[SessionInfo, float | None, int | None]:
        """The session, when it ended and COMMAND's exit status (None while running)."""
        with self._lock:
            return self.session, self.ended, self.exit_status

    def streams(self) -> list[StreamStats]:
        with self._lock:
            return [copy(s) for owned in self._streams.values() for s in owned]


def _touch(rows: OrderedDict[tuple[str, ...], Row], key: tuple[str, ...], row: Row,
           cap: int) -> None:
    """Make row the newest under key, dropping the stalest past cap."""
    rows[key] = row
    rows.move_to_end(key)
    if len(rows) > cap:
        rows.popitem(last=False)


def _last(rows: OrderedDict[tuple[str, ...], Row], limit: int | None) -> list[Row]:
    """Copies of the newest limit rows, oldest first, without walking the others."""
    newest = list(islice(reversed(rows.values()), limit))
    return [copy(row) for row in reversed(newest)]
