"""The mirrortrace wire protocol, defined once for the supervisor and the agent.

Everything that crosses the channel is a frame::

    +----------------+---------+----------------+-----------------+
    | length: u32 BE | type: u8| stream: u32 BE | payload[length] |
    +----------------+---------+----------------+-----------------+

Frame types (stream 0 is the session itself):

    HELLO     stream 0   Hello message; the first frame each way (version handshake)
    REQUEST   stream S   a request message; S is the request id, and for requests that
                         open a stream (connect, udp_open) also the stream id
    RESPONSE  stream S   the reply to request S: a reply message or an ErrorReply
    DATA      stream S   raw bytes of a TCP stream
    WINDOW    stream S   u32 BE credit: the receiver consumed that many DATA bytes
    EOF       stream S   the sender will send no more DATA on S (TCP half-close)
    RESET     stream S   the stream is gone both ways; payload is an ErrorReply body
    DATAGRAM  stream S   one UDP datagram: packed address (see pack_addr) + bytes
    GOODBYE   stream 0   clean shutdown: the sender will send nothing more
    ERROR     stream 0   fatal protocol error; payload is a UTF-8 message; then close

Control payloads (HELLO, REQUEST, RESPONSE, RESET) are a u32 BE length, a UTF-8
JSON object of that length, then an optional binary blob (file contents), so bytes
never travel as base64 and nothing is ever unpickled. Unknown JSON fields are
ignored, a request of an unknown op is answered with an ErrorReply (EOPNOTSUPP) and
a reply of one reaches its requester as an ErrorReply (EPROTO), so either side can
grow without "V2" variants. What a peer serves beyond that is in its hello's
features: a request older peers may not know (Ping) goes only to a peer listing it.

Flow control is per stream and byte-counted: each side may have at most
INITIAL_WINDOW bytes of DATA in flight on a stream until the peer grants more with
WINDOW, so a slow consumer never makes the other side buffer without bound.
Stream ids opened by the supervisor are odd, those opened by the agent even, so
both can open streams without coordination (as in HTTP/2).

Standard library only: this module ships in the agent image.
"""

from __future__ import annotations

import dataclasses
import enum
import errno as errno_mod
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

VERSION = 1
HEADER = struct.Struct("!IBI")
MAX_PAYLOAD = 1 << 20
MAX_DATA_CHUNK = 256 * 1024
INITIAL_WINDOW = 2 * 1024 * 1024
_WINDOW = struct.Struct("!I")
_JSON_LEN = struct.Struct("!I")


class ProtocolError(Exception):
    """The peer sent something this side cannot understand; the session must end."""


class UnknownOp(ProtocolError):
    """A well-formed control message of an op this side does not know (a newer peer's).

    Not fatal where a request or reply can carry it: a request is answered with an
    ErrorReply (EOPNOTSUPP), a reply reaches its requester as one (EPROTO)."""


class FrameType(enum.IntEnum):
    HELLO = 1
    REQUEST = 2
    RESPONSE = 3
    DATA = 4
    WINDOW = 5
    EOF = 6
    RESET = 7
    DATAGRAM = 8
    GOODBYE = 9
    ERROR = 10


_SESSION_ONLY = {FrameType.HELLO, FrameType.GOODBYE, FrameType.ERROR}


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    stream: int
    payload: bytes


def encode_frame(ftype: FrameType, stream: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(len(payload), ftype, stream) + payload


class FrameDecoder:
    """Incremental frame parser: feed bytes as they arrive, get whole frames out.

    Validates as it goes so garbage is rejected at the first bad header rather
    than after waiting for a bogus 4 GiB payload.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Whole frames so far. A bad header raises, unless good frames came before it
        in this chunk: those are returned first and `error` is set (and raised by the
        next call), so the caller sees everything valid before the garbage."""
        if self.error is not None:
            raise self.error
        frames: list[Frame] = []
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # the common case: parse the chunk as it came, one copy less
        pos = 0
        end = len(buf)
        while end - pos >= HEADER.size:
            try:
                length, kind, stream = self._header(buf, pos)
            except ProtocolError as exc:
                if not frames:
                    raise
                self.error = exc
                break
            if end - pos - HEADER.size < length:
                break
            start = pos + HEADER.size
            if isinstance(buf, bytes):
                payload = buf[start : start + length]
            else:
                with memoryview(buf) as view:
                    payload = bytes(view[start : start + length])
            frames.append(Frame(kind, stream, payload))
            pos = start + length
        if not self.error and 4 <= end - pos < HEADER.size:
            # Garbage shorter than a header must not wait for more: judge its length now.
            (length,) = struct.unpack_from("!I", buf, pos)
            if length > MAX_PAYLOAD:
                exc = ProtocolError(f"frame of {length} bytes exceeds the {MAX_PAYLOAD} limit")
                if not frames:
                    raise exc
                self.error = exc
        if buf is self._buf:
            if pos:
                del self._buf[:pos]
        else:
            self._buf += buf[pos:]
        return frames

    @staticmethod
    def _header(buf: bytes | bytearray, pos: int) -> tuple[int, FrameType, int]:
        length, ftype, stream = HEADER.unpack_from(buf, pos)
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"frame of {length} bytes exceeds the {MAX_PAYLOAD} limit")
        try:
            kind = FrameType(ftype)
        except ValueError:
            raise ProtocolError(f"unknown frame type {ftype}") from None
        if (kind in _SESSION_ONLY) != (stream == 0):
            raise ProtocolError(f"{kind.name} frame on stream {stream}")
        return length, kind, stream

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame; non-zero at end of input means truncation."""
        return len(self._buf)


# --- control payloads -------------------------------------------------------------


def encode_control(body: dict[str, Any], blob: bytes = b"") -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    return _JSON_LEN.pack(len(data)) + data + blob


def decode_control(payload: bytes) -> tuple[dict[str, Any], bytes]:
    if len(payload) < _JSON_LEN.size:
        raise ProtocolError("control payload shorter than its length prefix")
    (n,) = _JSON_LEN.unpack_from(payload)
    if n > len(payload) - _JSON_LEN.size:
        raise ProtocolError("control payload truncated")
    try:
        body = json.loads(payload[_JSON_LEN.size : _JSON_LEN.size + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"control payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("control payload is not a JSON object")
    return body, payload[_JSON_LEN.size + n :]


def encode_window(credit: int) -> bytes:
    return _WINDOW.pack(credit)


def decode_window(payload: bytes) -> int:
    if len(payload) != _WINDOW.size:
        raise ProtocolError("WINDOW payload must be 4 bytes")
    return _WINDOW.unpack(payload)[0]


# --- datagram addresses -------------------------------------------------------------

_ADDR4 = struct.Struct("!BH4s")
_ADDR6 = struct.Struct("!BH16s")


def pack_addr(host: str, port: int) -> bytes:
    """Pack an IP address and port for a DATAGRAM frame (family byte 4 or 6)."""
    if ":" in host:
        return _ADDR6.pack(6, port, socket.inet_pton(socket.AF_INET6, host))
    return _ADDR4.pack(4, port, socket.inet_pton(socket.AF_INET, host))


def unpack_addr(payload: bytes) -> tuple[str, int, bytes]:
    """Split a DATAGRAM payload into (host, port, data)."""
    if not payload:
        raise ProtocolError("empty DATAGRAM payload")
    if payload[0] == 4 and len(payload) >= _ADDR4.size:
        _, port, raw = _ADDR4.unpack_from(payload)
        return socket.inet_ntop(socket.AF_INET, raw), port, payload[_ADDR4.size :]
    if payload[0] == 6 and len(payload) >= _ADDR6.size:
        _, port, raw = _ADDR6.unpack_from(payload)
        return socket.inet_ntop(socket.AF_INET6, raw), port, payload[_ADDR6.size :]
    raise ProtocolError("malformed DATAGRAM address")


# --- typed messages -----------------------------------------------------------------


def errno_name(code: int) -> str:
    return errno_mod.errorcode.get(code, "EIO")


def errno_value(name: str) -> int | None:
    """The local errno for a remote errno name, or None when this system lacks it."""
    value = getattr(errno_mod, name, None)
    return value if isinstance(value, int) else None


@dataclass
class Message:
    """Base of every control message; `op` names it on the wire."""

    op: ClassVar[str] = ""
    blob: bytes = field(default=b"", repr=False, kw_only=True)

    # Filled in by @message: dataclasses.fields() on every frame was a third of the
    # channel's own cost per request.
    _wire: ClassVar[tuple[str, ...]] = ()
    _required: ClassVar[frozenset[str]] = frozenset()

    def to_payload(self) -> bytes:
        body = {"op": self.op}
        for name in self._wire:
            body[name] = getattr(self, name)
        return encode_control(body, self.blob)


_MESSAGES: dict[str, type[Message]] = {}


def message(cls: type[Message]) -> type[Message]:
    """Register a message class under its op so decode_message can find it."""
    if cls.op in _MESSAGES:
        raise ValueError(f"duplicate op {cls.op}")
    wire = tuple(f.name for f in dataclasses.fields(cls) if f.name != "blob")
    cls._wire = wire
    cls._required = frozenset(
        f.name for f in dataclasses.fields(cls)
        if f.name != "blob" and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    _MESSAGES[cls.op] = cls
    return cls


def decode_message(payload: bytes) -> Message:
    """Decode a control payload into its message class.

    Unknown fields are dropped (a newer peer may send more); an unknown op or a
    missing field is a ProtocolError the caller can answer with an ErrorReply.
    """
    body, blob = decode_control(payload)
    op = body.get("op")
    cls = _MESSAGES.get(op) if isinstance(op, str) else None
    if cls is None:
        raise UnknownOp(f"unknown op {op!r}")
    kwargs = {name: body[name] for name in cls._wire if name in body}
    missing = cls._required.difference(kwargs)
    if missing:
        raise ProtocolError(f"{op} lacks field {min(missing)!r}")
    try:
        return cls(**kwargs, blob=blob)
    except TypeError as exc:
        raise ProtocolError(f"bad {op}: {exc}") from None


@message
@dataclass
class Hello(Message):
    op: ClassVar[str] = "hello"
    version: int
    role: str
    software: str = ""
    features: list[str] = field(default_factory=list)
    pid: int = 0


@message
@dataclass
class ErrorReply(Message):
    """A failed request, carried as data: the errno name travels, not the number,
    because numbers differ between architectures."""

    op: ClassVar[str] = "error"
    errno: str
    message: str = ""

    @classmethod
    def from_oserror(cls, exc: OSError) -> ErrorReply:
        code = exc.errno if exc.errno is not None else errno_mod.EIO
        return cls(errno=errno_name(code), message=os.strerror(code))


@message
@dataclass
class Connect(Message):
    """Open a TCP connection from the pod; on success the request id becomes a stream."""

    op: ClassVar[str] = "connect"
    host: str
    port: int
    timeout: float | None = None


@message
@dataclass
class Connected(Message):
    op: ClassVar[str] = "connected"
    local_host: str
    local_port: int


@message
@dataclass
class UdpOpen(Message):
    """Open a UDP socket in the pod; the request id becomes a datagram stream."""

    op: ClassVar[str] = "udp_open"
    family: int  # 4 or 6


@message
@dataclass
class UdpOpened(Message):
    op: ClassVar[str] = "udp_opened"
    local_host: str
    local_port: int


@message
@dataclass
class SourceFor(Message):
    """Which local address the pod's kernel would pick to reach host (for getsockname
    and the RFC 6724 sorting glibc does with it)."""

    op: ClassVar[str] = "source_for"
    host: str
    port: int


@message
@dataclass
class Source(Message):
    op: ClassVar[str] = "source"
    host: str


@message
@dataclass
class ReadFile(Message):
    """Read up to max_bytes of a file from offset; the reply's blob holds them, and its
    size says how much there is in all, so large files travel in chunks."""

    op: ClassVar[str] = "read_file"
    path: str
    max_bytes: int = 1 << 20
    offset: int = 0


@message
@dataclass
class FileData(Message):
    op: ClassVar[str] = "file_data"
    path: str
    size: int
    mode: int
    mtime: float
    offset: int = 0
    mtime_ns: int = 0  # exact, so a cached copy can be revalidated (mtime is rounded)


@message
@dataclass
class Stat(Message):
    """stat(2) (follow=True) or lstat(2) of a path, resolved inside the pod's root."""

    op: ClassVar[str] = "stat"
    path: str
    follow: bool = True


@message
@dataclass
class StatInfo(Message):
    op: ClassVar[str] = "stat_info"
    mode: int
    size: int
    uid: int
    gid: int
    nlink: int
    ino: int
    dev: int
    rdev: int
    blksize: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> StatInfo:
        return cls(mode=st.st_mode, size=st.st_size, uid=st.st_uid, gid=st.st_gid,
                   nlink=st.st_nlink, ino=st.st_ino, dev=st.st_dev, rdev=st.st_rdev,
                   blksize=st.st_blksize, blocks=st.st_blocks, atime_ns=st.st_atime_ns,
                   mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)


@message
@dataclass
class ListDir(Message):
    op: ClassVar[str] = "list_dir"
    path: str


@message
@dataclass
class DirEntries(Message):
    """[name, kind, ino] per entry, sorted by name; kind is "file", "dir", "link", "chr",
    "blk", "fifo", "sock" or "other" (enough for getdents64's d_type), ino the d_ino."""

    op: ClassVar[str] = "dir_entries"
    entries: list[list[str | int]]


@message
@dataclass
class ReadLink(Message):
    op: ClassVar[str] = "read_link"
    path: str


@message
@dataclass
class LinkTarget(Message):
    op: ClassVar[str] = "link_target"
    target: str


@message
@dataclass
class WriteFile(Message):
    """Write the blob at offset, resolved inside the pod's root; replies with StatInfo of
    the file afterwards. A file larger than a frame goes back in chunks: the first with
    create and truncate, the rest at their offsets, the last with size=total (an
    ftruncate, so a shrunk file ends where it should). mode applies only when the file
    is created, exactly as given: the agent's umask plays no part, apply the program's
    before sending."""

    op: ClassVar[str] = "write_file"
    path: str
    offset: int = 0
    truncate: bool = False
    create: bool = False
    mode: int = 0o644
    size: int | None = None


@message
@dataclass
class Unlink(Message):
    """unlink(2), or rmdir(2) with directory=True; a symlink as the last component is
    removed itself, never followed. Replies Done."""

    op: ClassVar[str] = "unlink"
    path: str
    directory: bool = False


@message
@dataclass
class Rename(Message):
    """renameat2(2) of src to dst, both inside the pod's root; flags are renameat2's
    (RENAME_NOREPLACE=1, RENAME_EXCHANGE=2). Replies Done."""

    op: ClassVar[str] = "rename"
    src: str
    dst: str
    flags: int = 0


@message
@dataclass
class MakeDir(Message):
    """mkdir(2); mode exactly as given, as for WriteFile. Replies Done."""

    op: ClassVar[str] = "make_dir"
    path: str
    mode: int = 0o755


@message
@dataclass
class Access(Message):
    """access(2) as the target container's process would get the answer (its fsuid,
    fsgid and groups); follow=False checks a symlink itself. Replies Done or the errno."""

    op: ClassVar[str] = "access"
    path: str
    mode: int
    follow: bool = True


@message
@dataclass
class Done(Message):
    """Success of a request whose only answer is that it worked."""

    op: ClassVar[str] = "done"


@message
@dataclass
class Uname(Message):
    op: ClassVar[str] = "uname"


@message
@dataclass
class UnameReply(Message):
    op: ClassVar[str] = "uname_reply"
    sysname: str
    nodename: str
    release: str
    version: str
    machine: str
    domainname: str = "(none)"


@message
@dataclass
class GetEnv(Message):
    """The target's environment (its /proc/PID/environ), or the agent's own."""

    op: ClassVar[str] = "get_env"


@message
@dataclass
class Environment(Message):
    """The variables as NUL-separated NAME=value bytes in the blob: names and values
    are bytes on Linux and need not be valid UTF-8."""

    op: ClassVar[str] = "environment"
    source: str = ""


@message
@dataclass
class Ping(Message):
    """Answered at once with Pong: the supervisor times the round trip.

    Sent only to an agent whose hello lists the "ping" feature: agents older than
    Ping also ended the session on any unknown op instead of answering it."""

    op: ClassVar[str] = "ping"


@message
@dataclass
class Pong(Message):
    op: ClassVar[str] = "pong"


@message
@dataclass
class Goodbye(Message):
    op: ClassVar[str] = "goodbye"
    reason: str = ""


@message
@dataclass
class Reset(Message):
    """Why a stream ended abnormally (payload of RESET frames)."""

    op: ClassVar[str] = "reset"
    errno: str = "ECONNRESET"
    message: str = ""


def check_hello(msg: Message, expect_role: str) -> Hello:
    """Validate the peer's handshake; the version must match exactly for now."""
    if not isinstance(msg, Hello):
        raise ProtocolError(f"expected hello, got {msg.op}")
    if msg.role != expect_role:
        raise ProtocolError(f"peer says it is a {msg.role!r}, expected {expect_role!r}")
    if msg.version != VERSION:
        raise ProtocolError(
            f"protocol version mismatch: peer speaks {msg.version}, this side {VERSION}"
            " (use the agent image that matches this mirrortrace version)"
        )
    return msg
