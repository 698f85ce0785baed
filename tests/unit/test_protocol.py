"""The wire protocol: frames, control payloads, messages, addresses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_image import protocol as p

frame_types = st.sampled_from(list(p.FrameType))


@st.composite
def frames(draw: st.DrawFn) -> p.Frame:
    ftype = draw(frame_types)
    session_only = ftype in (p.FrameType.HELLO, p.FrameType.GOODBYE, p.FrameType.ERROR)
    stream = 0 if session_only else draw(st.integers(1, 2**32 - 1))
    payload = draw(st.binary(max_size=2048))
    return p.Frame(ftype, stream, payload)


@given(st.lists(frames(), max_size=20), st.data())
def test_frames_round_trip_whatever_the_chunking(items: list[p.Frame], data: st.DataObject) -> None:
    wire = b"".join(p.encode_frame(f.type, f.stream, f.payload) for f in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = p.FrameDecoder()
    out: list[p.Frame] = []
    last = 0
    for cut in [*cuts, len(wire)]:
        out += decoder.feed(wire[last:cut])
        last = cut
    assert out == items
    assert decoder.pending == 0


@given(frames(), st.integers(1, 8))
def test_a_truncated_frame_stays_pending(frame: p.Frame, missing: int) -> None:
    wire = p.encode_frame(frame.type, frame.stream, frame.payload)
    decoder = p.FrameDecoder()
    assert decoder.feed(wire[:-missing]) == []
    assert decoder.pending == len(wire) - missing


@given(st.binary(min_size=p.HEADER.size, max_size=64))
def test_garbage_is_rejected_or_waits_never_crashes(data: bytes) -> None:
    decoder = p.FrameDecoder()
    try:
        decoder.feed(data)
    except p.ProtocolError:
        pass


def test_frames_before_garbage_are_delivered_then_the_error() -> None:
    decoder = p.FrameDecoder()
    good = p.encode_frame(p.FrameType.DATA, 1, b"ok")
    assert decoder.feed(good + b"\xff" * 9) == [p.Frame(p.FrameType.DATA, 1, b"ok")]
    assert decoder.error is not None
    with pytest.raises(p.ProtocolError):
        decoder.feed(b"")


def test_an_oversized_frame_is_refused_before_its_payload_arrives() -> None:
    header = p.HEADER.pack(p.MAX_PAYLOAD + 1, p.FrameType.DATA, 1)
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.FrameDecoder().feed(header)


def test_unknown_frame_type_is_refused() -> None:
    with pytest.raises(p.ProtocolError, match="unknown frame type 99"):
        p.FrameDecoder().feed(p.HEADER.pack(0, 99, 1))


@pytest.mark.parametrize("ftype", [p.FrameType.HELLO, p.FrameType.GOODBYE, p.FrameType.ERROR])
def test_session_frames_must_use_stream_zero(ftype: p.FrameType) -> None:
    with pytest.raises(p.ProtocolError, match="on stream 3"):
        p.FrameDecoder().feed(p.HEADER.pack(0, ftype, 3))


def test_stream_frames_must_not_use_stream_zero() -> None:
    with pytest.raises(p.ProtocolError, match="on stream 0"):
        p.FrameDecoder().feed(p.HEADER.pack(0, p.FrameType.DATA, 0))


def test_encode_refuses_a_payload_over_the_limit() -> None:
    with pytest.raises(ValueError):
        p.encode_frame(p.FrameType.DATA, 1, bytes(p.MAX_PAYLOAD + 1))


messages = st.one_of(
    st.builds(p.Connect, host=st.ip_addresses().map(str), port=st.integers(0, 65535),
              timeout=st.none() | st.floats(0.1, 100)),
    st.builds(p.Connected, local_host=st.ip_addresses().map(str), local_port=st.integers(0, 65535)),
    st.builds(p.UdpOpen, family=st.sampled_from([4, 6])),
    st.builds(p.ReadFile, path=st.text(min_size=1), max_bytes=st.integers(0, 2**31)),
    st.builds(p.FileData, path=st.text(), size=st.integers(0, 2**40), mode=st.integers(0, 0o177777),
              mtime=st.floats(0, 2e9), mtime_ns=st.integers(0, 2**63 - 1),
              blob=st.binary(max_size=4096)),
    st.builds(p.ErrorReply, errno=st.sampled_from(["ENOENT", "ECONNREFUSED"]), message=st.text()),
    st.builds(p.Hello, version=st.integers(0, 9), role=st.sampled_from(["agent", "supervisor"]),
              features=st.lists(st.text(max_size=8), max_size=4)),
)


@given(messages)
def test_messages_round_trip(msg: p.Message) -> None:
    assert p.decode_message(msg.to_payload()) == msg


paths = st.text(min_size=1)
kinds = st.sampled_from(["file", "dir", "link", "chr", "blk", "fifo", "sock", "other"])
file_changes = st.one_of(
    st.builds(p.WriteFile, path=paths, offset=st.integers(0, 2**62), truncate=st.booleans(),
              create=st.booleans(), mode=st.integers(0, 0o7777),
              size=st.none() | st.integers(0, 2**62), blob=st.binary(max_size=4096)),
    st.builds(p.Unlink, path=paths, directory=st.booleans()),
    st.builds(p.Rename, src=paths, dst=paths, flags=st.sampled_from([0, 1, 2])),
    st.builds(p.MakeDir, path=paths, mode=st.integers(0, 0o7777)),
    st.builds(p.Access, path=paths, mode=st.integers(0, 7), follow=st.booleans()),
    st.just(p.Done()),
    st.builds(p.DirEntries, entries=st.lists(
        st.tuples(st.text(min_size=1), kinds, st.integers(0, 2**64 - 1)).map(list))),
)


@given(file_changes)
def test_file_messages_round_trip(msg: p.Message) -> None:
    back = p.decode_message(msg.to_payload())
    assert back == msg and type(back) is type(msg)


def test_file_requests_default_as_documented() -> None:
    """What an older or terser supervisor gets when it leaves fields out."""
    assert p.decode_message(p.encode_control({"op": "write_file", "path": "/f"})) == p.WriteFile(
        path="/f", offset=0, truncate=False, create=False, mode=0o644, size=None
    )
    assert p.decode_message(p.encode_control({"op": "done"})) == p.Done()
    assert p.decode_message(p.encode_control({"op": "file_data", "path": "/f", "size": 1,
                                              "mode": 0, "mtime": 0.0})).mtime_ns == 0
    with pytest.raises(p.ProtocolError, match="lacks field 'mode'"):
        p.decode_message(p.encode_control({"op": "access", "path": "/f"}))


def test_unknown_fields_are_ignored_so_newer_peers_can_add_them() -> None:
    payload = p.encode_control({"op": "connect", "host": "198.18.0.10", "port": 80, "new": 1})
    assert p.decode_message(payload) == p.Connect(host="198.18.0.10", port=80)


def test_a_missing_field_is_a_protocol_error() -> None:
    with pytest.raises(p.ProtocolError, match="lacks field 'port'"):
        p.decode_message(p.encode_control({"op": "connect", "host": "x"}))


def test_an_unknown_op_is_a_protocol_error() -> None:
    with pytest.raises(p.ProtocolError, match="unknown op"):
        p.decode_message(p.encode_control({"op": "teleport"}))


def test_an_unknown_op_is_told_apart_from_a_malformed_message() -> None:
    """The channel answers a newer peer's op and stays open; it ends only on garbage."""
    with pytest.raises(p.UnknownOp):
        p.decode_message(p.encode_control({"op": "teleport", "to": "mars"}))
    with pytest.raises(p.ProtocolError) as missing:
        p.decode_message(p.encode_control({"op": "connect", "host": "x"}))
    assert not isinstance(missing.value, p.UnknownOp)


def test_ping_and_pong_round_trip_and_ignore_fields_of_newer_peers() -> None:
    for msg in (p.Ping(), p.Pong()):
        back = p.decode_message(msg.to_payload())
        assert back == msg and type(back) is type(msg)
    assert p.decode_control(p.Ping().to_payload()) == ({"op": "ping"}, b"")
    newer = p.encode_control({"op": "pong", "agent_load": 0.5})
    assert p.decode_message(newer) == p.Pong()


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00\x00", b"\x00\x00\x00\x09{}", b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x02\xff\xfe"],
)
def test_broken_control_payloads_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_control(payload)


def test_errors_travel_as_names_and_map_back_to_local_numbers() -> None:
    reply = p.ErrorReply.from_oserror(ConnectionRefusedError(111, "x"))
    assert reply.errno == "ECONNREFUSED"
    assert p.errno_value("ECONNREFUSED") == 111
    assert p.errno_value("ENOTANERRNO") is None


@given(st.ip_addresses(), st.integers(0, 65535), st.binary(max_size=512))
def test_datagram_addresses_round_trip(ip: object, port: int, data: bytes) -> None:
    import ipaddress

    host, back_port, back = p.unpack_addr(p.pack_addr(str(ip), port) + data)
    assert (ipaddress.ip_address(host), back_port, back) == (ip, port, data)


@pytest.mark.parametrize("payload", [b"", b"\x05abc", b"\x04\x00\x35\x01", b"\x06" + bytes(10)])
def test_malformed_datagram_addresses_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.unpack_addr(payload)


def test_hello_with_another_version_is_refused_with_a_hint() -> None:
    with pytest.raises(p.ProtocolError, match="agent image that matches"):
        p.check_hello(p.Hello(version=p.VERSION + 1, role="agent"), "agent")
    with pytest.raises(p.ProtocolError, match="expected 'agent'"):
        p.check_hello(p.Hello(version=p.VERSION, role="supervisor"), "agent")
