"""The UDP relay: the program's diverted datagrams, and the DNS events they carry.

One loopback socket per remote address stands for that remote. The program's
datagrams to it go out from the pod through an agent UDP stream per program
socket (opened on its first datagram, so a UDP connect costs no round trip),
and replies come back from the relay socket whose address the tracer rewrites
to the remote's in recvfrom/recvmsg/getpeername.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass
from typing import Any

from agent_image import protocol as p
from agent_image.mux import Channel, ChannelClosed, DatagramBridge
from supervisor.events import Event, EventBus
from syscalls import dnswire
from syscalls.net import unmap

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

    def __init__(self, session: UdpRelays, remote: Addr, addr: Addr) -> None:
        self.session = session
        self.remote = remote
        self.addr = addr
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, src: Any) -> None:
        self.session.udp_forward((src[0], src[1]), self.remote, data)


class UdpRelays:
    """The UDP half of the session (a mixin: Session provides loop, channel and bus)."""

    loop: asyncio.AbstractEventLoop
    channel: Channel | None
    bus: EventBus

    def _init_udp_relays(self) -> None:
        self._udp_refusing = False  # the agent is gone (see _refuse_udp)
        self.udp_relays: dict[tuple[Addr, int], UdpRelay] = {}
        self.udp_remote: dict[Addr, Addr] = {}  # relay addr -> remote
        self.udp_sources: dict[Addr, UdpSource] = {}
        self._dns_pending: dict[tuple[Addr, int], tuple[float, UdpSource, str, int]] = {}

    def _close_udp_relays(self) -> None:
        for relay in self.udp_relays.values():
            if relay.transport is not None:
                relay.transport.close()

    def _refuse_udp(self) -> None:
        """The agent is gone: from now on the kernel refuses what the program sends to a
        diverted address, as a network that refuses would.

        Dropping the datagrams instead would leave every lookup waiting out its
        resolver's timeout (5 s a try with glibc). With the relay sockets closed, a
        datagram to one of their ports gets ICMP port unreachable, and the program's
        connected socket ECONNREFUSED at once. Runs on the loop thread.
        """
        self._udp_refusing = True
        for relay in list(self.udp_relays.values()):
            if relay.transport is not None:
                relay.transport.close()

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
        if self._udp_refusing:
            sock.close()  # a port nobody listens on: what is sent there is refused
            return relay

        def register() -> None:
            if self._udp_refusing:
                sock.close()  # the agent went while this relay was being made
                return
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
            self._send_datagram(source, remote, data)
        elif source.waiting is not None:
            source.waiting.append((remote, data))
        else:
            source.waiting = [(remote, data)]
            self.loop.create_task(self._open_udp_stream(src, source))

    def _send_datagram(self, source: UdpSource, remote: Addr, data: bytes) -> None:
        assert self.channel is not None and source.bridge is not None
        host, port = remote
        if source.family == socket.AF_INET6 and "." in host:
            host = "::ffff:" + host  # the pod-side socket is dual-stack IPv6, like ours
        self.channel.send(p.FrameType.DATAGRAM, source.bridge.sid, p.pack_addr(host, port) + data)

    async def _open_udp_stream(self, src: Addr, source: UdpSource) -> None:
        """The pod-side socket of one program socket, of the same family (a v6 one is
        dual-stack there too, so one socket reaches IPv4 and IPv6 servers alike)."""
        assert self.channel is not None
        bridge = DatagramBridge(self.channel, lambda h, pt, d: self._udp_reply(src, h, pt, d))
        family = 6 if source.family == socket.AF_INET6 else 4
        try:
            reply = await self.channel.request(p.UdpOpen(family=family), endpoint=bridge)
        except ChannelClosed:
            return
        waiting, source.waiting = source.waiting or [], None
        if isinstance(reply, p.ErrorReply):
            return  # the pod could not open a UDP socket: the datagrams are lost
        source.bridge = bridge
        for dest, data in waiting:
            self._send_datagram(source, dest, data)

    def _udp_reply(self, src: Addr, host: str, port: int, data: bytes) -> None:
        source = self.udp_sources.get(src)
        if source is None:
            return
        host = unmap(host)
        relay = self.udp_relays.get(((host, port), source.family))
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
        self._dns_pending[key] = (time.monotonic(), source, desc, len(data))
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
        started, source, query, sent = pending
        result = "0" if msg.rcode == 0 else "-" + dnswire.rcode_name(msg.rcode)
        self.bus.emit(Event(time.time(), source.pid, source.comm, "sendto", "dns", query,
                            f"agent {remote[0]}:{remote[1]}", result,
                            int((time.monotonic() - started) * 1e6),
                            {"answer": desc, "sent": sent, "received": len(data)}))
