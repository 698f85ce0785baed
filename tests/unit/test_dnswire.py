"""DNS wire parsing: hand-built messages, compression, garbage, TCP framing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syscalls.dnswire import (
    Mx,
    Question,
    Srv,
    describe_query,
    describe_response,
    frame_tcp_message,
    parse_message,
    rcode_name,
    split_tcp_messages,
    type_name,
)

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, HTTPS = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 65


def name(text: str) -> bytes:
    if text == ".":
        return b"\0"
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\0"


def header(msg_id: int, flags: int, qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", msg_id, flags, qd, an, ns, ar)


def question(qname: bytes, qtype: int, qclass: int = 1) -> bytes:
    return qname + struct.pack("!HH", qtype, qclass)


def record(rname: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = 1) -> bytes:
    return rname + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


# What glibc's res_mkquery sends for `getent ahosts web` in a pod: RD set,
# one question, no EDNS. Captured-style: id, flags and layout as on the wire.
GLIBC_A_QUERY = bytes.fromhex(
    "a1b2 0100 0001 0000 0000 0000"
    "03 776562 07 64656661756c74 03 737663 07 636c7573746572 05 6c6f63616c 00"
    "0001 0001"
)
GLIBC_AAAA_QUERY = GLIBC_A_QUERY[:-4] + bytes.fromhex("001c 0001")


def test_captured_a_and_aaaa_queries() -> None:
    msg = parse_message(GLIBC_A_QUERY)
    assert (msg.id, msg.is_response, msg.opcode, msg.rcode) == (0xA1B2, False, 0, 0)
    assert msg.questions == (Question("web.default.svc.cluster.local", A, 1),)
    assert describe_query(GLIBC_A_QUERY) == "web.default.svc.cluster.local A"
    assert describe_query(GLIBC_AAAA_QUERY) == "web.default.svc.cluster.local AAAA"


def test_response_with_compressed_answer() -> None:
    q = question(name("web.default.svc.cluster.local"), A)
    data = (
        header(0xA1B2, 0x8180, qd=1, an=2)
        + q
        + record(ptr(12), A, 5, bytes([198, 18, 0, 10]))
        + record(ptr(12), A, 5, bytes([198, 18, 0, 11]))
    )
    msg = parse_message(data)
    assert msg.is_response and msg.rcode == 0
    assert [(r.name, r.rtype, r.ttl, r.rdata) for r in msg.answers] == [
        ("web.default.svc.cluster.local", A, 5, "198.18.0.10"),
        ("web.default.svc.cluster.local", A, 5, "198.18.0.11"),
    ]
    assert describe_response(data) == "NOERROR 198.18.0.10, 198.18.0.11"


def test_pointer_into_the_middle_of_a_name() -> None:
    # "svc.cluster.local" starts 12 + 1+3 + 1+7 bytes in; "api." + pointer to it.
    q = question(name("web.default.svc.cluster.local"), A)
    suffix = 12 + 4 + 8
    cname_target = b"\x03api" + ptr(suffix)
    data = (
        header(1, 0x8180, qd=1, an=2)
        + q
        + record(ptr(12), CNAME, 30, cname_target)
        + record(ptr(12), AAAA, 30, bytes.fromhex("20010002" + "00" * 10 + "0010"))
    )
    msg = parse_message(data)
    assert msg.answers[0].rdata == "api.svc.cluster.local"
    assert msg.answers[1].rdata == "2001:2::10"
    assert describe_response(data) == "NOERROR CNAME api.svc.cluster.local, 2001:2::10"


def test_srv_ptr_txt_mx_ns_rdata() -> None:
    data = (
        header(2, 0x8400, an=5)
        + record(name("_http._tcp.web"), SRV, 10, struct.pack("!HHH", 0, 100, 8080) + name("web"))
        + record(name("10.0.18.198.in-addr.arpa"), PTR, 10, name("web.default"))
        + record(name("t"), TXT, 10, b"\x05hello\x00\x03a b")
        + record(name("m"), MX, 10, struct.pack("!H", 10) + ptr(12))
        + record(name("n"), NS, 10, name("ns1.example"))
    )
    rdata = [r.rdata for r in parse_message(data).answers]
    assert rdata == [
        Srv(0, 100, 8080, "web"),
        "web.default",
        (b"hello", b"", b"a b"),
        Mx(10, "_http._tcp.web"),
        "ns1.example",
    ]


def test_unknown_types_keep_raw_rdata_and_other_sections_parse() -> None:
    soa = name("ns") + name("admin") + struct.pack("!IIIII", 1, 2, 3, 4, 5)
    opt = b"\0" + struct.pack("!HHIH", OPT, 1232, 0, 0)
    data = (
        header(3, 0x8183, qd=1, ns=1, ar=1)
        + question(name("nope.cluster.local"), HTTPS)
        + record(name("cluster.local"), SOA, 30, soa)
        + opt
    )
    msg = parse_message(data)
    assert msg.rcode == 3
    assert msg.authorities[0].rdata == soa
    assert msg.additionals[0].name == "." and msg.additionals[0].rtype == OPT
    assert describe_response(data) == "NXDOMAIN"
    assert describe_query(data) == "nope.cluster.local HTTPS"


def test_empty_noerror_and_truncated_responses() -> None:
    q = question(name("web"), AAAA)
    assert describe_response(header(4, 0x8180, qd=1) + q) == "NOERROR (no records)"
    assert describe_response(header(4, 0x8380, qd=1) + q) == "NOERROR (no records) (truncated)"
    assert describe_response(header(4, 0x8182, qd=1) + q) == "SERVFAIL"


def test_describe_response_refuses_a_query() -> None:
    with pytest.raises(ValueError, match="not a DNS response"):
        describe_response(GLIBC_A_QUERY)


def test_names_with_odd_bytes_are_escaped() -> None:
    data = header(5, 0x0100, qd=1) + question(b"\x03a.b\x02\x00\xff\x00", A)
    assert parse_message(data).questions[0].name == "a\\.b.\\000\\255"
    assert parse_message(header(5, 0, qd=1) + question(b"\0", A)).questions[0].name == "."


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 11, "shorter than the header"),
        (header(1, 0, qd=1) + b"\x03ab", "truncated"),
        (header(1, 0, qd=1) + name("web"), "truncated in question"),
        (header(1, 0, qd=1) + ptr(12) + b"\0\1\0\1", "does not point backwards"),  # self loop
        (header(1, 0, qd=1) + b"\x01a" + ptr(13) + b"\0\1\0\1", "does not point backwards"),
        (header(1, 0, qd=1) + b"\x41a", "label type"),
        (header(1, 0, qd=1) + b"\xc0", "pointer truncated"),
        (header(1, 0, an=1) + name("a") + struct.pack("!HHIH", A, 1, 0, 5) + b"1234", "runs past"),
        (header(1, 0, an=1) + record(name("a"), A, 0, b"123"), "A rdata"),
        (header(1, 0, an=1) + record(name("a"), AAAA, 0, b"1" * 4), "AAAA rdata"),
        (header(1, 0, an=1) + record(name("a"), TXT, 0, b"\x05abc"), "TXT"),
        (header(1, 0, an=1) + record(name("a"), CNAME, 0, name("b") + b"x"), "length"),
        (header(1, 0, qd=1) + (b"\x3f" + b"a" * 63) * 4 + b"\0\0\1\0\1", "255"),
    ],
)
def test_malformed_messages_raise_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_message(data)


def test_two_pointers_may_chain_backwards() -> None:
    # name at 12: "b.c"; at 17: "a" + ptr(12); question at 21 points to 17.
    data = header(6, 0, qd=3) + question(name("b.c"), A)
    first = len(data)
    data += question(b"\x01a" + ptr(12), A) + question(ptr(first), A)
    assert [q.name for q in parse_message(data).questions] == ["b.c", "a.b.c", "a.b.c"]


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_parse_never_raises_anything_but_value_error(data: bytes) -> None:
    try:
        parse_message(data)
    except ValueError:
        pass


@settings(max_examples=500)
@given(st.binary(min_size=12, max_size=200), st.integers(0, 200), st.binary(max_size=4))
def test_mutated_real_messages_never_raise_anything_but_value_error(
    tail: bytes, cut: int, patch: bytes
) -> None:
    base = bytearray(header(1, 0x8180, qd=1, an=1, ar=1) + GLIBC_A_QUERY[12:])
    base += record(ptr(12), A, 5, b"\x01\x02\x03\x04") + tail
    base[cut % len(base) : cut % len(base) + len(patch)] = patch
    try:
        describe_response(bytes(base))
    except ValueError:
        pass


def test_type_and_rcode_names() -> None:
    assert [type_name(t) for t in (A, AAAA, SRV, HTTPS, 255, 999)] == [
        "A",
        "AAAA",
        "SRV",
        "HTTPS",
        "ANY",
        "TYPE999",
    ]
    assert rcode_name(3) == "NXDOMAIN" and rcode_name(11) == "RCODE11"


# --- DNS over TCP framing --------------------------------------------------


def test_split_tcp_messages_keeps_the_incomplete_rest() -> None:
    stream = frame_tcp_message(GLIBC_A_QUERY) + frame_tcp_message(GLIBC_AAAA_QUERY)
    assert split_tcp_messages(stream) == ([GLIBC_A_QUERY, GLIBC_AAAA_QUERY], b"")
    assert split_tcp_messages(stream[:-1]) == ([GLIBC_A_QUERY], stream[len(GLIBC_A_QUERY) + 2 : -1])
    assert split_tcp_messages(b"\x00") == ([], b"\x00")
    assert split_tcp_messages(b"") == ([], b"")


@given(st.lists(st.binary(max_size=300), max_size=6), st.integers(0, 2000))
def test_split_tcp_messages_at_any_cut(messages: list[bytes], cut: int) -> None:
    stream = b"".join(frame_tcp_message(m) for m in messages)
    cut = min(cut, len(stream))
    first, rest = split_tcp_messages(stream[:cut])
    second, rest = split_tcp_messages(rest + stream[cut:])
    assert first + second == messages and rest == b""


def test_frame_refuses_oversized_messages() -> None:
    with pytest.raises(ValueError):
        frame_tcp_message(bytes(65536))
