"""The network side of a run: the agent, the channel, the relays, in one asyncio thread.

The tracer thread never blocks on the network. It asks the session for things
(`open_tcp`) and gets a concurrent Future back; the thread that
made the syscall stays parked until the Future completes, and `waker(tid)` turns
that completion into a wake-up the tracer's poll() sees.

The relays themselves are supervisor/relay_tcp.py and supervisor/relay_udp.py,
mixed into Session so handlers see one object.

Resolver files: the pod's resolv.conf, hosts, hostname and a `hosts: files dns`
nsswitch.conf are held in memfds and opened by the program as
/proc/<supervisor>/fd/N, so nothing is written to disk and nothing outlives us.

For the live dashboard (which only reads): `watch_agent` reports the agent's
round-trip time now and then, `open_streams` lists the relayed TCP streams with
their byte counts, and every stream's end is a "close" event on the bus.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from agent_image import __version__
from agent_image import protocol as p
from agent_image.mux import Channel, ChannelClosed
from supervisor.environment import parse_environ
from supervisor.errors import AgentStartError
from supervisor.events import Event, EventBus
from supervisor.fs_policy import FsPolicy
from supervisor.policy import NetworkPolicy, parse_resolv_conf
from supervisor.relay_tcp import StreamStats, TcpRelays
from supervisor.relay_udp import UdpRelays
from supervisor.remote_files import RemoteFiles
from supervisor.transport import AgentLink

HANDSHAKE_TIMEOUT = 60.0
WRITE_BACK_TIMEOUT = 120.0
RESOLVER_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")
Addr = tuple[str, int]
AgentWatcher = Callable[[str, float | None], None]

__all__ = ["AgentWatcher", "Session", "StreamStats"]


class Session(TcpRelays, UdpRelays):
    """One agent session and everything that relays through it."""

    def __init__(self, link: AgentLink, bus: EventBus, *, dns: bool, outgoing: str,
                 local_cidrs: list[Any], want_env: bool = False,
                 fs_policy: FsPolicy | None = None) -> None:
        self.link = link
        self.bus = bus
        self.dns = dns
        self.policy = NetworkPolicy(
            outgoing=outgoing, dns=dns, local_cidrs=list(local_cidrs), nameservers=[]
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run_loop, name="mirrortrace-session",
                                       daemon=True)
        self.channel: Channel | None = None
        self.agent_hello: p.Hello | None = None
        self.lost: str | None = None
        self.nodename: str | None = None
        self.want_env = want_env
        self.pod_env: dict[str, str] | None = None  # fetched when want_env
        self.pod_files: dict[bytes, bytes] = {}  # pod path -> path the program opens instead
        self._memfds: list[int] = []
        self.fs: RemoteFiles | None = None
        if fs_policy is not None and fs_policy.active:
            self.fs = RemoteFiles(fs_policy, self.loop, lambda: self.channel, bus.notice)
        self._stderr_tail: deque[str] = deque(maxlen=5)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._woken: deque[tuple[int, concurrent.futures.Future[Any]]] = deque()
        self._sources: dict[str, concurrent.futures.Future[Any]] = {}
        self._watches: set[_AgentWatch] = set()
        self._init_tcp_relays()
        self._init_udp_relays()
        self.started = time.time()

    # --- life cycle ---------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        """Start the agent, shake hands, fetch the pod's view; or raise AgentStartError."""
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(timeout), self.loop)
        try:
            fut.result()
        except BaseException:
            self.close()
            raise

    async def _start(self, timeout: float) -> None:
        self.channel = Channel("supervisor", software=f"mirrortrace {__version__}",
                               recv_window=self.link.stream_window or p.INITIAL_WINDOW)
        await self.link.open(self.channel, self._agent_log)
        try:
            self.agent_hello = await self.channel.handshake(timeout)
        except ChannelClosed as exc:
            await asyncio.sleep(0.05)  # let the last stderr lines arrive
            how = self.link.ended_how()
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
            self._refuse_udp()
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
        if self.fs is not None and self.thread.is_alive() and self.lost is None:
            self.fs.flush(WRITE_BACK_TIMEOUT)  # COMMAND has ended: its last changes go back
        if self.thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._close(), self.loop)
            try:
                fut.result(timeout=5)
            except (concurrent.futures.TimeoutError, Exception):  # noqa: BLE001
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        self.link.close()
        if self.fs is not None:
            self.fs.close()
        for fd in self._memfds:
            os.close(fd)
        self._memfds.clear()
        for sock, _ in self.tcp_listeners.values():
            sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if not self.thread.is_alive():
            self.loop.close()  # last: the file cache's close still talks to it

    async def _close(self) -> None:
        for watch in list(self._watches):
            watch.cancel()  # our own goodbye is no lost agent
        await asyncio.sleep(0)  # a last look at the sockets: the programs' FINs are in
        self._end_tcp_streams()
        if self.channel is not None:
            self.channel.goodbye()
        await self.link.aclose()
        self._close_udp_relays()
        self._close_tcp_relays()
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

    # --- for the dashboard -----------------------------------------------------------

    def watch_agent(self, callback: AgentWatcher, every: float = 2.0) -> Callable[[], None]:
        """Call callback(status, rtt_ms) every `every` seconds until the returned function
        is called (from any thread), or the session closes.

        status is "connected", with rtt_ms the round trip of one Ping just answered
        (None when the last one is still unanswered), or once, at the end,
        "lost: <reason>" (rtt_ms None) when the channel to the agent closes. One Ping
        is in flight at most, and none while nobody watches. An agent too old to know
        Ping is timed with Uname, which every agent serves. callback runs in the
        session's thread: it must be quick (hand the values over, do not render).
        """
        watch = _AgentWatch(self, callback, every)
        try:
            self.loop.call_soon_threadsafe(watch.start)
        except RuntimeError:  # the session is over, its loop closed
            callback(f"lost: {self.lost or 'the session ended'}", None)
        return watch.stop

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
        uname, env, *files = await asyncio.gather(
            self.channel.request(p.Uname()),
            self.channel.request(p.GetEnv()) if self.want_env else asyncio.sleep(0),
            *(self.channel.request(p.ReadFile(path=path)) for path in paths),
        )
        if isinstance(uname, p.UnameReply):
            self.nodename = uname.nodename
        if isinstance(env, p.Environment):
            self.pod_env = parse_environ(env.blob)
        elif isinstance(env, p.ErrorReply):
            raise AgentStartError(
                f"the agent cannot read the target's environment: {env.message or env.errno}",
                "give the agent access to /proc/PID/environ, or run with --env local",
            )
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

    def _agent_log(self, line: str) -> None:
        """The agent's stderr: shown as `agent:` lines, and kept for error messages."""
        self._stderr_tail.append(line)
        if self.agent_hello is not None:
            # Before the handshake, lines go into the one error line instead.
            self.bus.notice(f"agent: {line}")

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run fn in the session thread after delay seconds (from any thread)."""
        self.loop.call_soon_threadsafe(self.loop.call_later, delay, fn)


class _AgentWatch:
    """One watch_agent caller: a timer on the session's loop and at most one probe.

    Everything but stop() runs in the session's thread."""

    def __init__(self, session: Session, callback: AgentWatcher, every: float) -> None:
        self.session = session
        self.callback = callback
        self.every = every
        self._timer: asyncio.TimerHandle | None = None
        self._probe: asyncio.Future[p.Message] | None = None
        self._sent = 0.0
        self._channel: Channel | None = None
        self._stopped = False

    def start(self) -> None:
        if self._stopped:
            return
        self.session._watches.add(self)
        self._tick()

    def _tick(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._timer = self.session.loop.call_later(self.every, self._tick)
        channel = self.session.channel
        hello = self.session.agent_hello
        if channel is None or hello is None:
            return  # not started yet: nothing to time
        if channel is not self._channel:
            self._channel = channel
            channel.closed.add_done_callback(self._closed)
        if not channel.is_open:
            return  # _closed reports it
        if self._probe is not None:
            self.callback("connected", None)  # the last one is still unanswered
            return
        # An agent from before Ping would end the session on it: time Uname instead.
        probe = p.Ping() if "ping" in hello.features else p.Uname()
        self._sent = time.monotonic()
        self._probe = channel.request_soon(probe)
        self._probe.add_done_callback(self._answered)

    def _answered(self, fut: asyncio.Future[p.Message]) -> None:
        self._probe = None
        if self._stopped or fut.cancelled() or fut.exception() is not None:
            return  # ChannelClosed: _closed reports it
        # Any answer, an ErrorReply too, is a round trip.
        self.callback("connected", (time.monotonic() - self._sent) * 1000.0)

    def _closed(self, fut: asyncio.Future[str | None]) -> None:
        if self._stopped:
            return
        self.cancel()
        reason = self.session.lost or fut.result() or "the agent closed the channel"
        self.callback(f"lost: {reason}", None)

    def cancel(self) -> None:
        """Stop, in the session's thread."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._channel is not None:
            self._channel.closed.remove_done_callback(self._closed)
        self.session._watches.discard(self)

    def stop(self) -> None:
        """Stop, from any thread; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.session.loop.call_soon_threadsafe(self.cancel)
        except RuntimeError:
            pass  # the loop is closed: the session's close stopped us already


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
