"""Just enough of the DNS wire format (RFC 1035) to describe and check traffic.

The supervisor does not answer DNS itself: port-53 traffic goes to the pod's
nameserver. It parses messages only to say what happened in events
("web.default.svc.cluster.local A" → "NOERROR 198.18.0.10") and to check
answers in tests. The parser is strict about what could loop or over-read
(every compression pointer must point before the previous one, names are at
most 255 bytes, rdata may not run past rdlength) and raises ValueError for
anything it cannot read; it never raises anything else.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import NamedTuple

_HEADER = struct.Struct("!HHHHHH")
HEADER_SIZE = _HEADER.size
MAX_NAME_LENGTH = 255  # RFC 1035 2.3.4, counted on the wire
MAX_LABEL_LENGTH = 63

TYPE_NAMES: dict[int, str] = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    41: "OPT",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
}
TYPE_NUMBERS: dict[str, int] = {name: number for number, name in TYPE_NAMES.items()}
RCODE_NAMES: dict[int, str] = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
}
CLASS_IN = 1

_TYPE_A, _TYPE_NS, _TYPE_CNAME, _TYPE_PTR, _TYPE_MX = 1, 2, 5, 12, 15
_TYPE_TXT, _TYPE_AAAA, _TYPE_SRV = 16, 28, 33


def type_name(rtype: int) -> str:
    """ "A", "AAAA", ... or "TYPE1234" for the rest (RFC 3597 notation)."""
    return TYPE_NAMES.get(rtype, f"TYPE{rtype}")


def rcode_name(rcode: int) -> str:
    """ "NOERROR", "NXDOMAIN", ... or "RCODE12"."""
    return RCODE_NAMES.get(rcode, f"RCODE{rcode}")


class Srv(NamedTuple):
    """SRV rdata (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


class Mx(NamedTuple):
    """MX rdata."""

    preference: int
    exchange: str


# rdata: address text (A, AAAA), a name (CNAME, PTR, NS), Srv, Mx, the TXT
# character-strings, or the raw bytes for every other type.
RData = str | Srv | Mx | tuple[bytes, ...] | bytes


@dataclass(frozen=True)
class Question:
    name: str
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True)
class Record:
    name: str
    rtype: int
    ttl: int
    rdata: RData
    rclass: int = CLASS_IN


@dataclass(frozen=True)
class DnsMessage:
    id: int
    flags: int
    questions: tuple[Question, ...]
    answers: tuple[Record, ...]
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = ()

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def truncated(self) -> bool:
        """TC: the answer did not fit in UDP; resolvers retry over TCP."""
        return bool(self.flags & 0x0200)

    @property
    def rcode(self) -> int:
        # The low 4 bits; EDNS extended rcodes live in OPT and are not folded in.
        return self.flags & 0xF


def parse_message(data: bytes) -> DnsMessage:
    """Parse a whole DNS message (without the TCP length prefix).

    Raises ValueError for truncated or malformed input. Bytes after the last
    record are ignored, as resolvers do.
    """
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise ValueError(f"DNS message of {len(data)} bytes is shorter than the header")
    msg_id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    pos = HEADER_SIZE
    questions = []
    for _ in range(qdcount):
        name, pos = _read_name(data, pos)
        qtype, qclass = _unpack("!HH", data, pos, "question")
        pos += 4
        questions.append(Question(name, qtype, qclass))
    sections: list[list[Record]] = []
    for count in (ancount, nscount, arcount):
        records = []
        for _ in range(count):
            record, pos = _read_record(data, pos)
            records.append(record)
        sections.append(records)
    return DnsMessage(
        msg_id, flags, tuple(questions), tuple(sections[0]), tuple(sections[1]), tuple(sections[2])
    )


def _unpack(fmt: str, data: bytes, pos: int, what: str) -> tuple:
    size = struct.calcsize(fmt)
    if pos + size > len(data):
        raise ValueError(f"DNS message truncated in {what} at offset {pos}")
    return struct.unpack_from(fmt, data, pos)


def _read_record(data: bytes, pos: int) -> tuple[Record, int]:
    name, pos = _read_name(data, pos)
    rtype, rclass, ttl, rdlength = _unpack("!HHIH", data, pos, "record header")
    pos += 10
    end = pos + rdlength
    if end > len(data):
        raise ValueError(f"rdata of {name} {type_name(rtype)} runs past the message")
    return Record(name, rtype, ttl, _read_rdata(data, pos, end, rtype), rclass), end


def _read_rdata(data: bytes, pos: int, end: int, rtype: int) -> RData:
    raw = data[pos:end]
    if rtype == _TYPE_A:
        if len(raw) != 4:
            raise ValueError(f"A rdata of {len(raw)} bytes")
        return str(ipaddress.IPv4Address(raw))
    if rtype == _TYPE_AAAA:
        if len(raw) != 16:
            raise ValueError(f"AAAA rdata of {len(raw)} bytes")
        return str(ipaddress.IPv6Address(raw))
    if rtype in (_TYPE_CNAME, _TYPE_PTR, _TYPE_NS):
        name, after = _read_name(data, pos)
        _check_end(after, end, rtype)
        return name
    if rtype == _TYPE_MX:
        (preference,) = _unpack("!H", data[:end], pos, "MX")
        exchange, after = _read_name(data, pos + 2)
        _check_end(after, end, rtype)
        return Mx(preference, exchange)
    if rtype == _TYPE_SRV:
        priority, weight, port = _unpack("!HHH", data[:end], pos, "SRV")
        target, after = _read_name(data, pos + 6)
        _check_end(after, end, rtype)
        return Srv(priority, weight, port, target)
    if rtype == _TYPE_TXT:
        strings = []
        i = 0
        while i < len(raw):
            n = raw[i]
            if i + 1 + n > len(raw):
                raise ValueError("TXT character-string runs past its rdata")
            strings.append(raw[i + 1 : i + 1 + n])
            i += 1 + n
        return tuple(strings)
    return raw


def _check_end(after: int, end: int, rtype: int) -> None:
    if after != end:
        raise ValueError(f"{type_name(rtype)} rdata length does not match its contents")


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """Read a possibly compressed name; return it and the offset after it.

    Each pointer must point strictly before the previous jump target (as
    dnspython requires), which makes loops impossible: any chain ends
    after at most len(data) jumps.
    """
    labels: list[str] = []
    wire_length = 1  # the root label
    after: int | None = None
    limit = pos  # a pointer must go below this
    while True:
        if pos >= len(data):
            raise ValueError(f"DNS name truncated at offset {pos}")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise ValueError(f"compression pointer truncated at offset {pos}")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= limit:
                raise ValueError(f"compression pointer at offset {pos} does not point backwards")
            if after is None:
                after = pos + 2
            pos = limit = target
            continue
        if kind:
            raise ValueError(f"unsupported label type {length:#x} at offset {pos}")
        if length == 0:
            name = ".".join(labels) if labels else "."
            return name, (after if after is not None else pos + 1)
        label = data[pos + 1 : pos + 1 + length]
        if len(label) != length:
            raise ValueError(f"DNS label truncated at offset {pos}")
        wire_length += 1 + length
        if wire_length > MAX_NAME_LENGTH:
            raise ValueError("DNS name longer than 255 bytes")
        labels.append(_label_text(label))
        pos += 1 + length


def _label_text(label: bytes) -> str:
    # Presentation format (RFC 4343 section 2.1): escape dots, backslashes
    # and anything not printable, so a name can never fake a different one.
    out = []
    for b in label:
        if b in (0x2E, 0x5C):
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def describe_query(data: bytes) -> str:
    """One line for an event: "web.default.svc.cluster.local A" (questions joined by ", ")."""
    msg = parse_message(data)
    if not msg.questions:
        return "(no question)"
    return ", ".join(f"{q.name} {type_name(q.qtype)}" for q in msg.questions)


def describe_response(data: bytes) -> str:
    """One line for an event: "NOERROR 198.18.0.10", "NXDOMAIN", "NOERROR (no records)".

    Answers are listed in order; addresses bare, other types as "TYPE value".
    A set TC bit is shown, since it is what makes a resolver retry over TCP.
    Raises ValueError if data is not a DNS response.
    """
    msg = parse_message(data)
    if not msg.is_response:
        raise ValueError("not a DNS response (QR bit clear)")
    parts = [rcode_name(msg.rcode)]
    if msg.rcode == 0:
        if msg.answers:
            parts.append(", ".join(_describe_record(r) for r in msg.answers))
        else:
            parts.append("(no records)")
    if msg.truncated:
        parts.append("(truncated)")
    return " ".join(parts)


def _describe_record(record: Record) -> str:
    rdata = record.rdata
    if record.rtype in (_TYPE_A, _TYPE_AAAA):
        return str(rdata)
    if isinstance(rdata, Srv):
        value = f"{rdata.priority} {rdata.weight} {rdata.port} {rdata.target}"
    elif isinstance(rdata, Mx):
        value = f"{rdata.preference} {rdata.exchange}"
    elif isinstance(rdata, tuple):
        value = " ".join(repr(s.decode("ascii", "backslashreplace")) for s in rdata)
    elif isinstance(rdata, bytes):
        value = f"({len(rdata)} bytes)"
    else:
        value = rdata
    return f"{type_name(record.rtype)} {value}"


def split_tcp_messages(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split DNS-over-TCP bytes into whole messages and the incomplete rest.

    Each message is preceded by its length as a 2-byte big-endian integer
    (RFC 1035 4.2.2); a read may end anywhere, so the rest is kept for the
    next call.
    """
    messages = []
    pos = 0
    while len(buffer) - pos >= 2:
        (length,) = struct.unpack_from("!H", buffer, pos)
        if len(buffer) - pos - 2 < length:
            break
        messages.append(bytes(buffer[pos + 2 : pos + 2 + length]))
        pos += 2 + length
    return messages, bytes(buffer[pos:])


def frame_tcp_message(message: bytes) -> bytes:
    """Prefix message with its 2-byte length for DNS over TCP."""
    if len(message) > 0xFFFF:
        raise ValueError(f"DNS message of {len(message)} bytes does not fit TCP framing")
    return struct.pack("!H", len(message)) + message
