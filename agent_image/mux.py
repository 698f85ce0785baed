"""The channel: frames of agent_image.protocol multiplexed over one byte stream.

Both ends use this module, so the stream bookkeeping, flow control and failure
handling exist once. A Channel sits on an asyncio read transport and a write
transport (two pipes for `--agent-exec` and the agent's stdin/stdout, one
socket for tests). Streams are endpoints registered by id; the two kinds here
bridge a real socket to a stream (TcpBridge for TCP, DatagramBridge for UDP).

Failure model: any protocol violation or a channel that ends in the middle of a
frame ends the session with a clear reason on both sides; every open stream is
then reset, and a TCP stream reset reaches its socket as an RST so the program
using it sees ECONNRESET, as it would if the network broke.

Standard library only: this module ships in the agent image.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import inspect
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from agent_image import protocol as p

# A handler answers at once (a message, or None when it replies by itself) or returns an
# awaitable for answers that must wait.
RequestHandler = Callable[
    [int, p.Message], "p.Message | None | Awaitable[p.Message | None]"
]
_LINGER_RST = struct.pack("ii", 1, 0)
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20


class ChannelClosed(Exception):
    """The channel ended; `reason` says how (None for a clean goodbye or EOF)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "channel closed")
        self.reason = reason


class StreamEndpoint:
    """One side of a stream; subclasses override what their kind of stream receives."""

    sid = 0

    def on_data(self, data: bytes) -> None:
        raise p.ProtocolError("DATA on a stream that carries no bytes")

    def on_window(self, credit: int) -> None:
        raise p.ProtocolError("WINDOW on a stream without flow control")

    def on_eof(self) -> None:
        raise p.ProtocolError("EOF on a stream that carries no bytes")

    def on_datagram(self, host: str, port: int, data: bytes) -> None:
        raise p.ProtocolError("DATAGRAM on a byte stream")

    def on_reset(self, reason: p.Reset) -> None:
        """The peer abandoned the stream (or the channel died)."""


class Channel:
    """A multiplexed session with the peer: requests, responses and streams."""

    def __init__(
        self,
        role: str,
        handler: RequestHandler | None = None,
        *,
        software: str = "",
        features: tuple[str, ...] = (),
        speak_first: bool = True,
        recv_window: int = p.INITIAL_WINDOW,
    ) -> None:
        self.role = role
        # How many bytes of a stream the peer may have in flight towards us. Beyond the
        # protocol's INITIAL_WINDOW the extra is granted when a stream opens
        # (TcpBridge.widen): receiver-driven, like HTTP/2's, so it needs no protocol
        # change and older agents obey it. A transport with a long round trip needs
        # it: a stream moves at most one window per round trip.
        self.recv_window = max(recv_window, p.INITIAL_WINDOW)
        # An agent reached through `kubectl attach` must not speak first: what it writes
        # before anyone attached goes to the container log, not to us.
        self._speak_first = speak_first
        self._hello_sent = False
        self.peer_role = "agent" if role == "supervisor" else "supervisor"
        self._handler = handler
        self._software = software
        self._features = list(features)
        self._decoder = p.FrameDecoder()
        self._writer: asyncio.WriteTransport | None = None
        self._reader: asyncio.ReadTransport | None = None
        self._next_id = 1 if role == "supervisor" else 2
        self._pending: dict[int, asyncio.Future[p.Message]] = {}
        self.streams: dict[int, StreamEndpoint] = {}
        self._loop = asyncio.get_running_loop()
        self.peer_hello: asyncio.Future[p.Hello] = self._loop.create_future()
        self.closed: asyncio.Future[str | None] = self._loop.create_future()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- attaching to a transport -----------------------------------------------------

    async def open_pipes(self, read_file: Any, write_file: Any) -> None:
        """Run over a readable and a writable file object (pipes, sockets, ttys)."""
        for f in (read_file, write_file):
            _grow_pipe(f)
        # Writer first, hello queued before the reader exists: whatever arrives (even
        # garbage) is then answered on a channel that can already speak.
        self._writer, _ = await self._loop.connect_write_pipe(
            lambda: _WriteSide(self), write_file
        )
        self._send_hello()
        self._reader, _ = await self._loop.connect_read_pipe(
            lambda: _ReadSide(self), read_file
        )

    async def open_socket(self, sock: socket.socket) -> None:
        """Run over one connected stream socket (used by tests and the demo bridge)."""
        transport, _ = await self._loop.connect_accepted_socket(lambda: _SocketSide(self), sock)
        self._reader = transport
        self._writer = transport
        self._send_hello()

    def attach(self, transport: Any) -> None:
        """Run over a transport of any kind (write, is_closing, close) that feeds
        data_received, eof_received and connection_lost itself: the Kubernetes
        websocket (supervisor/k8s_ws.py)."""
        self._reader = transport
        self._writer = transport
        self._send_hello()

    def _send_hello(self) -> None:
        if not self._speak_first and not self.peer_hello.done():
            return  # sent when the peer's hello arrives
        if self._hello_sent:
            return
        self._hello_sent = True
        hello = p.Hello(
            version=p.VERSION,
            role=self.role,
            software=self._software,
            features=self._features,
            pid=os.getpid(),
        )
        self.send(p.FrameType.HELLO, 0, hello.to_payload())

    async def handshake(self, timeout: float | None = None) -> p.Hello:
        """Wait for the peer's hello; raises ChannelClosed if the channel ends first."""
        done, _ = await asyncio.wait(
            {self.peer_hello, self.closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if self.peer_hello in done:
            return self.peer_hello.result()
        if self.closed in done:
            raise ChannelClosed(self.closed.result() or "peer closed the channel before its hello")
        raise ChannelClosed(f"no hello from the {self.peer_role} within {timeout:g} s")

    # --- sending ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return not self.closed.done()

    def send(self, ftype: p.FrameType, stream: int, payload: bytes = b"") -> None:
        if self._writer is None or self._writer.is_closing() or self.closed.done():
            return
        self._writer.write(p.encode_frame(ftype, stream, payload))

    def new_stream_id(self) -> int:
        sid = self._next_id
        self._next_id += 2
        return sid

    async def request(self, msg: p.Message, endpoint: StreamEndpoint | None = None) -> p.Message:
        """Send a request and wait for its reply (an ErrorReply is returned, not raised).

        An endpoint given here is registered before the request leaves, so data the
        peer sends right after its reply can never arrive at an unknown stream.
        """
        if self.closed.done():
            raise ChannelClosed(self.closed.result())
        sid = self.new_stream_id()
        fut: asyncio.Future[p.Message] = self._loop.create_future()
        self._pending[sid] = fut
        if endpoint is not None:
            endpoint.sid = sid
            self.streams[sid] = endpoint
        self.send(p.FrameType.REQUEST, sid, msg.to_payload())
        try:
            reply = await fut
        finally:
            self._pending.pop(sid, None)
        if isinstance(reply, p.ErrorReply) and endpoint is not None:
            self.streams.pop(sid, None)
        return reply

    def request_soon(self, msg: p.Message) -> asyncio.Future[p.Message]:
        """Send a request now; its reply (or ChannelClosed) arrives in the future. For
        callers that want a callback rather than a coroutine."""
        fut: asyncio.Future[p.Message] = self._loop.create_future()
        if self.closed.done():
            fut.set_exception(ChannelClosed(self.closed.result()))
            return fut
        sid = self.new_stream_id()
        self._pending[sid] = fut
        fut.add_done_callback(lambda _: self._pending.pop(sid, None))
        self.send(p.FrameType.REQUEST, sid, msg.to_payload())
        return fut

    def respond(self, sid: int, reply: p.Message) -> None:
        self.send(p.FrameType.RESPONSE, sid, reply.to_payload())

    def reset(self, sid: int, reason: p.Reset | None = None) -> None:
        """Abandon a stream: tell the peer and forget it locally."""
        if self.streams.pop(sid, None) is not None or sid in self._pending:
            self.send(p.FrameType.RESET, sid, (reason or p.Reset()).to_payload())

    def goodbye(self, reason: str = "") -> None:
        """End the session cleanly: the peer sees GOODBYE, then end of stream."""
        if self.closed.done():
            return
        self.send(p.FrameType.GOODBYE, 0, p.Goodbye(reason=reason).to_payload())
        self._finish(None)

    def fail(self, reason: str) -> None:
        """End the session because of an error, telling the peer why if it still listens."""
        if self.closed.done():
            return
        self.send(p.FrameType.ERROR, 0, reason.encode()[:4096])
        self._finish(reason)

    def _finish(self, reason: str | None) -> None:
        if self.closed.done():
            return
        self.closed.set_result(reason)
        gone = ChannelClosed(reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(gone)
        self._pending.clear()
        streams, self.streams = self.streams, {}
        lost = p.Reset(errno="ECONNRESET", message=reason or "channel closed")
        for endpoint in streams.values():
            endpoint.on_reset(lost)
        for task in self._tasks:
            task.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._reader is not None and self._reader is not self._writer:
            self._reader.close()

    # --- receiving ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed.done():
            return
        try:
            for frame in self._decoder.feed(data):
                self._dispatch(frame)
                if self.closed.done():
                    return
            if self._decoder.error is not None:
                raise self._decoder.error
        except p.ProtocolError as exc:
            hint = ""
            if not self.peer_hello.done():
                hint = (
                    f" (it began with {data[:24]!r}: is something else writing to the "
                    f"{self.peer_role}'s stdout?)"
                )
            self.fail(f"protocol error from the {self.peer_role}: {exc}{hint}")

    def eof_received(self) -> None:
        if self._decoder.pending:
            self._finish(
                f"the {self.peer_role} closed the channel in the middle of a frame "
                f"({self._decoder.pending} bytes of it arrived)"
            )
        elif not self.peer_hello.done():
            self._finish(f"the {self.peer_role} closed the channel before its hello")
        else:
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            if exc is not None and not self.peer_hello.done():
                self._finish(f"the {self.peer_role} closed the channel before its hello ({exc})")
            elif exc is not None:
                self._finish(f"channel to the {self.peer_role} broke: {exc}")
            else:
                self.eof_received()

    def _dispatch(self, frame: p.Frame) -> None:
        ftype, sid = frame.type, frame.stream
        if ftype is p.FrameType.HELLO:
            if self.peer_hello.done():
                raise p.ProtocolError("second hello")
            hello = p.check_hello(p.decode_message(frame.payload), self.peer_role)
            self.peer_hello.set_result(hello)  # type: ignore[arg-type]
            self._send_hello()  # now, if we were waiting to be spoken to
            return
        if not self.peer_hello.done():
            raise p.ProtocolError(f"{ftype.name} before hello")
        if ftype is p.FrameType.DATA:
            endpoint = self.streams.get(sid)
            if endpoint is not None:
                endpoint.on_data(frame.payload)
        elif ftype is p.FrameType.WINDOW:
            credit = p.decode_window(frame.payload)
            endpoint = self.streams.get(sid)
            if endpoint is not None:
                endpoint.on_window(credit)
        elif ftype is p.FrameType.DATAGRAM:
            host, port, data = p.unpack_addr(frame.payload)
            endpoint = self.streams.get(sid)
            if endpoint is not None:
                endpoint.on_datagram(host, port, data)
        elif ftype is p.FrameType.EOF:
            endpoint = self.streams.get(sid)
            if endpoint is not None:
                endpoint.on_eof()
        elif ftype is p.FrameType.RESET:
            msg = p.decode_message(frame.payload)
            reason = msg if isinstance(msg, p.Reset) else p.Reset()
            endpoint = self.streams.pop(sid, None)
            if endpoint is not None:
                endpoint.on_reset(reason)
            fut = self._pending.get(sid)
            if fut is not None and not fut.done():
                fut.set_result(p.ErrorReply(errno=reason.errno, message=reason.message))
        elif ftype is p.FrameType.RESPONSE:
            fut = self._pending.get(sid)
            if fut is None:
                raise p.ProtocolError(f"response to unknown request {sid}")
            try:
                reply = p.decode_message(frame.payload)
            except p.UnknownOp as exc:  # a newer peer's reply: an error for this request only
                reply = p.ErrorReply(errno="EPROTO", message=str(exc))
            if not fut.done():
                fut.set_result(reply)
        elif ftype is p.FrameType.REQUEST:
            try:
                msg = p.decode_message(frame.payload)
            except p.UnknownOp as exc:  # a newer peer's request: say so, stay open
                self.respond(sid, p.ErrorReply(errno="EOPNOTSUPP", message=str(exc)))
                return
            self._start_request(sid, msg)
        elif ftype is p.FrameType.GOODBYE:
            self._finish(None)
        elif ftype is p.FrameType.ERROR:
            text = frame.payload.decode(errors="replace")
            self._finish(f"the {self.peer_role} reported an error: {text}")

    def _start_request(self, sid: int, msg: p.Message) -> None:
        """Run the handler now; only an answer that must wait (a connect) becomes a task,
        so a file request is answered in the same loop iteration it arrived in."""
        if self._handler is None:
            self.respond(sid, p.ErrorReply(errno="EOPNOTSUPP", message=f"{msg.op} not served"))
            return
        try:
            reply = self._handler(sid, msg)
        except Exception as exc:  # noqa: BLE001 - any failure is the requester's answer
            self.respond(sid, _error_reply(exc))
            return
        if inspect.isawaitable(reply):
            task = self._loop.create_task(self._serve(sid, reply))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif reply is not None:
            self.respond(sid, reply)

    async def _serve(self, sid: int, pending: Awaitable[p.Message | None]) -> None:
        try:
            reply = await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            reply = _error_reply(exc)
        if reply is not None:
            self.respond(sid, reply)


def _error_reply(exc: Exception) -> p.ErrorReply:
    """An OSError keeps its errno; anything else is a bug of ours, said as EIO."""
    if isinstance(exc, OSError) and exc.errno:
        return p.ErrorReply.from_oserror(exc)
    return p.ErrorReply(errno="EIO", message=f"{type(exc).__name__}: {exc}")


def _grow_pipe(f: Any) -> None:
    """Ask for a 1 MiB pipe (the unprivileged maximum): with the default 64 KiB every
    DATA frame is a partial write that asyncio must buffer, trim and retry."""
    try:
        fcntl.fcntl(f.fileno(), F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError, ValueError):
        pass  # not a pipe, or a lower pipe-max-size: the default still works


class _ReadSide(asyncio.Protocol):
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def data_received(self, data: bytes) -> None:
        self.channel.data_received(data)

    def eof_received(self) -> bool:
        self.channel.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.connection_lost(exc)


class _WriteSide(asyncio.BaseProtocol):
    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.channel.connection_lost(exc)


class _SocketSide(_ReadSide):
    pass


# --- bridges between real sockets and streams -------------------------------------------


class TcpBridge(StreamEndpoint, asyncio.Protocol):
    """Pumps bytes between a connected TCP socket and one channel stream.

    Flow control: we send at most the peer's granted window, pausing the socket
    when it is used up; we grant the peer credit for bytes once our socket took
    them (not while they sit in our write buffer), so a slow local reader slows
    the far end instead of filling our memory.

    The bridge may exist before its socket (the supervisor registers it when it
    sends the connect request); anything the peer sends meanwhile is held until
    the socket arrives, bounded by the window we granted.

    It counts the bytes it moves (`from_socket`: read from the socket and sent on;
    `to_socket`: written to it) with one integer add per chunk, and once the stream
    is over, `end_error` holds the errno name it ended with, or None for a clean end
    (both sides half-closed).
    """

    def __init__(self, channel: Channel, on_done: Callable[[], None] | None = None) -> None:
        self.channel = channel
        self.transport: asyncio.Transport | None = None
        self.on_done = on_done  # called once the stream is over
        self._send_window = p.INITIAL_WINDOW
        self._owed = 0  # bytes written to our socket and not yet granted back
        self._write_paused = False
        self._read_paused = False
        self._held: list[bytes] = []
        self._peer_eof = False
        self._local_eof = False
        self._reset: p.Reset | None = None
        self._started = True
        self._done = False
        self.from_socket = 0
        self.to_socket = 0
        self.end_error: str | None = None

    @property
    def socket_eof(self) -> bool:
        """Our socket has half-closed its sending side (its owner is done writing)."""
        return self._local_eof

    def hold_reading(self) -> None:
        """Do not read the socket until start(): the agent must send its reply first."""
        self._started = False

    def start(self) -> None:
        self._started = True
        if self.transport is not None and not self._read_paused:
            self.transport.resume_reading()

    # socket side
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if not self._started:
            self.transport.pause_reading()
        if self._reset is not None:
            self._abort()
            return
        for chunk in self._held:
            self._deliver(chunk)
        self._held.clear()
        if self._peer_eof:
            self._write_eof()

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.from_socket += n
        if n <= p.MAX_DATA_CHUNK:
            self.channel.send(p.FrameType.DATA, self.sid, data)
        else:
            view = memoryview(data)
            for start in range(0, len(view), p.MAX_DATA_CHUNK):
                chunk = view[start : start + p.MAX_DATA_CHUNK]
                self.channel.send(p.FrameType.DATA, self.sid, bytes(chunk))
        self._send_window -= n
        if self._send_window <= 0 and self.transport is not None and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._local_eof = True
        self.channel.send(p.FrameType.EOF, self.sid)
        self._maybe_done()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done:
            self._done = True
            if self._reset is not None:
                self.end_error = self._reset.errno
            elif self.channel.streams.get(self.sid) is self:
                # Not both half-closes, nor a reset from the peer: our socket broke.
                err = "ECONNRESET"
                if isinstance(exc, OSError) and exc.errno:
                    err = errno.errorcode.get(exc.errno, "ECONNRESET")
                self.end_error = err
                self.channel.reset(self.sid, p.Reset(errno=err, message=str(exc or "closed")))
            if self.on_done is not None:
                self.on_done()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._grant()

    # channel side
    def on_data(self, data: bytes) -> None:
        if self.transport is None:
            self._held.append(data)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        n = len(data)
        self.to_socket += n  # before the write: a reader may see the bytes before it returns
        self.transport.write(data)
        self._owed += n
        if not self._write_paused:
            self._grant()

    def widen(self) -> None:
        """Grant the peer the channel's larger receive window, once the stream is open
        at both ends (the peer's side exists once it has answered the request)."""
        extra = self.channel.recv_window - p.INITIAL_WINDOW
        if extra > 0 and not self._done:
            self.channel.send(p.FrameType.WINDOW, self.sid, p.encode_window(extra))

    def _grant(self) -> None:
        # Credit goes back a quarter window at a time, not after every chunk: the
        # peer always keeps three quarters of a window to send with, and a WINDOW
        # frame per 256 KiB chunk was a fifth of the websocket transport's cost.
        if self._owed >= self.channel.recv_window // 4 or (self._owed and self.transport is None):
            self.channel.send(p.FrameType.WINDOW, self.sid, p.encode_window(self._owed))
            self._owed = 0

    def on_window(self, credit: int) -> None:
        self._send_window += credit
        if self._send_window > 0 and self._read_paused and self.transport is not None:
            self._read_paused = False
            if self._started:
                self.transport.resume_reading()

    def on_eof(self) -> None:
        self._peer_eof = True
        if self.transport is not None:
            self._write_eof()

    def _write_eof(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._peer_eof and self._local_eof and self.transport is not None:
            self.channel.streams.pop(self.sid, None)
            self.transport.close()

    def on_reset(self, reason: p.Reset) -> None:
        self._reset = reason
        if self.transport is not None:
            self._abort()

    def _abort(self) -> None:
        """Close with an RST so the program sees ECONNRESET, as after a network failure."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        self.transport.abort()

    def close(self) -> None:
        """Abandon the stream from this side (the local socket is going away)."""
        self.channel.reset(self.sid)
        self._reset = p.Reset()
        if self.transport is not None:
            self._abort()


class DatagramBridge(StreamEndpoint, asyncio.DatagramProtocol):
    """Carries datagrams between a UDP socket and a channel stream, with addresses.

    UDP needs no flow control: like the network, the channel may drop nothing
    but the sockets at either end may.
    """

    def __init__(
        self, channel: Channel, on_datagram: Callable[[str, int, bytes], None] | None = None
    ) -> None:
        self.channel = channel
        self.transport: asyncio.DatagramTransport | None = None
        self._deliver = on_datagram

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.channel.send(p.FrameType.DATAGRAM, self.sid, p.pack_addr(addr[0], addr[1]) + data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors on an unconnected socket: the program's own retries handle them

    def on_datagram(self, host: str, port: int, data: bytes) -> None:
        if self._deliver is not None:
            self._deliver(host, port, data)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, (host, port))

    def on_reset(self, reason: p.Reset) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.channel.streams.get(self.sid) is self:
            self.channel.reset(self.sid)
