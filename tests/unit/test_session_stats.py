"""What the session tells the live dashboard: the agent's round trip, the open streams
with their byte counts, and one "close" event per relayed stream.

A real Session (its thread, channel, relays and loopback listeners) talks to an agent
Channel in the same process over a socketpair; no ptrace: the test does by hand what
syscalls/net.py does for a diverted connect.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent_image import protocol as p
from agent_image.agent import FEATURES, Agent
from agent_image.mux import Channel
from supervisor.events import Event, EventBus
from supervisor.relay_tcp import StreamStats
from supervisor.session import Session

Handler = Callable[[int, p.Message], Any]


class InProcessAgent:
    """An AgentLink whose agent is a Channel on the session's own loop."""

    pid = None
    stream_window = None

    def __init__(self, features: tuple[str, ...] = FEATURES,
                 handler: Callable[[Agent], Handler] | None = None) -> None:
        self.features = features
        self.make_handler = handler
        self.agent = Agent(None, root="/")
        self.channel: Channel | None = None
        self.seen: list[str] = []  # the ops of the requests it got
        self._socks: list[socket.socket] = []

    async def open(self, channel: Channel, on_log: Any) -> None:
        ours, theirs = socket.socketpair()
        self._socks += [ours, theirs]
        inner = self.make_handler(self.agent) if self.make_handler else None

        def handle(sid: int, msg: p.Message) -> Any:
            self.seen.append(msg.op)
            return (inner or self.agent.handle)(sid, msg)

        self.channel = Channel("agent", handle, features=self.features)
        self.agent.channel = self.channel
        await self.channel.open_socket(theirs)
        await channel.open_socket(ours)

    def ended_how(self) -> str:
        return ""

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        for sock in self._socks:
            sock.close()


@pytest.fixture
def events() -> list[Event]:
    return []


def _session(link: InProcessAgent, events: list[Event]) -> Session:
    bus = EventBus(fmt=None)
    bus.subscribe(events.append)
    session = Session(link, bus, dns=False, outgoing="remote", local_cidrs=[])
    session.start(timeout=10)
    return session


@pytest.fixture
def started(events: list[Event]) -> Iterator[tuple[Session, InProcessAgent]]:
    link = InProcessAgent()
    session = _session(link, events)
    try:
        yield session, link
    finally:
        session.close()


def _watch(session: Session, every: float = 0.02
           ) -> tuple[queue.Queue[tuple[str, float | None]], Callable[[], None]]:
    reports: queue.Queue[tuple[str, float | None]] = queue.Queue()
    stop = session.watch_agent(lambda status, rtt: reports.put((status, rtt)), every=every)
    return reports, stop


def _next(reports: queue.Queue[tuple[str, float | None]], timeout: float = 5
          ) -> tuple[str, float | None]:
    return reports.get(timeout=timeout)


def _until(check: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# --- watch_agent ----------------------------------------------------------------------


def test_watch_agent_reports_the_ping_round_trip_then_the_lost_channel(
    started: tuple[Session, InProcessAgent],
) -> None:
    session, link = started
    reports, stop = _watch(session)
    for _ in range(3):
        status, rtt = _next(reports)
        assert status == "connected"
        assert rtt is not None and 0 < rtt < 5000
    assert link.seen.count("ping") >= 3  # timed with Ping, the agent's cheapest answer
    assert link.channel is not None
    session.loop.call_soon_threadsafe(link.channel.fail, "the pod was evicted")
    while (report := _next(reports))[0] == "connected":
        pass
    status, rtt = report
    assert status.startswith("lost: ") and "the pod was evicted" in status, status
    assert rtt is None
    with pytest.raises(queue.Empty):
        reports.get(timeout=0.1)  # once, and nothing after it
    stop()


def test_stopping_the_watch_stops_the_pings(started: tuple[Session, InProcessAgent]) -> None:
    session, link = started
    reports, stop = _watch(session)
    _next(reports)
    stop()
    time.sleep(0.05)  # a report already under way may still land
    pings = link.seen.count("ping")
    while not reports.empty():
        reports.get()
    time.sleep(0.1)
    assert link.seen.count("ping") == pings
    assert reports.empty()


def test_closing_the_session_ends_the_watch_without_calling_it_lost(events: list[Event]) -> None:
    link = InProcessAgent()
    session = _session(link, events)
    reports, _ = _watch(session)
    assert _next(reports)[0] == "connected"
    session.close()
    time.sleep(0.05)
    rest = []
    while not reports.empty():
        rest.append(reports.get())
    assert all(status == "connected" for status, _ in rest), rest


def test_an_agent_without_ping_is_timed_with_uname_and_never_sent_ping(
    events: list[Event],
) -> None:
    """An agent from before Ping ended the session on any unknown op: this one does the
    same, so a Ping sent to it would show here as a lost channel."""

    def old(agent: Agent) -> Handler:
        def handle(sid: int, msg: p.Message) -> Any:
            if isinstance(msg, p.Ping):
                assert agent.channel is not None
                agent.channel.fail("protocol error from the supervisor: unknown op 'ping'")
                return None
            return agent.handle(sid, msg)

        return handle

    link = InProcessAgent(features=tuple(f for f in FEATURES if f != "ping"), handler=old)
    session = _session(link, events)
    try:
        reports, stop = _watch(session)
        for _ in range(3):
            status, rtt = _next(reports)
            assert status == "connected" and rtt is not None
        stop()
        assert "ping" not in link.seen and link.seen.count("uname") >= 4  # 1 at start
        assert session.channel is not None and session.channel.is_open
    finally:
        session.close()


def test_an_error_answer_to_ping_is_still_a_round_trip(events: list[Event]) -> None:
    def refusing(agent: Agent) -> Handler:
        def handle(sid: int, msg: p.Message) -> Any:
            if isinstance(msg, p.Ping):
                return p.ErrorReply(errno="EOPNOTSUPP", message="no ping here")
            return agent.handle(sid, msg)

        return handle

    link = InProcessAgent(handler=refusing)
    session = _session(link, events)
    try:
        reports, stop = _watch(session)
        status, rtt = _next(reports)
        stop()
        assert status == "connected" and rtt is not None
        assert session.channel is not None and session.channel.is_open
    finally:
        session.close()


# --- open streams and their close events ------------------------------------------------


class Server:
    """A TCP server standing for the pod's service: reads `expect` bytes, answers
    `answer` bytes, then ends as told ("close", "reset" or "linger": stays open)."""

    def __init__(self, expect: int, answer: int, end: str = "close") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.expect, self.answer, self.end = expect, answer, end
        self.got = 0
        self.read_all = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while self.got < self.expect:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                self.got += len(chunk)
            self.read_all.set()
            conn.sendall(bytes(self.answer))
            if self.end == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            elif self.end == "linger":
                self.release.wait(10)
            else:
                while conn.recv(65536):  # until the app's EOF, then close: a clean end
                    pass

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)
        self.listener.close()


def _connect_app(session: Session, port: int, pid: int = 4242, comm: str = "curl"
                 ) -> socket.socket:
    """What syscalls/net.py does for a blocking connect to 198.18.0.10:80 that the pod
    serves at 127.0.0.1:port."""
    bridge = session.open_tcp("127.0.0.1", port).result(5)
    assert not isinstance(bridge, p.ErrorReply), bridge
    bridge.opened_by(pid, comm, "198.18.0.10:80", "agent")
    where = session.relay_address(socket.AF_INET, False)
    assert where is not None
    app = socket.socket()
    app.bind(("127.0.0.1", 0))
    session.expect_tcp(app.getsockname(), bridge, ("198.18.0.10", 80))
    app.connect(where[1])
    return app


def _recv_all(sock: socket.socket, n: int) -> int:
    got = 0
    while got < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    return got


def _closes(events: list[Event]) -> list[Event]:
    return [e for e in events if e.syscall == "close"]


def test_open_streams_count_both_ways_and_the_end_is_one_close_event(
    started: tuple[Session, InProcessAgent], events: list[Event],
) -> None:
    session, _ = started
    sent, answer = 300_000, 5_000_000  # both beyond a chunk, the answer beyond a window
    server = Server(sent, answer)
    try:
        before = time.time()
        app = _connect_app(session, server.port)
        with app:
            app.sendall(bytes(sent))
            assert _recv_all(app, answer) == answer
            assert server.read_all.wait(5)
            [stream] = session.open_streams()
            assert stream == StreamStats(target="198.18.0.10:80", via="agent", pid=4242,
                                         comm="curl", opened=stream.opened, sent=sent,
                                         received=answer)
            assert before <= stream.opened <= time.time()
            assert _closes(events) == []
            app.shutdown(socket.SHUT_WR)
            assert app.recv(1) == b""  # the server's close came back through the pod
        _until(lambda: bool(_closes(events)))
    finally:
        server.close()
    [end] = _closes(events)
    assert (end.pid, end.comm, end.syscall, end.kind, end.target, end.via, end.result) == (
        4242, "curl", "close", "connect", "198.18.0.10:80", "agent", "0")
    assert end.detail == {"sent": sent, "received": answer}
    assert 0 < end.latency_us < 30e6
    assert session.open_streams() == []


def test_a_stream_the_pod_resets_ends_with_econnreset(
    started: tuple[Session, InProcessAgent], events: list[Event],
) -> None:
    session, _ = started
    server = Server(10, 20, end="reset")
    try:
        with _connect_app(session, server.port) as app:
            app.sendall(bytes(10))
            assert _recv_all(app, 20) == 20
            with pytest.raises(ConnectionResetError):
                while app.recv(100):
                    pass
        _until(lambda: bool(_closes(events)))
    finally:
        server.close()
    [end] = _closes(events)
    assert end.result == "-ECONNRESET"
    assert end.detail == {"sent": 10, "received": 20}


def test_streams_still_open_when_the_session_ends_are_reported(events: list[Event]) -> None:
    """The programs have all exited when the session closes: a stream whose program closed
    its end ended cleanly even if the pod had no time to answer; any other was cut."""
    session = _session(InProcessAgent(), events)
    done = Server(3, 4, end="linger")
    cut = Server(5, 6, end="linger")
    try:
        closed_app = _connect_app(session, done.port, pid=1)
        open_app = _connect_app(session, cut.port, pid=2)
        for app, n, m in ((closed_app, 3, 4), (open_app, 5, 6)):
            app.sendall(bytes(n))
            assert _recv_all(app, m) == m
        _until(lambda: sorted((s.sent, s.received) for s in session.open_streams())
               == [(3, 4), (5, 6)])
        closed_app.close()
        session.close()
        open_app.close()
    finally:
        done.close()
        cut.close()
    ends = {e.pid: (e.result, e.detail) for e in _closes(events)}
    assert ends == {1: ("0", {"sent": 3, "received": 4}),
                    2: ("-ECONNRESET", {"sent": 5, "received": 6})}
