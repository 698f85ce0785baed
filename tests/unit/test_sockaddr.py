"""struct sockaddr / msghdr decoding and encoding, checked against the kernel's own bytes."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syscalls.sockaddr import (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    AF_UNSPEC,
    IOVEC_SIZE,
    MMSGHDR_SIZE,
    MSGHDR_SIZE,
    SOCKADDR_IN6_SIZE,
    SOCKADDR_IN_SIZE,
    IoVec,
    MsgHdr,
    SockAddr,
    decode_sockaddr,
    encode_sockaddr,
    inet,
    inet6,
    pack_iovec_array,
    pack_mmsghdr,
    pack_msghdr,
    unix,
    unpack_iovec_array,
    unpack_mmsghdr,
    unpack_mmsghdr_array,
    unpack_msghdr,
)

ports = st.integers(0, 65535)
u32 = st.integers(0, 2**32 - 1)
v4_hosts = st.ip_addresses(v=4).map(str)
v6_hosts = st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(AF_INET6, a.packed))
unix_paths = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=108).filter(lambda p: b"\0" not in p),
    st.binary(max_size=107).map(lambda p: b"\0" + p),
)
addresses = st.one_of(
    st.builds(inet, v4_hosts, ports),
    st.builds(inet6, v6_hosts, ports, u32, u32),
    st.builds(unix, unix_paths),
)


# --- layouts from the man pages -------------------------------------------


def test_sockaddr_in_layout_matches_ip7() -> None:
    data = encode_sockaddr(inet("198.18.0.10", 8080))
    # sin_family native u16, sin_port big-endian, sin_addr, 8 zero bytes.
    assert data == struct.pack("=H", AF_INET) + b"\x1f\x90" + bytes([198, 18, 0, 10]) + bytes(8)
    assert len(data) == SOCKADDR_IN_SIZE == 16


def test_sockaddr_in6_layout_matches_ipv6_7() -> None:
    data = encode_sockaddr(inet6("2001:2::10", 8080, flowinfo=0x12345, scope_id=3))
    expected = (
        struct.pack("=H", AF_INET6)
        + struct.pack("!H", 8080)
        + struct.pack("!I", 0x12345)  # sin6_flowinfo is network order
        + socket.inet_pton(AF_INET6, "2001:2::10")
        + struct.pack("=I", 3)  # sin6_scope_id is host order
    )
    assert data == expected
    assert len(data) == SOCKADDR_IN6_SIZE == 28


def test_unix_pathname_ends_with_nul_and_abstract_does_not() -> None:
    assert encode_sockaddr(unix(b"/run/x.sock")) == struct.pack("=H", AF_UNIX) + b"/run/x.sock\0"
    assert encode_sockaddr(unix(b"\0name")) == struct.pack("=H", AF_UNIX) + b"\0name"
    assert encode_sockaddr(unix(b"")) == struct.pack("=H", AF_UNIX)
    # A path filling sun_path has no room for the NUL, and needs none.
    assert len(encode_sockaddr(unix(b"a" * 108))) == 110


# --- round trips ------------------------------------------------------------


@given(addresses)
def test_encode_then_decode_gives_the_same_address(addr: SockAddr) -> None:
    assert decode_sockaddr(encode_sockaddr(addr)) == addr


@given(st.binary(min_size=2, max_size=128))
def test_decode_never_raises_anything_but_value_error(data: bytes) -> None:
    try:
        addr = decode_sockaddr(data)
    except ValueError:
        return
    if addr.family in (AF_INET, AF_INET6, AF_UNIX):
        # What we decoded encodes back to something that decodes the same.
        assert decode_sockaddr(encode_sockaddr(addr)) == addr
    else:
        assert encode_sockaddr(addr) == data


@given(v4_hosts, ports, st.binary(max_size=112))
def test_inet_ignores_sin_zero_and_trailing_bytes(host: str, port: int, tail: bytes) -> None:
    data = encode_sockaddr(inet(host, port))[:8] + tail.ljust(8, b"\xff")
    assert decode_sockaddr(data) == inet(host, port)


# --- lengths the kernel refuses --------------------------------------------


@pytest.mark.parametrize("n", range(0, SOCKADDR_IN_SIZE))
def test_short_sockaddr_in_is_refused_like_einval(n: int) -> None:
    with pytest.raises(ValueError):
        decode_sockaddr(encode_sockaddr(inet("10.0.0.1", 80))[:n])


@pytest.mark.parametrize("n", range(0, 24))
def test_short_sockaddr_in6_is_refused_like_einval(n: int) -> None:
    with pytest.raises(ValueError):
        decode_sockaddr(encode_sockaddr(inet6("2001:db8::1", 80))[:n])


def test_rfc2133_sockaddr_in6_without_scope_id_is_accepted() -> None:
    data = encode_sockaddr(inet6("fe80::1", 443, scope_id=7))
    assert decode_sockaddr(data[:24]) == inet6("fe80::1", 443)
    assert decode_sockaddr(data[:27]).scope_id == 0
    assert decode_sockaddr(data).scope_id == 7


def test_oversized_addresses_are_refused() -> None:
    with pytest.raises(ValueError, match="sockaddr_storage"):
        decode_sockaddr(encode_sockaddr(inet("10.0.0.1", 80)).ljust(129, b"\0"))
    with pytest.raises(ValueError, match="AF_UNIX"):
        decode_sockaddr(struct.pack("=H", AF_UNIX) + b"a" * 109)
    with pytest.raises(ValueError):
        unix(b"a" * 109)
    with pytest.raises(ValueError):
        unix(b"/a\0b")


def test_unix_pathname_stops_at_first_nul_but_abstract_keeps_them() -> None:
    fam = struct.pack("=H", AF_UNIX)
    assert decode_sockaddr(fam + b"/tmp/s\0junk").path == b"/tmp/s"
    assert decode_sockaddr(fam + b"\0a\0b").path == b"\0a\0b"
    assert decode_sockaddr(fam).path == b""


def test_unspec_and_unknown_families_keep_their_bytes() -> None:
    disconnect = struct.pack("=H", AF_UNSPEC) + bytes(14)
    addr = decode_sockaddr(disconnect)
    assert (addr.family, addr.host, addr.port, addr.raw) == (AF_UNSPEC, None, None, disconnect)
    assert encode_sockaddr(addr) == disconnect
    assert encode_sockaddr(SockAddr(AF_UNSPEC, None, None)) == disconnect
    netlink = struct.pack("=HHII", socket.AF_NETLINK, 0, 1234, 0)
    assert encode_sockaddr(decode_sockaddr(netlink)) == netlink
    assert str(decode_sockaddr(netlink)).startswith("family 16:")


# --- helpers and properties -------------------------------------------------


def test_v4_mapped_unmaps_to_the_af_inet_address() -> None:
    mapped = inet6("::ffff:198.18.0.10", 8080, flowinfo=5, scope_id=2)
    assert mapped.host == "::ffff:198.18.0.10"
    assert mapped.is_v4_mapped
    assert mapped.unmapped() == inet("198.18.0.10", 8080)
    plain = inet6("2001:2::10", 80)
    assert not plain.is_v4_mapped and plain.unmapped() is plain
    assert not inet("1.2.3.4", 1).is_v4_mapped


@given(v4_hosts, ports)
def test_every_v4_address_survives_mapping(host: str, port: int) -> None:
    mapped = inet6("::ffff:" + host, port)
    assert mapped.is_v4_mapped
    assert mapped.unmapped() == inet(host, port)
    assert mapped.ip == ipaddress.IPv6Address("::ffff:" + host)


def test_helpers_normalise_hosts_like_inet_ntop() -> None:
    assert inet6("2001:0002:0000::0010", 1).host == "2001:2::10"
    assert inet6("::FFFF:10.0.0.1", 1).host == "::ffff:10.0.0.1"
    with pytest.raises(ValueError):
        inet6("fe80::1%eth0", 1)
    with pytest.raises(ValueError):
        inet("010.0.0.1", 1)
    with pytest.raises(ValueError):
        inet("1.2.3.4", 65536)


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        (inet("198.18.0.10", 8080), "198.18.0.10:8080"),
        (inet6("2001:2::10", 8080), "[2001:2::10]:8080"),
        (inet6("fe80::1", 22, scope_id=2), "[fe80::1%2]:22"),
        (unix(b"/run/app.sock"), "unix:/run/app.sock"),
        (unix(b"\0abstract"), "unix:@abstract"),
        (unix(b""), "unix:(unnamed)"),
        (decode_sockaddr(struct.pack("=H", AF_UNSPEC)), "unspec"),
    ],
)
def test_str(addr: SockAddr, text: str) -> None:
    assert str(addr) == text


def test_ip_property() -> None:
    assert inet("10.1.2.3", 1).ip == ipaddress.IPv4Address("10.1.2.3")
    assert inet6("::1", 1).ip == ipaddress.IPv6Address("::1")
    assert unix(b"/x").ip is None


# --- byte-exact against what this kernel writes ----------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def kernel_getsockname(sock: socket.socket) -> bytes:
    buf = ctypes.create_string_buffer(128)
    size = ctypes.c_uint(128)
    if _libc.getsockname(sock.fileno(), buf, ctypes.byref(size)) != 0:
        raise OSError(ctypes.get_errno(), "getsockname")
    return buf.raw[: size.value]


def test_af_inet_matches_kernel_getsockname() -> None:
    with socket.socket(AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        raw = kernel_getsockname(s)
        assert decode_sockaddr(raw) == inet(*s.getsockname())
        assert encode_sockaddr(decode_sockaddr(raw)) == raw


def test_af_inet6_matches_kernel_getsockname() -> None:
    try:
        s = socket.socket(AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    with s:
        raw = kernel_getsockname(s)
        host, port, flowinfo, scope_id = s.getsockname()
        assert decode_sockaddr(raw) == inet6(host, port, flowinfo, scope_id)
        assert encode_sockaddr(decode_sockaddr(raw)) == raw


@pytest.mark.parametrize("kind", ["path", "abstract", "unnamed"])
def test_af_unix_matches_kernel_getsockname(kind: str) -> None:
    with tempfile.TemporaryDirectory() as d, socket.socket(AF_UNIX, socket.SOCK_DGRAM) as s:
        if kind == "path":
            s.bind(os.path.join(d, "s"))
        elif kind == "abstract":
            s.bind(b"\0mirrortrace-test-%d" % os.getpid())
        raw = kernel_getsockname(s)
        addr = decode_sockaddr(raw)
        assert encode_sockaddr(addr) == raw
        if kind == "path":
            assert addr.path == os.path.join(d, "s").encode()
            assert raw.endswith(b"\0")  # the kernel counts the NUL in addrlen
        elif kind == "abstract":
            assert addr.path == s.getsockname()
        else:
            assert raw == struct.pack("=H", AF_UNIX) and str(addr) == "unix:(unnamed)"


# --- msghdr, mmsghdr, iovec -------------------------------------------------

u64 = st.integers(0, 2**64 - 1)
msghdrs = st.builds(MsgHdr, u64, u32, u64, u64, u64, u64, st.integers(-(2**31), 2**31 - 1))


@given(msghdrs)
def test_msghdr_round_trip(hdr: MsgHdr) -> None:
    data = pack_msghdr(hdr)
    assert len(data) == MSGHDR_SIZE == 56
    assert unpack_msghdr(data) == hdr


def test_msghdr_layout() -> None:
    hdr = MsgHdr(name=0x1111, namelen=16, iov=0x2222, iovlen=2, control=0x3333, controllen=24)
    data = pack_msghdr(hdr)
    assert struct.unpack_from("<Q", data, 0)[0] == 0x1111
    assert struct.unpack_from("<I", data, 8)[0] == 16
    assert struct.unpack_from("<Q", data, 16)[0] == 0x2222
    assert struct.unpack_from("<Q", data, 24)[0] == 2
    assert struct.unpack_from("<Q", data, 32)[0] == 0x3333
    assert struct.unpack_from("<Q", data, 40)[0] == 24
    assert struct.unpack_from("<i", data, 48)[0] == 0


@given(st.lists(st.tuples(msghdrs, u32), max_size=5))
def test_mmsghdr_array_round_trip(entries: list[tuple[MsgHdr, int]]) -> None:
    data = b"".join(pack_mmsghdr(h, n) for h, n in entries)
    assert len(data) == MMSGHDR_SIZE * len(entries)
    assert unpack_mmsghdr_array(data, len(entries)) == entries
    if entries:
        assert unpack_mmsghdr(data, (len(entries) - 1) * MMSGHDR_SIZE) == entries[-1]


@given(st.lists(st.tuples(u64, u64), max_size=8))
def test_iovec_array_round_trip(iovs: list[tuple[int, int]]) -> None:
    data = pack_iovec_array(iovs)
    assert len(data) == IOVEC_SIZE * len(iovs)
    assert unpack_iovec_array(data, len(iovs)) == [IoVec(*v) for v in iovs]


def test_short_structures_are_refused() -> None:
    with pytest.raises(ValueError, match="msghdr"):
        unpack_msghdr(bytes(55))
    with pytest.raises(ValueError, match="mmsghdr"):
        unpack_mmsghdr_array(bytes(64 * 2 - 1), 2)
    with pytest.raises(ValueError, match="iovec"):
        unpack_iovec_array(bytes(31), 2)
    with pytest.raises(ValueError):
        unpack_msghdr(bytes(56), offset=8)
