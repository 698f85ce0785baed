"""The network side of a run: the agent, the channel, the relays, in one asyncio thread.

The tracer thread never blocks on the network. It asks the session for things
(`open_tcp`) and gets a concurrent Future back; the thread that
made the syscall stays parked until the Future completes, and `waker(tid)` turns
that completion into a wake-up the tracer's poll() sees.

TCP: the agent connects in the pod first, so a failure is the pod's own errno.
Only then does the tracer connect the program's socket to our loopback listener,
using a duplicate of the socket (pidfd_getfd): it knows the socket's local
address before the connect, registers it with `expect_tcp`, and the listener
accepts exactly that peer and closes anything else, so no other local user can
ride on the relay.

UDP: one loopback socket per remote address stands for that remote; the
program's datagrams to it go out from the pod through an agent UDP stream per
program socket, and replies come back from the relay socket whose address the
tracer rewrites to the remote's in recvfrom/recvmsg/getpeername.

Resolver files: the pod's resolv.conf, hosts, hostname and a `hosts: files dns`
nsswitch.conf are held in memfds and opened by the program as
/proc/<supervisor>/fd/N, so nothing is written to disk and nothing outlives us.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import os
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent_image import __version__
from agent_image import protocol as p
from agent_image.mux import Channel, ChannelClosed, DatagramBridge, TcpBridge
from supervisor.errors import AgentStartError
from supervisor.events import Event, EventBus
from supervisor.policy import NetworkPolicy, parse_resolv_conf
from supervisor.transport import spawn_agent
from syscalls import dnswire
from syscalls.net import ensure_bound

HANDSHAKE_TIMEOUT = 60.0
RESOLVER_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")
Addr = tuple[str, int]


@dataclass
class UdpSource:
    """A program socket that sends diverted datagrams, as the relays see it.

    Its pod-side UDP socket is opened on its first datagram, so a connect() of a
    UDP socket (glibc does one per address to sort getaddrinfo results) costs no
    round trip to the agent.
    """

    pid: int
    comm: str
    family: int  # the program socket's
    bridge: DatagramBridge | None = None
    waiting: list[tuple[Addr, bytes]] | None = None


class UdpRelay(asyncio.DatagramProtocol):
    """A loopback socket standing for one remote address."""

    def __init__(self, session: Session, remote: Addr, addr: Addr) -> None:
        self.session = session
        self.remote = remote
        self.addr = addr
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, src: Any) -> None:
        self.session.udp_forward((src[0], src[1]), self.remote, data)


class Session:
    """One agent session and everything that relays through it."""

    def __init__(self, agent_argv: list[str], bus: EventBus, *, dns: bool, outgoing: str,
                 local_cidrs: list[Any], agent: subprocess.Popen[bytes] | None = None) -> None:
        self.agent_argv = agent_argv
        self.bus = bus
        self.dns = dns
        self.policy = NetworkPolicy(
            outgoing=outgoing, dns=dns, local_cidrs=list(local_cidrs), nameservers=[]
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run_loop, name="mirrortrace-session",
                                       daemon=True)
        self.channel: Channel | None = None
        self.agent = agent
        self.agent_hello: p.Hello | None = None
        self.lost: str | None = None
        self.nodename: str | None = None
        self.pod_files: dict[bytes, bytes] = {}  # pod path -> path the program opens instead
        self._memfds: list[int] = []
        self._stderr_tail: deque[str] = deque(maxlen=5)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._woken: deque[tuple[int, concurrent.futures.Future[Any]]] = deque()
        self.tcp_expected: dict[Addr, tuple[TcpBridge, Addr]] = {}
        self.tcp_remote: dict[Addr, Addr] = {}  # program socket's local addr -> remote
        self.tcp_local: dict[Addr, Addr | None] = {}  # ... -> its pod-side local addr
        self._sources: dict[str, concurrent.futures.Future[Any]] = {}
        self.tcp_listeners: dict[int, tuple[socket.socket, Addr]] = {}
        self.tcp_inflight: dict[int, tuple[concurrent.futures.Future[Any], Addr]] = {}
        self.tcp_pending: set[Addr] = set()  # listeners standing for connects in progress
        self.udp_relays: dict[tuple[Addr, int], UdpRelay] = {}
        self.udp_remote: dict[Addr, Addr] = {}  # relay addr -> remote
        self.udp_sources: dict[Addr, UdpSource] = {}
        self._dns_pending: dict[tuple[Addr, int], tuple[float, UdpSource, str]] = {}
        self.started = time.time()

    # --- life cycle ---------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """Start the agent, shake hands, fetch the pod's view; or raise AgentStartError."""
        if self.agent is None:
            self.agent = spawn_agent(self.agent_argv)
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(timeout), self.loop)
        try:
            fut.result()
        except BaseException:
            self.close()
            raise

    async def _start(self, timeout: float) -> None:
        assert self.agent is not None
        self.channel = Channel("supervisor", software=f"mirrortrace {__version__}")
        await self.channel.open_pipes(self.agent.stdout, self.agent.stdin)
        await self.loop.connect_read_pipe(lambda: _AgentLog(self), self.agent.stderr)
        try:
            self.agent_hello = await self.channel.handshake(timeout)
        except ChannelClosed as exc:
            await asyncio.sleep(0.05)  # let the last stderr lines arrive
            status = self.agent.poll()
            how = f" (exit status {status})" if status is not None else ""
            tail = "; ".join(self._stderr_tail)
            raise AgentStartError(
                f"the agent ended before the handshake{how}: {tail or exc.reason}",
                "check that the agent command starts `mirrortrace-agent` and that nothing "
                "else writes to its stdout",
            ) from None
        self.channel.closed.add_done_callback(self._channel_closed)
        await self._fetch_pod_view()
        self._open_tcp_listeners()

    def _channel_closed(self, fut: asyncio.Future[str | None]) -> None:
        reason = fut.result()
        if self.lost is None and not self._closing:
            self.lost = reason or "the agent closed the channel"
            self.bus.notice(
                f"mirrortrace: lost the agent ({self.lost}); diverted connections now fail "
                "with ECONNRESET/ECONNREFUSED"
            )

    _closing = False

    def close(self) -> None:
        """End the session: goodbye to the agent, close relays, stop the thread (once)."""
        if self._closing:
            return
        self._closing = True
        if self.thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._close(), self.loop)
            try:
                fut.result(timeout=5)
            except (concurrent.futures.TimeoutError, Exception):  # noqa: BLE001
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        if self.agent is not None:
            for pipe in (self.agent.stdin, self.agent.stdout, self.agent.stderr):
                if pipe is not None:
                    pipe.close()  # EOF: an agent that never got our hello exits too
            try:
                self.agent.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
            except ChildProcessError:
                pass  # reaped by the tracer's waitpid(-1)
        for fd in self._memfds:
            os.close(fd)
        self._memfds.clear()
        for sock, _ in self.tcp_listeners.values():
            sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    async def _close(self) -> None:
        if self.channel is not None:
            self.channel.goodbye()
        for relay in self.udp_relays.values():
            if relay.transport is not None:
                relay.transport.close()
        for sock, _ in self.tcp_listeners.values():
            self.loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)

    # --- wake-ups for the tracer --------------------------------------------------------

    @property
    def wake_fd(self) -> int:
        return self._wake_r

    def waker(self, tid: int) -> Callable[[concurrent.futures.Future[Any]], None]:
        def wake(fut: concurrent.futures.Future[Any]) -> None:
            self._woken.append((tid, fut))
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass

        return wake

    def take_wakeups(self) -> list[tuple[int, concurrent.futures.Future[Any]]]:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while self._woken:
            out.append(self._woken.popleft())
        return out

    # --- events -------------------------------------------------------------------------

    def emit(self, call: Any, kind: str, target: str, via: str, result: int | str, *,
             detail: dict[str, Any] | None = None) -> None:
        if isinstance(result, int):
            result = "0" if result >= 0 else "-" + p.errno_name(-result)
        latency = int((time.monotonic() - call.started) * 1e6)
        self.bus.emit(Event(time.time(), call.tgid, call.comm, call.name, kind, target, via,
                            result, latency, detail))

    # --- the pod's view: resolver files and hostname ------------------------------------

    async def _fetch_pod_view(self) -> None:
        """The pod's hostname and resolver files, asked for all at once."""
        assert self.channel is not None
        paths = RESOLVER_FILES if self.dns else ()
        uname, *files = await asyncio.gather(
            self.channel.request(p.Uname()),
            *(self.channel.request(p.ReadFile(path=path)) for path in paths),
        )
        if isinstance(uname, p.UnameReply):
            self.nodename = uname.nodename
        if not self.dns:
            return
        for path, reply in zip(paths, files, strict=True):
            if isinstance(reply, p.FileData):
                self._serve_file(path, reply.blob)
                if path == "/etc/resolv.conf":
                    conf = parse_resolv_conf(reply.blob.decode(errors="replace"))
                    self.policy.nameservers = list(conf.nameservers)
            else:
                self.bus.notice(f"mirrortrace: the pod has no readable {path}; using this "
                                "machine's")
        if self.nodename:
            if b"/etc/hostname" not in self.pod_files:
                self._serve_file("/etc/hostname", f"{self.nodename}\n".encode())
            self._serve_file("/proc/sys/kernel/hostname", f"{self.nodename}\n".encode())
        self._serve_file("/etc/nsswitch.conf", _nsswitch_with_files_dns())

    def _serve_file(self, path: str, data: bytes) -> None:
        fd = os.memfd_create("mirrortrace" + path.replace("/", "-"), os.MFD_CLOEXEC)
        os.write(fd, data)
        self._memfds.append(fd)
        self.pod_files[path.encode()] = f"/proc/{os.getpid()}/fd/{fd}".encode()

    # --- TCP ----------------------------------------------------------------------------

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
        """Connect from the pod; resolves to a TcpBridge, or an ErrorReply."""
        return asyncio.run_coroutine_threadsafe(self._open_tcp(host, port), self.loop)

    async def _open_tcp(self, host: str, port: int) -> TcpBridge | p.ErrorReply:
        if self.channel is None or not self.channel.is_open:
            return p.ErrorReply(errno="ECONNREFUSED", message="the agent is gone")
        bridge = TcpBridge(self.channel)
        try:
            reply = await self.channel.request(p.Connect(host=host, port=port), endpoint=bridge)
        except ChannelClosed:
            return p.ErrorReply(errno="ECONNREFUSED", message="the agent is gone")
        if isinstance(reply, p.ErrorReply):
            return reply
        if isinstance(reply, p.Connected):
            bridge.pod_local = (reply.local_host, reply.local_port)  # type: ignore[attr-defined]
        return bridge

    PENDING = object()  # what `within` gives when time ran out first

    def within(self, fut: concurrent.futures.Future[Any], seconds: float
               ) -> concurrent.futures.Future[Any]:
        """fut's outcome (a result, or its exception as a value), or PENDING after seconds."""
        out: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def settle(value: Any) -> None:
            if not out.done():
                out.set_result(value)

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
            if isinstance(reply, TcpBridge):
                end = socket.socket(pend.family, socket.SOCK_STREAM)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                end.bind(pend.where)
                end.setblocking(False)
                try:
                    await asyncio.wait_for(self.loop.sock_connect(end, pend.app), 5)
                except (OSError, TimeoutError):
                    end.close()
                    reply.close()  # the program gave up on this socket meanwhile
                    return
                self.tcp_remote[pend.app] = pend.remote
                self.tcp_local[pend.app] = getattr(reply, "pod_local", None)

                def forget(key: Addr = pend.app) -> None:
                    self.tcp_remote.pop(key, None)
                    self.tcp_local.pop(key, None)

                reply._on_done = forget
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

    def expect_tcp(self, peer: Addr, bridge: TcpBridge, remote: Addr) -> None:
        """The program socket with local address `peer` is about to connect to us."""
        self.tcp_expected[peer] = (bridge, remote)

    def source_for(self, host: str) -> concurrent.futures.Future[Any]:
        """The pod's source address towards host (asked once per host): a str, or an
        ErrorReply."""
        fut = self._sources.get(host)
        if fut is None:
            fut = asyncio.run_coroutine_threadsafe(self._source_for(host), self.loop)
            self._sources[host] = fut
        return fut

    async def _source_for(self, host: str) -> str | p.ErrorReply:
        if self.channel is None or not self.channel.is_open:
            return p.ErrorReply(errno="ENETUNREACH", message="the agent is gone")
        try:
            reply = await self.channel.request(p.SourceFor(host=host, port=9))
        except ChannelClosed:
            return p.ErrorReply(errno="ENETUNREACH", message="the agent is gone")
        return reply.host if isinstance(reply, p.Source) else reply  # type: ignore[return-value]

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run fn in the session thread after delay seconds (from any thread)."""
        self.loop.call_soon_threadsafe(self.loop.call_later, delay, fn)

    def abandon_tcp(self, bridge: TcpBridge) -> None:
        self.loop.call_soon_threadsafe(bridge.close)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            key = (_unmap(peer[0]), peer[1])
            expected = self.tcp_expected.pop(key, None)
            if expected is None:
                conn.close()  # not a socket of the traced program
                continue
            bridge, remote = expected
            self.tcp_remote[key] = remote
            self.tcp_local[key] = getattr(bridge, "pod_local", None)
            conn.setblocking(False)

            def forget(key: Addr = key) -> None:
                self.tcp_remote.pop(key, None)
                self.tcp_local.pop(key, None)

            bridge._on_done = forget
            self.loop.create_task(self.loop.connect_accepted_socket(lambda b=bridge: b, conn))

    # --- UDP ----------------------------------------------------------------------------

    def udp_relay(self, remote: Addr, family: int) -> tuple[Addr, str]:
        """The loopback address standing for `remote`, as a socket of `family` writes it,
        and the loopback host the relay will see that socket's datagrams come from."""
        relay = self.udp_relays.get((remote, family))
        if relay is None:
            relay = self._new_udp_relay(remote, family)
            self.udp_relays[(remote, family)] = relay
        host, port = relay.addr
        if family == socket.AF_INET6 and "." in host:
            return ("::ffff:" + host, port), host
        return relay.addr, host

    def _new_udp_relay(self, remote: Addr, family: int) -> UdpRelay:
        sock = None
        if family == socket.AF_INET6:
            try:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                sock.bind(("::1", 0))
            except OSError:  # no IPv6 loopback: v4-mapped addresses reach the v4 relay
                if sock is not None:
                    sock.close()
                sock = None
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        relay = UdpRelay(self, remote, sock.getsockname()[:2])
        self.udp_remote[relay.addr] = remote

        def register() -> None:
            self.loop.create_task(self.loop.create_datagram_endpoint(lambda: relay, sock=sock))

        self.loop.call_soon_threadsafe(register)
        return relay

    def udp_source(self, src: Addr, pid: int, comm: str, family: int) -> None:
        """Datagrams from `src` reaching a relay come from the traced program: forward them."""
        if src not in self.udp_sources:
            self.udp_sources[src] = UdpSource(pid, comm, family)

    def udp_forward(self, src: Addr, remote: Addr, data: bytes) -> None:
        source = self.udp_sources.get(src)
        if source is None or self.channel is None or not self.channel.is_open:
            return  # not the traced program's, or the agent is gone: dropped, like a network
        if remote[1] == 53:
            self.dns_query_seen(source, remote, data)
        if source.bridge is not None:
            self.channel.send(
                p.FrameType.DATAGRAM, source.bridge.sid, p.pack_addr(*remote) + data
            )
        elif source.waiting is not None:
            source.waiting.append((remote, data))
        else:
            source.waiting = [(remote, data)]
            self.loop.create_task(self._open_udp_stream(src, source, remote))

    async def _open_udp_stream(self, src: Addr, source: UdpSource, remote: Addr) -> None:
        assert self.channel is not None
        bridge = DatagramBridge(self.channel, lambda h, pt, d: self._udp_reply(src, h, pt, d))
        try:
            reply = await self.channel.request(
                p.UdpOpen(family=6 if ":" in remote[0] else 4), endpoint=bridge
            )
        except ChannelClosed:
            return
        waiting, source.waiting = source.waiting or [], None
        if isinstance(reply, p.ErrorReply):
            return  # the pod could not open a UDP socket: the datagrams are lost
        source.bridge = bridge
        for dest, data in waiting:
            self.channel.send(p.FrameType.DATAGRAM, bridge.sid, p.pack_addr(*dest) + data)

    def _udp_reply(self, src: Addr, host: str, port: int, data: bytes) -> None:
        source = self.udp_sources.get(src)
        if source is None:
            return
        relay = self.udp_relays.get(((host, port), source.family))
        if relay is None:
            relay = self.udp_relays.get(((host, port), _other(source.family)))
        if relay is None or relay.transport is None:
            return  # a reply from an address the program never wrote to
        if port == 53:
            self.dns_reply_seen(src, (host, port), data)
        relay.transport.sendto(data, src)

    # --- DNS events ---------------------------------------------------------------------

    def dns_query_seen(self, source: UdpSource, remote: Addr, data: bytes) -> None:
        try:
            msg = dnswire.parse_message(data)
            desc = dnswire.describe_query(data)
        except ValueError:
            return
        key = (remote, msg.id)
        self._dns_pending[key] = (time.monotonic(), source, desc)
        if len(self._dns_pending) > 4096:
            self._dns_pending.pop(next(iter(self._dns_pending)))

    def dns_reply_seen(self, src: Addr, remote: Addr, data: bytes) -> None:
        try:
            msg = dnswire.parse_message(data)
            desc = dnswire.describe_response(data)
        except ValueError:
            return
        pending = self._dns_pending.pop((remote, msg.id), None)
        if pending is None:
            return
        started, source, query = pending
        result = "0" if msg.rcode == 0 else "-" + dnswire.rcode_name(msg.rcode)
        self.bus.emit(Event(time.time(), source.pid, source.comm, "sendto", "dns", query,
                            f"agent {remote[0]}:{remote[1]}", result,
                            int((time.monotonic() - started) * 1e6), {"answer": desc}))


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

    def close_listener(self, session: Session) -> None:
        self.listener.close()
        session.tcp_pending.discard(self.where)


class _AgentLog(asyncio.Protocol):
    """The agent's stderr: shown as `agent:` lines, and kept for error messages."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.session._stderr_tail.append(line)
                if self.session.agent_hello is not None:
                    # Before the handshake, lines go into the one error line instead.
                    self.session.bus.notice(f"agent: {line}")


def _other(family: int) -> int:
    return socket.AF_INET if family == socket.AF_INET6 else socket.AF_INET6


def _unmap(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _nsswitch_with_files_dns() -> bytes:
    """The local nsswitch.conf with its hosts line replaced by `files dns`.

    Only hosts changes: users and groups are still this machine's, and mdns/
    resolve modules would otherwise swallow `.local` cluster names before DNS.
    """
    try:
        with open("/etc/nsswitch.conf", "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        lines = []
    out = [ln for ln in lines if not ln.lstrip().startswith("hosts:")]
    out.append("hosts: files dns")
    return ("\n".join(out) + "\n").encode()
