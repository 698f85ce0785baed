"""struct sockaddr and struct msghdr as the x86_64 kernel lays them out.

Handlers read addresses out of the tracee (connect, sendto, sendmsg) and
write them back (getpeername, recvfrom, recvmsg), so decoding must accept
exactly what the kernel accepts and encoding must produce what the kernel
would have written. Layouts from ip(7), ipv6(7), unix(7) and
include/linux/socket.h; the length rules from the kernel's own checks:

- every family: addrlen above sizeof(struct sockaddr_storage) = 128 is
  EINVAL (move_addr_to_kernel), and addrlen below sizeof(sa_family_t) is
  EINVAL (inet_stream_connect, inet_dgram_connect);
- AF_INET: addrlen below 16 is EINVAL (tcp_v4_connect,
  ip4_datagram_connect); sin_zero is ignored;
- AF_INET6: addrlen below 24 (SIN6_LEN_RFC2133, the RFC 2133 struct without
  sin6_scope_id) is EINVAL; sin6_scope_id is only read when addrlen >= 28;
- AF_UNIX: the path runs to the first NUL or to addrlen; a name starting
  with NUL is abstract and its length is exactly addrlen - 2 (NULs inside
  are part of it); addrlen == 2 is the unnamed address getsockname reports
  for an unbound socket;
- AF_UNSPEC on connect dissolves the association (connect(2)); only the
  family is read.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

AF_UNSPEC = socket.AF_UNSPEC
AF_UNIX = socket.AF_UNIX
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

SOCKADDR_IN_SIZE = 16
SOCKADDR_IN6_SIZE = 28
SOCKADDR_IN6_RFC2133_SIZE = 24  # the kernel's minimum for AF_INET6
SOCKADDR_UN_SIZE = 110
SOCKADDR_STORAGE_SIZE = 128
UNIX_PATH_MAX = 108
SA_FAMILY_SIZE = 2

# sa_family_t is native-endian; ports, addresses and flowinfo are network order;
# sin6_scope_id is a native u32 (an interface index).
_FAMILY = struct.Struct("=H")


@dataclass(frozen=True)
class SockAddr:
    """A decoded socket address.

    host is the textual IP for AF_INET/AF_INET6 (as inet_ntop(3) writes it,
    so ::ffff:198.18.0.10 stays dotted); path is the AF_UNIX name (b"" for
    unnamed, a leading NUL for abstract); raw keeps the bytes of families we
    do not decode, and of AF_UNSPEC, so they can be written back unchanged.
    """

    family: int
    host: str | None
    port: int | None
    flowinfo: int = 0
    scope_id: int = 0
    path: bytes | None = None
    raw: bytes = b""

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address as an ipaddress object, for AF_INET and AF_INET6 only."""
        if self.family == AF_INET and self.host is not None:
            return ipaddress.IPv4Address(self.host)
        if self.family == AF_INET6 and self.host is not None:
            return ipaddress.IPv6Address(self.host)
        return None

    @property
    def is_v4_mapped(self) -> bool:
        """True for ::ffff:a.b.c.d, how an AF_INET6 socket reaches IPv4 (ipv6(7))."""
        ip = self.ip
        return isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None

    def unmapped(self) -> SockAddr:
        """The AF_INET equivalent of a v4-mapped address; any other address unchanged."""
        ip = self.ip
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return inet(str(ip.ipv4_mapped), self.port or 0)
        return self

    def __str__(self) -> str:
        if self.family == AF_INET:
            return f"{self.host}:{self.port}"
        if self.family == AF_INET6:
            scope = f"%{self.scope_id}" if self.scope_id else ""
            return f"[{self.host}{scope}]:{self.port}"
        if self.family == AF_UNIX:
            path = self.path or b""
            if not path:
                return "unix:(unnamed)"
            if path[:1] == b"\0":
                # ss(8) and /proc/net/unix show the abstract namespace with '@'.
                return "unix:@" + _text(path[1:])
            return "unix:" + _text(path)
        if self.family == AF_UNSPEC:
            return "unspec"
        return f"family {self.family}:{self.raw.hex()}"


def _text(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace").replace("\0", "\\0")


def inet(host: str, port: int) -> SockAddr:
    """An AF_INET address; host must be a dotted IPv4 address."""
    _check_port(port)
    addr = ipaddress.IPv4Address(host)
    return SockAddr(AF_INET, str(addr), port)


def inet6(host: str, port: int, flowinfo: int = 0, scope_id: int = 0) -> SockAddr:
    """An AF_INET6 address; the scope is the numeric scope_id, not "%eth0" in host."""
    _check_port(port)
    if "%" in host:
        raise ValueError(f"give the scope as scope_id, not in the host: {host!r}")
    if not 0 <= flowinfo < 2**32 or not 0 <= scope_id < 2**32:
        raise ValueError("flowinfo and scope_id are 32-bit unsigned")
    packed = ipaddress.IPv6Address(host).packed
    return SockAddr(AF_INET6, socket.inet_ntop(AF_INET6, packed), port, flowinfo, scope_id)


def unix(path: bytes) -> SockAddr:
    """An AF_UNIX address: b"" unnamed, b"\\0name" abstract, else a pathname."""
    _check_unix_path(path)
    return SockAddr(AF_UNIX, None, None, path=path)


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")


def _check_unix_path(path: bytes) -> None:
    if len(path) > UNIX_PATH_MAX:
        raise ValueError(f"AF_UNIX name longer than {UNIX_PATH_MAX} bytes")
    if path[:1] != b"\0" and b"\0" in path:
        raise ValueError("an AF_UNIX pathname cannot contain NUL")


def decode_sockaddr(data: bytes) -> SockAddr:
    """Decode exactly len(data) bytes, as the kernel would read them for connect/bind.

    len(data) is the addrlen the program passed. Lengths the kernel refuses
    with EINVAL raise ValueError, so a handler can answer EINVAL itself.
    """
    n = len(data)
    if n < SA_FAMILY_SIZE:
        raise ValueError(f"sockaddr of {n} bytes has no room for sa_family")
    if n > SOCKADDR_STORAGE_SIZE:
        raise ValueError(f"sockaddr of {n} bytes exceeds sizeof(struct sockaddr_storage)")
    (family,) = _FAMILY.unpack_from(data)
    if family == AF_INET:
        if n < SOCKADDR_IN_SIZE:
            raise ValueError(f"AF_INET sockaddr needs {SOCKADDR_IN_SIZE} bytes, got {n}")
        port, addr = struct.unpack_from("!H4s", data, 2)
        return SockAddr(AF_INET, socket.inet_ntop(AF_INET, addr), port)
    if family == AF_INET6:
        if n < SOCKADDR_IN6_RFC2133_SIZE:
            raise ValueError(f"AF_INET6 sockaddr needs {SOCKADDR_IN6_RFC2133_SIZE} bytes, got {n}")
        port, flowinfo, addr = struct.unpack_from("!HI16s", data, 2)
        scope_id = 0
        if n >= SOCKADDR_IN6_SIZE:
            (scope_id,) = struct.unpack_from("=I", data, 24)
        host = socket.inet_ntop(AF_INET6, addr)
        return SockAddr(AF_INET6, host, port, flowinfo, scope_id)
    if family == AF_UNIX:
        if n > SOCKADDR_UN_SIZE:
            raise ValueError(f"AF_UNIX sockaddr is at most {SOCKADDR_UN_SIZE} bytes, got {n}")
        name = bytes(data[2:])
        if name[:1] != b"\0":
            name = name.split(b"\0", 1)[0]
        return SockAddr(AF_UNIX, None, None, path=name)
    return SockAddr(family, None, None, raw=bytes(data))


def encode_sockaddr(addr: SockAddr) -> bytes:
    """The bytes the kernel would write for addr (getpeername, recvfrom, accept).

    AF_INET gives 16 bytes with zeroed sin_zero, AF_INET6 the full 28. An
    AF_UNIX pathname ends with the NUL the kernel counts in addrlen (unless
    the path fills all 108 bytes); abstract names have none. AF_UNSPEC and
    unknown families give back raw (for AF_UNSPEC without raw, a zeroed
    struct sockaddr, the usual 16 bytes a program passes to disconnect).
    """
    if addr.family == AF_INET:
        if addr.host is None or addr.port is None:
            raise ValueError("AF_INET address needs host and port")
        _check_port(addr.port)
        packed = ipaddress.IPv4Address(addr.host).packed
        return _FAMILY.pack(AF_INET) + struct.pack("!H4s8x", addr.port, packed)
    if addr.family == AF_INET6:
        if addr.host is None or addr.port is None:
            raise ValueError("AF_INET6 address needs host and port")
        _check_port(addr.port)
        packed = ipaddress.IPv6Address(addr.host).packed
        return (
            _FAMILY.pack(AF_INET6)
            + struct.pack("!HI16s", addr.port, addr.flowinfo, packed)
            + struct.pack("=I", addr.scope_id)
        )
    if addr.family == AF_UNIX:
        path = addr.path or b""
        _check_unix_path(path)
        tail = b"\0" if path and path[:1] != b"\0" and len(path) < UNIX_PATH_MAX else b""
        return _FAMILY.pack(AF_UNIX) + path + tail
    if addr.raw:
        if len(addr.raw) < SA_FAMILY_SIZE or _FAMILY.unpack_from(addr.raw)[0] != addr.family:
            raise ValueError("raw bytes do not start with the address family")
        return addr.raw
    if addr.family == AF_UNSPEC:
        return _FAMILY.pack(AF_UNSPEC) + bytes(14)
    raise ValueError(f"cannot encode family {addr.family} without raw bytes")


# --- struct msghdr, struct mmsghdr, struct iovec (x86_64) -----------------

# struct msghdr { void *msg_name; socklen_t msg_namelen; /* pad */ struct iovec *msg_iov;
#   size_t msg_iovlen; void *msg_control; size_t msg_controllen; int msg_flags; /* pad */ }
_MSGHDR = struct.Struct("<QI4xQQQQi4x")
_MMSGHDR_TAIL = struct.Struct("<I4x")  # unsigned int msg_len; pad to 8
_IOVEC = struct.Struct("<QQ")
MSGHDR_SIZE = _MSGHDR.size
MMSGHDR_SIZE = _MSGHDR.size + _MMSGHDR_TAIL.size
IOVEC_SIZE = _IOVEC.size
assert (MSGHDR_SIZE, MMSGHDR_SIZE, IOVEC_SIZE) == (56, 64, 16)


@dataclass(frozen=True)
class MsgHdr:
    """struct msghdr, pointers as plain integers (tracee addresses)."""

    name: int
    namelen: int
    iov: int
    iovlen: int
    control: int
    controllen: int
    flags: int = 0


class IoVec(NamedTuple):
    """struct iovec: base address and length in the tracee."""

    base: int
    length: int


def pack_msghdr(hdr: MsgHdr) -> bytes:
    """The 56 bytes of struct msghdr; padding is zero."""
    return _MSGHDR.pack(
        hdr.name, hdr.namelen, hdr.iov, hdr.iovlen, hdr.control, hdr.controllen, hdr.flags
    )


def unpack_msghdr(data: bytes, offset: int = 0) -> MsgHdr:
    """Read struct msghdr at offset; padding is ignored, as the kernel does."""
    _need(data, offset, MSGHDR_SIZE, "struct msghdr")
    return MsgHdr(*_MSGHDR.unpack_from(data, offset))


def pack_mmsghdr(hdr: MsgHdr, msg_len: int) -> bytes:
    """struct mmsghdr: a msghdr followed by msg_len, 64 bytes (sendmmsg(2))."""
    return pack_msghdr(hdr) + _MMSGHDR_TAIL.pack(msg_len)


def unpack_mmsghdr(data: bytes, offset: int = 0) -> tuple[MsgHdr, int]:
    """Read struct mmsghdr at offset: the msghdr and msg_len."""
    _need(data, offset, MMSGHDR_SIZE, "struct mmsghdr")
    (msg_len,) = _MMSGHDR_TAIL.unpack_from(data, offset + MSGHDR_SIZE)
    return unpack_msghdr(data, offset), msg_len


def unpack_mmsghdr_array(data: bytes, count: int) -> list[tuple[MsgHdr, int]]:
    """The vlen entries of a sendmmsg/recvmmsg vector."""
    _need(data, 0, count * MMSGHDR_SIZE, f"{count} struct mmsghdr")
    return [unpack_mmsghdr(data, i * MMSGHDR_SIZE) for i in range(count)]


def unpack_iovec_array(data: bytes, count: int) -> list[IoVec]:
    """The msg_iovlen entries of an iovec array (readv(2), sendmsg(2))."""
    _need(data, 0, count * IOVEC_SIZE, f"{count} struct iovec")
    return [IoVec(*_IOVEC.unpack_from(data, i * IOVEC_SIZE)) for i in range(count)]


def pack_iovec_array(iovecs: list[IoVec] | list[tuple[int, int]]) -> bytes:
    """The bytes of an iovec array."""
    return b"".join(_IOVEC.pack(base, length) for base, length in iovecs)


def _need(data: bytes, offset: int, size: int, what: str) -> None:
    if size < 0 or offset < 0 or len(data) - offset < size:
        raise ValueError(f"{what} needs {size} bytes, got {max(len(data) - offset, 0)}")
