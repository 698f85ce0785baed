"""The TCP relay: the program's diverted connections, joined to agent streams.

The agent connects in the pod first, so a failure is the pod's own errno. Only
then is the program's socket connected to our loopback listener, through a
pidfd_getfd duplicate (syscalls/net.py): its local address is known before the
connect and registered with `expect_tcp`, so the listener accepts exactly that
peer and closes anything else; no other local user can ride on the relay.

A connect the program will not wait for (non-blocking, or past SO_SNDTIMEO)
is left really connecting to a listener that drops its SYNs and completed by
a TCP simultaneous open when the pod answers (`start_pending`).

Each stream joined to a program socket is counted (bytes each way, in TcpBridge)
and listed by `open_streams` while it lasts; when it ends, one "close" event
carries its totals, so a replay of an --events file has them too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent_image import protocol as p
from agent_image.mux import Channel, ChannelClosed, TcpBridge
from supervisor.events import Event, EventBus, StreamStats
from syscalls.net import ensure_bound, unmap

Addr = tuple[str, int]


class RelayBridge(TcpBridge):
    """A stream to the pod, what the pod said about its end of it, and who asked for it."""

    pod_local: Addr | None = None  # the pod-side socket's address, for getsockname
    # Set by opened_by (syscalls/net.py) before the stream can join the program's socket.
    target = ""
    via = ""
    pid = 0
    comm = ""
    opened = 0.0  # time.time() when it joined the program's socket
    _since = 0.0  # the same, monotonic: how long it lasted

    def __init__(self, channel: Channel, relays: TcpRelays) -> None:
        super().__init__(channel)
        self._relays = relays

    def opened_by(self, pid: int, comm: str, target: str, via: str) -> None:
        """Who connected, and the target and via its connect event showed."""
        self.pid, self.comm, self.target, self.via = pid, comm, target, via

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.pid and not self._done and self._reset is None:
            self.opened = time.time()
            self._since = time.monotonic()
            self._relays._stream_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._relays._stream_ended(self, self.end_error)

    def stats(self) -> StreamStats:
        # Plain int reads: safe from another thread, at most a chunk behind.
        return StreamStats(self.target, self.via, self.pid, self.comm, self.opened,
                           self.from_socket, self.to_socket)


class TcpRelays:
    """The TCP half of the session (a mixin: Session provides loop and channel)."""

    loop: asyncio.AbstractEventLoop
    channel: Channel | None
    bus: EventBus

    def _init_tcp_relays(self) -> None:
        self.tcp_expected: dict[Addr, tuple[RelayBridge, Addr]] = {}
        self.tcp_remote: dict[Addr, Addr] = {}  # program socket's local addr -> remote
        self.tcp_local: dict[Addr, Addr | None] = {}  # ... -> its pod-side local addr
        self.tcp_listeners: dict[int, tuple[socket.socket, Addr]] = {}
        self.tcp_inflight: dict[int, tuple[concurrent.futures.Future[Any], Addr]] = {}
        self.tcp_pending: set[Addr] = set()  # listeners standing for connects in progress
        # Streams joined to a program socket, by stream id. Changed on the loop thread
        # (once per stream, never per chunk) and read from others, under the lock.
        self._tcp_open: dict[int, RelayBridge] = {}
        self._tcp_open_lock = threading.Lock()

    def _close_tcp_relays(self) -> None:
        for sock, _ in self.tcp_listeners.values():
            self.loop.remove_reader(sock.fileno())

    def open_streams(self) -> list[StreamStats]:
        """The relayed TCP streams open now, oldest first (from any thread)."""
        with self._tcp_open_lock:
            bridges = list(self._tcp_open.values())
        return [b.stats() for b in bridges]

    def _stream_opened(self, bridge: RelayBridge) -> None:
        with self._tcp_open_lock:
            self._tcp_open[bridge.sid] = bridge

    def _stream_ended(self, bridge: RelayBridge, error: str | None) -> None:
        """One "close" event per stream: its connect event's target and via, how long it
        was open (latency_us) and the bytes each way (detail)."""
        with self._tcp_open_lock:
            if self._tcp_open.get(bridge.sid) is not bridge:
                return  # never joined a program socket, or already reported
            del self._tcp_open[bridge.sid]
        self.bus.emit(Event(
            time.time(), bridge.pid, bridge.comm, "close", "connect", bridge.target,
            bridge.via, "0" if error is None else "-" + error,
            int((time.monotonic() - bridge._since) * 1e6),
            {"sent": bridge.from_socket, "received": bridge.to_socket},
        ))

    def _end_tcp_streams(self) -> None:
        """Report the streams still open as the session ends (before its goodbye resets
        them): one whose program already closed its end (every program has exited by
        now) ended cleanly; the pod's side just had no time to answer the EOF."""
        with self._tcp_open_lock:
            bridges = list(self._tcp_open.values())
        for bridge in bridges:
            self._stream_ended(bridge, None if bridge.socket_eof else "ECONNRESET")

    def _open_tcp_listeners(self) -> None:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, 0))
            except OSError:
                continue  # no IPv6 loopback here: v6 sockets use the v4-mapped listener
            sock.listen(4096)
            sock.setblocking(False)
            self.tcp_listeners[family] = (sock, sock.getsockname()[:2])
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def relay_address(self, family: int, v6only: bool) -> tuple[int, Addr] | None:
        """Where a program socket of `family` should connect to reach our listener."""
        if family in self.tcp_listeners:
            return family, self.tcp_listeners[family][1]
        if family == socket.AF_INET6 and not v6only and socket.AF_INET in self.tcp_listeners:
            host, port = self.tcp_listeners[socket.AF_INET][1]
            return socket.AF_INET6, ("::ffff:" + host, port)
        return None

    def is_tcp_relay(self, addr: Addr) -> bool:
        return addr in self.tcp_pending or any(
            listen_addr == addr for _, listen_addr in self.tcp_listeners.values()
        )

    def open_tcp(self, host: str, port: int) -> concurrent.futures.Future[Any]:
        """Connect from the pod; resolves to a RelayBridge, or an ErrorReply."""
        return asyncio.run_coroutine_threadsafe(self._open_tcp(host, port), self.loop)

    async def _open_tcp(self, host: str, port: int) -> RelayBridge | p.ErrorReply:
        if self.channel is None or not self.channel.is_open:
            return p.ErrorReply(errno="ECONNREFUSED", message="the agent is gone")
        bridge = RelayBridge(self.channel, self)
        try:
            reply = await self.channel.request(p.Connect(host=host, port=port), endpoint=bridge)
        except ChannelClosed:
            return p.ErrorReply(errno="ECONNREFUSED", message="the agent is gone")
        if isinstance(reply, p.ErrorReply):
            return reply
        if isinstance(reply, p.Connected):
            bridge.pod_local = (reply.local_host, reply.local_port)
        bridge.widen()
        return bridge

    PENDING = object()  # what `within` gives when time ran out first

    def within(self, fut: concurrent.futures.Future[Any], seconds: float
               ) -> concurrent.futures.Future[Any]:
        """fut's outcome (a result, or its exception as a value), or PENDING after seconds."""
        out: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def settle(value: Any) -> None:
            try:
                out.set_result(value)
            except concurrent.futures.InvalidStateError:
                pass  # the other one came first (they may race from two threads)

        fut.add_done_callback(lambda f: settle(f.exception() or f.result()))
        self.loop.call_soon_threadsafe(self.loop.call_later, seconds, settle, self.PENDING)
        return out

    def start_pending(self, sock: socket.socket, remote: Addr,
                      fut: concurrent.futures.Future[Any]) -> None:
        """Leave the program's socket connecting until the pod answers (see _finish_pending).

        It connects to a listener whose accept queue is full, so the kernel drops
        its SYNs: the socket stays in SYN_SENT, not writable, SO_ERROR 0, exactly
        what a program sees while a real handshake is under way. Takes `sock`.
        """
        family = sock.family
        host = "::1" if family == socket.AF_INET6 and socket.AF_INET6 in self.tcp_listeners \
            else "127.0.0.1"
        lfam = socket.AF_INET6 if host == "::1" else socket.AF_INET
        listener = socket.socket(lfam, socket.SOCK_STREAM)
        filler = socket.socket(lfam, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            listener.bind((host, 0))
            listener.listen(0)
            where = listener.getsockname()[:2]
            filler.connect(where)  # backlog 0 holds one: from now on SYNs are dropped
            app = ensure_bound(sock, host)
            target = ("::ffff:" + where[0], where[1]) if lfam != family else where
            flags = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
            fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)
            try:
                err = sock.connect_ex(target)
            finally:
                fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, flags)
            if err != errno.EINPROGRESS:
                raise OSError(err, os.strerror(err))
        except OSError:
            listener.close()
            filler.close()
            raise
        self.tcp_pending.add(where)
        pending = _Pending(sock, listener, filler, where, app, remote, lfam)
        fut.add_done_callback(
            lambda f: self.loop.call_soon_threadsafe(
                lambda: self.loop.create_task(self._finish_pending(pending, f))
            )
        )

    async def _finish_pending(self, pend: _Pending, fut: concurrent.futures.Future[Any]
                              ) -> None:
        """The pod answered a connect the program is waiting for in SYN_SENT.

        Success: a socket bound to the very address the program is connecting to
        connects back to it: a TCP simultaneous open (RFC 793 §3.4), so the
        program's handshake completes at once and that socket is the relay end.
        Refused: the listener goes away and the program's next SYN gets an RST
        (ECONNREFUSED). Anything else: TCP_USER_TIMEOUT ends the program's
        handshake at its next retransmission with ETIMEDOUT.
        """
        reply = fut.exception() or fut.result()
        close_listener_in = 0.0
        try:
            if isinstance(reply, RelayBridge):
                end = socket.socket(pend.family, socket.SOCK_STREAM)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                end.bind(pend.where)
                end.setblocking(False)

                def forget(key: Addr = pend.app) -> None:
                    self.tcp_remote.pop(key, None)
                    self.tcp_local.pop(key, None)

                # Known before the handshake completes: the program may ask at once.
                self.tcp_remote[pend.app] = pend.remote
                self.tcp_local[pend.app] = reply.pod_local
                reply.on_done = forget
                try:
                    await asyncio.wait_for(self.loop.sock_connect(end, pend.app), 5)
                except (OSError, TimeoutError):
                    end.close()
                    forget()
                    reply.close()  # the program gave up on this socket meanwhile
                    return
                await self.loop.connect_accepted_socket(lambda: reply, end)
            elif not (isinstance(reply, p.ErrorReply) and reply.errno == "ECONNREFUSED"):
                pend.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1)
                close_listener_in = 10.0  # until then its SYNs must keep being dropped
        finally:
            pend.sock.close()
            pend.filler.close()
            if close_listener_in:
                self.loop.call_later(close_listener_in, pend.close_listener, self)
            else:
                pend.close_listener(self)

    def expect_tcp(self, peer: Addr, bridge: RelayBridge, remote: Addr) -> None:
        """The program socket with local address `peer` is about to connect to us.

        Its remote is known from now on: the program may ask getpeername the moment
        its connect returns, before our listener has even accepted.
        """
        self.tcp_expected[peer] = (bridge, remote)
        self.tcp_remote[peer] = remote
        self.tcp_local[peer] = bridge.pod_local

        def forget() -> None:
            self.tcp_remote.pop(peer, None)
            self.tcp_local.pop(peer, None)

        bridge.on_done = forget

    def abandon_tcp(self, bridge: TcpBridge) -> None:
        for peer, (expected, _) in list(self.tcp_expected.items()):
            if expected is bridge:
                self.tcp_expected.pop(peer, None)
                self.tcp_remote.pop(peer, None)
                self.tcp_local.pop(peer, None)
        self.loop.call_soon_threadsafe(bridge.close)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            key = (unmap(peer[0]), peer[1])
            expected = self.tcp_expected.pop(key, None)
            if expected is None:
                conn.close()  # not a socket of the traced program
                continue
            bridge, _ = expected
            conn.setblocking(False)
            self.loop.create_task(self.loop.connect_accepted_socket(lambda b=bridge: b, conn))


@dataclass
class _Pending:
    """A program connect left in SYN_SENT while the pod answers (Session.start_pending)."""

    sock: socket.socket  # our duplicate of the program's socket
    listener: socket.socket
    filler: socket.socket
    where: Addr  # the listener's address: what the program is connecting to
    app: Addr  # the program socket's address, as the listener sees it
    remote: Addr
    family: int

    def close_listener(self, session: TcpRelays) -> None:
        self.listener.close()
        session.tcp_pending.discard(self.where)
