"""The channel both sides share: requests, streams, flow control, failure."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar

import pytest

from agent_image import protocol as p
from agent_image.mux import Channel, ChannelClosed, TcpBridge


async def _pair(handler: Callable[[int, p.Message], Awaitable[p.Message | None]] | None = None,
                recv_window: int = p.INITIAL_WINDOW) -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    _OPEN.extend((a, b))
    sup = Channel("supervisor", recv_window=recv_window)
    agent = Channel("agent", handler)
    _CHANNELS.extend((sup, agent))
    await sup.open_socket(a)
    await agent.open_socket(b)
    await asyncio.gather(sup.handshake(2), agent.handshake(2))
    return sup, agent


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair: RST and half-close behave as on a network."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    _OPEN.extend((a, b))
    return a, b


_OPEN: list[socket.socket] = []
_CHANNELS: list[Channel] = []


async def _then_close(coro: Awaitable[None]) -> None:
    try:
        await asyncio.wait_for(coro, 20)
    finally:
        while _CHANNELS:
            _CHANNELS.pop().goodbye()
        await asyncio.sleep(0.01)  # let the transports finish closing


def run(coro: Awaitable[None]) -> None:
    """Run one test's coroutine; every channel and socket it made is closed afterwards."""
    try:
        asyncio.run(_then_close(coro))
    finally:
        while _OPEN:
            _OPEN.pop().close()


def test_requests_get_their_replies_and_errors_travel_as_data() -> None:
    async def handler(sid: int, msg: p.Message) -> p.Message:
        if isinstance(msg, p.ReadFile):
            raise FileNotFoundError(2, "No such file")
        return p.UnameReply(sysname="Linux", nodename=f"n{sid}", release="", version="",
                            machine="x86_64")

    async def main() -> None:
        sup, _ = await _pair(handler)
        replies = await asyncio.gather(*(sup.request(p.Uname()) for _ in range(50)))
        names = {r.nodename for r in replies}  # type: ignore[attr-defined]
        assert len(names) == 50  # fifty distinct request ids, each answered
        err = await sup.request(p.ReadFile(path="/nope"))
        assert err == p.ErrorReply(errno="ENOENT", message="No such file or directory")

    run(main())


def test_handlers_may_answer_at_once_and_a_bug_is_an_eio_answer_not_a_hang() -> None:
    def handler(sid: int, msg: p.Message) -> p.Message:
        if isinstance(msg, p.Stat):
            raise KeyError("a bug in a handler")
        return p.Done()

    async def main() -> None:
        sup, _ = await _pair(handler)  # type: ignore[arg-type]
        assert await sup.request(p.Uname()) == p.Done()
        err = await sup.request(p.Stat(path="/x"))
        assert isinstance(err, p.ErrorReply) and err.errno == "EIO" and "KeyError" in err.message
        assert sup.is_open

    run(main())


def test_request_soon_answers_through_its_future_and_fails_when_the_channel_ends() -> None:
    async def handler(sid: int, msg: p.Message) -> p.Message | None:
        if isinstance(msg, p.Stat):
            return None  # never answered
        return p.Done()

    async def main() -> None:
        sup, _ = await _pair(handler)
        assert await sup.request_soon(p.Uname()) == p.Done()
        waiting = sup.request_soon(p.Stat(path="/x"))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        sup.goodbye()
        with pytest.raises(ChannelClosed):
            await waiting
        with pytest.raises(ChannelClosed):
            await sup.request_soon(p.Uname())
        assert not sup._pending

    run(main())


def test_an_unserved_op_is_answered_not_fatal() -> None:
    async def main() -> None:
        sup, _ = await _pair(None)
        reply = await sup.request(p.Uname())
        assert isinstance(reply, p.ErrorReply) and reply.errno == "EOPNOTSUPP"
        assert sup.is_open

    run(main())


@dataclass
class Teleport(p.Message):
    """A message of a newer peer: never registered, so this side's decoder knows no such op."""

    op: ClassVar[str] = "teleport"


def test_an_unknown_request_op_is_answered_and_the_channel_stays_open() -> None:
    """An older agent must survive a newer supervisor's request (protocol.py's promise)."""

    async def handler(sid: int, msg: p.Message) -> p.Message:
        return p.Done()

    async def main() -> None:
        sup, agent = await _pair(handler)
        reply = await sup.request(Teleport())
        assert isinstance(reply, p.ErrorReply) and reply.errno == "EOPNOTSUPP"
        assert "teleport" in reply.message
        assert sup.is_open and agent.is_open
        assert await sup.request(p.Uname()) == p.Done()

    run(main())


def test_an_unknown_reply_op_fails_that_request_only() -> None:
    """A newer agent's answer this supervisor cannot read is that request's error."""

    async def handler(sid: int, msg: p.Message) -> p.Message:
        return Teleport() if isinstance(msg, p.Ping) else p.Done()

    async def main() -> None:
        sup, agent = await _pair(handler)
        reply = await sup.request(p.Ping())
        assert isinstance(reply, p.ErrorReply) and reply.errno == "EPROTO"
        assert sup.is_open and agent.is_open
        assert await sup.request(p.Uname()) == p.Done()

    run(main())


async def _bridged(recv_window: int = p.INITIAL_WINDOW
                   ) -> tuple[Channel, Channel, socket.socket, socket.socket, TcpBridge]:
    """A stream whose ends are socketpairs: app <-> sup bridge ~ agent bridge <-> server."""
    loop = asyncio.get_running_loop()
    server_side, server = tcp_pair()
    holder: dict[str, TcpBridge] = {}

    async def handler(sid: int, msg: p.Message) -> p.Message | None:
        bridge = TcpBridge(agent)
        bridge.sid = sid
        agent.streams[sid] = bridge
        holder["agent"] = bridge
        await loop.connect_accepted_socket(lambda: bridge, server_side)
        return p.Connected(local_host="198.18.0.2", local_port=1)

    sup, agent = await _pair(handler, recv_window)
    app, app_side = tcp_pair()
    bridge = TcpBridge(sup)
    reply = await sup.request(p.Connect(host="198.18.0.10", port=80), endpoint=bridge)
    assert isinstance(reply, p.Connected)
    await loop.connect_accepted_socket(lambda: bridge, app_side)
    app.setblocking(False)
    server.setblocking(False)
    return sup, agent, app, server, holder["agent"]


async def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while len(out) < n:
        chunk = await loop.sock_recv(sock, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_bytes_cross_both_ways_in_order_and_half_close_works() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        _, _, app, server, _ = await _bridged()
        payload = bytes(range(256)) * 40000  # 10 MB, larger than every window
        sending = loop.create_task(loop.sock_sendall(app, payload))
        assert await _recv_exactly(server, len(payload)) == payload
        await sending
        app.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(server, 10) == b""  # EOF reached the far end
        await loop.sock_sendall(server, b"still open the other way")
        assert await _recv_exactly(app, 24) == b"still open the other way"

    run(main())


def _sup_bridge(sup: Channel) -> TcpBridge:
    [bridge] = sup.streams.values()
    assert isinstance(bridge, TcpBridge)
    return bridge


def test_bridges_count_the_bytes_each_way_and_a_clean_end_has_no_error() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sup, _, app, server, agent_bridge = await _bridged()
        bridge = _sup_bridge(sup)
        up, down = 3 * p.MAX_DATA_CHUNK + 7, p.INITIAL_WINDOW + 12345  # chunked, windowed
        sending = loop.create_task(loop.sock_sendall(app, bytes(up)))
        assert len(await _recv_exactly(server, up)) == up
        await sending
        await loop.sock_sendall(server, bytes(down))
        assert len(await _recv_exactly(app, down)) == down
        # app -> pod is what the supervisor's bridge read from its socket, and the
        # agent's wrote to its own; pod -> app the other way round.
        assert (bridge.from_socket, bridge.to_socket) == (up, down)
        assert (agent_bridge.from_socket, agent_bridge.to_socket) == (down, up)
        app.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(server, 1) == b""
        server.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(app, 1) == b""
        await asyncio.sleep(0.05)
        assert bridge.socket_eof and bridge.end_error is None
        assert bridge.transport is not None and bridge.transport.is_closing()

    run(main())


def test_a_reset_stream_says_how_it_ended() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sup, _, app, server, agent_bridge = await _bridged()
        bridge = _sup_bridge(sup)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        server.close()
        with pytest.raises(ConnectionResetError):
            while await loop.sock_recv(app, 10):
                pass
        assert agent_bridge.end_error == "ECONNRESET"  # its socket broke
        assert bridge.end_error == "ECONNRESET"  # the peer's RESET said so
        assert not bridge.socket_eof

    run(main())


def test_a_reader_that_stops_reading_stops_the_writer() -> None:
    """Flow control: the far end not reading must push back, not fill memory."""

    async def main() -> None:
        _, _, app, server, agent_bridge = await _bridged()
        written = 0
        chunk = bytes(65536)
        for _ in range(2000):  # up to 128 MiB if nothing pushed back
            try:
                written += app.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.05)
                try:
                    written += app.send(chunk)
                except BlockingIOError:
                    break
            await asyncio.sleep(0)
        assert written < 16 * 2**20, f"{written} bytes accepted with nobody reading"
        assert agent_bridge.transport is not None
        assert agent_bridge.transport.get_write_buffer_size() <= p.INITIAL_WINDOW + 2**17
        server.close()

    run(main())


def test_a_reset_from_the_far_end_reaches_the_app_as_econnreset() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        _, _, app, server, _ = await _bridged()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        await loop.sock_sendall(server, b"x")
        server.close()
        assert await _recv_exactly(app, 1) == b"x"
        with pytest.raises(ConnectionResetError):
            while await loop.sock_recv(app, 10):
                pass

    run(main())


def test_losing_the_channel_resets_every_stream() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sup, agent, app, server, _ = await _bridged()
        agent.fail("going away")
        reason = await sup.closed
        assert reason is not None and "going away" in reason
        with pytest.raises(ConnectionResetError):
            while await loop.sock_recv(app, 10):
                pass
        with pytest.raises(ChannelClosed):
            await sup.request(p.Uname())
        server.close()

    run(main())


async def _raw_peer() -> tuple[Channel, socket.socket]:
    a, b = socket.socketpair()
    _OPEN.extend((a, b))
    sup = Channel("supervisor")
    _CHANNELS.append(sup)
    await sup.open_socket(a)
    b.setblocking(False)
    return sup, b


def test_a_channel_cut_in_the_middle_of_a_frame_says_so() -> None:
    async def main() -> None:
        sup, raw = await _raw_peer()
        hello = p.Hello(version=p.VERSION, role="agent").to_payload()
        frame = p.encode_frame(p.FrameType.HELLO, 0, hello)
        raw.send(frame + p.encode_frame(p.FrameType.DATA, 1, b"abcdef")[:7])
        raw.shutdown(socket.SHUT_WR)
        reason = await sup.closed
        assert reason is not None and "middle of a frame" in reason

    run(main())


def test_garbage_ends_the_session_and_tells_the_peer_why() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sup, raw = await _raw_peer()
        raw.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        reason = await sup.closed
        assert reason is not None and "protocol error" in reason
        received = b""
        while chunk := await loop.sock_recv(raw, 65536):
            received += chunk
        frames = p.FrameDecoder().feed(received)
        assert frames[0].type is p.FrameType.HELLO
        assert frames[-1].type is p.FrameType.ERROR
        assert b"exceeds" in frames[-1].payload
        assert b"b'HTTP/1.1 400" in frames[-1].payload  # shows what came instead

    run(main())


def test_a_peer_that_closes_before_its_hello_fails_the_handshake() -> None:
    async def main() -> None:
        sup, raw = await _raw_peer()
        raw.close()
        with pytest.raises(ChannelClosed, match="before its hello"):
            await sup.handshake(2)

    run(main())


def test_a_channel_that_waits_to_be_spoken_to_says_nothing_first() -> None:
    """An attached agent's first bytes would go to the container log: it answers only."""

    async def main() -> None:
        a, b = tcp_pair()
        quiet = Channel("agent", lambda sid, msg: p.Done(), speak_first=False)
        _CHANNELS.append(quiet)
        await quiet.open_socket(a)
        b.setblocking(False)
        await asyncio.sleep(0.1)
        with pytest.raises(BlockingIOError):
            b.recv(1)  # nothing was sent before the peer spoke
        sup = Channel("supervisor")
        _CHANNELS.append(sup)
        await sup.open_socket(b)
        hello = await sup.handshake(5)
        assert hello.role == "agent"
        assert await sup.request(p.Uname()) == p.Done()

    run(main())


def test_a_wider_receive_window_is_granted_once_the_stream_is_open() -> None:
    """A long-round-trip link asks for more in flight per stream than the protocol's
    INITIAL_WINDOW: the receiver grants the difference (nothing for an old agent to
    learn), and the pod's side may then send that much before it waits for credit."""

    async def main() -> None:
        wide = 4 * p.INITIAL_WINDOW
        sup, _, app, server, agent_bridge = await _bridged(recv_window=wide)
        bridge = _sup_bridge(sup)
        bridge.widen()
        await asyncio.sleep(0.05)
        assert agent_bridge._send_window == wide
        # and the data still arrives whole, in order
        payload = bytes(range(256)) * 20000
        loop = asyncio.get_running_loop()
        send = asyncio.ensure_future(loop.sock_sendall(server, payload))
        assert await _recv_exactly(app, len(payload)) == payload
        await send

    run(main())


def test_the_default_window_grants_nothing_extra() -> None:
    async def main() -> None:
        sup, _, _, _, agent_bridge = await _bridged()
        _sup_bridge(sup).widen()
        await asyncio.sleep(0.05)
        assert agent_bridge._send_window == p.INITIAL_WINDOW

    run(main())
