"""Handlers against a fake call and a fake session: decisions, rewrites, exit fix-ups."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent_image import protocol as p
from supervisor.policy import NetworkPolicy
from syscalls import files, net, process
from syscalls.base import PASS, Park, Pass, Return, Rewrite
from syscalls.sockaddr import decode_sockaddr, encode_sockaddr, inet, inet6

SCRATCH = 0x7000_0000


class FakeCall:
    """A stopped syscall whose memory is a dict of address -> bytes regions."""

    def __init__(self, name: str, args: list[int], memory: dict[int, bytes] | None = None):
        self.tid = self.tgid = 4242
        self.nr = 0
        self.name = name
        self.args = args + [0] * (6 - len(args))
        self.started = time.monotonic()
        self.comm = "app"
        self.memory = dict(memory or {})
        self.result = 0
        self.fds: dict[int, socket.socket] = {}

    def _region(self, addr: int) -> tuple[int, bytes]:
        for base, data in self.memory.items():
            if base <= addr < base + len(data):
                return base, data
        raise OSError(errno.EFAULT, "bad address")

    def read(self, addr: int, size: int) -> bytes:
        base, data = self._region(addr)
        return data[addr - base : addr - base + size]

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        base, data = self._region(addr)
        return data[addr - base :].split(b"\0", 1)[0][:limit]

    def write(self, addr: int, data: bytes) -> None:
        base, old = self._region(addr)
        off = addr - base
        self.memory[base] = old[:off] + data + old[off + len(data) :]

    def scratch(self, data: bytes) -> int:
        self.memory[SCRATCH] = data
        return SCRATCH

    def dup_fd(self, fd: int) -> int:
        if fd not in self.fds:
            raise OSError(errno.EBADF, "bad fd")
        return os.dup(self.fds[fd].fileno())

    def set_result(self, value: int) -> None:
        self.result = value

    def pod_aware(self) -> None:
        self.pod_aware_calls = getattr(self, "pod_aware_calls", 0) + 1


class FakeSession:
    PENDING = object()

    def __init__(self) -> None:
        self.policy = NetworkPolicy(outgoing="remote", dns=True, local_cidrs=[],
                                    nameservers=["198.18.0.53"])
        self.nodename: str | None = "web-7d9f-abcde"
        self.pod_files = {b"/etc/resolv.conf": b"/proc/1/fd/9"}
        self.fs: Any = None
        self.tcp_inflight: dict[int, Any] = {}
        self.tcp_remote: dict[Any, Any] = {}
        self.tcp_local: dict[Any, Any] = {}
        self.udp_remote: dict[Any, Any] = {}
        self.udp_sources: dict[Any, Any] = {}
        self.events: list[tuple[str, str, str, int | str]] = []
        self.opened: list[tuple[str, int]] = []

    def emit(self, call: Any, kind: str, target: str, via: str, result: int | str, *,
             detail: dict[str, Any] | None = None) -> None:
        self.events.append((kind, target, via, result))

    def open_tcp(self, host: str, port: int) -> concurrent.futures.Future[Any]:
        self.opened.append((host, port))
        return concurrent.futures.Future()

    def call_later(self, delay: float, fn: Any) -> None:
        pass

    def udp_relay(self, remote: Any, family: int) -> Any:
        return ("127.0.0.1", 40000), "127.0.0.1"

    def udp_source(self, src: Any, pid: int, comm: str, family: int) -> None:
        self.udp_sources[src] = (pid, comm, family)


@pytest.fixture
def session() -> FakeSession:
    return FakeSession()


def _exit(call: FakeCall, outcome: Pass | Rewrite, result: int) -> None:
    call.result = result
    assert outcome.on_exit is not None
    outcome.on_exit(call)  # type: ignore[arg-type]


# --- resolver files ---------------------------------------------------------------------


def test_opening_a_resolver_file_reads_the_pods_copy(session: FakeSession) -> None:
    call = FakeCall("openat", [-100, 0x1000, os.O_RDONLY | os.O_NOFOLLOW],
                    {0x1000: b"/etc/resolv.conf\0"})
    out = files.openat(call, session)  # type: ignore[arg-type]
    assert isinstance(out, Rewrite)
    assert call.memory[SCRATCH] == b"/proc/1/fd/9\0"  # the program's string is untouched
    assert call.memory[0x1000] == b"/etc/resolv.conf\0"
    assert out.args == {1: SCRATCH, 2: os.O_RDONLY}  # the /proc link needs following
    _exit(call, out, 3)
    assert session.events == [("open", "/etc/resolv.conf", "pod", 3)]


@pytest.mark.parametrize("path", [b"/etc/passwd\0", b"etc/resolv.conf\0", b"/etc/resolv.conf2\0"])
def test_other_paths_pass_through(session: FakeSession, path: bytes) -> None:
    call = FakeCall("open", [0x1000, 0], {0x1000: path})
    assert files.open_(call, session) is PASS  # type: ignore[arg-type]


def test_lstat_semantics_keep_the_local_file(session: FakeSession) -> None:
    call = FakeCall("newfstatat", [-100, 0x1000, 0x2000, 0x100], {0x1000: b"/etc/resolv.conf\0"})
    assert files.newfstatat(call, session) is PASS  # type: ignore[arg-type]


def test_without_pod_files_nothing_is_read(session: FakeSession) -> None:
    session.pod_files = {}
    call = FakeCall("open", [0x1000, 0])  # no memory at all: reading would fail
    assert files.open_(call, session) is PASS  # type: ignore[arg-type]


# --- process ----------------------------------------------------------------------------


def test_uname_shows_the_pods_nodename(session: FakeSession) -> None:
    buf = b"Linux".ljust(65, b"\0") + b"laptop".ljust(65, b"\0") + b"6.18".ljust(65, b"\0")
    call = FakeCall("uname", [0x3000], {0x3000: buf})
    out = process.uname(call, session)  # type: ignore[arg-type]
    assert isinstance(out, Pass)
    _exit(call, out, 0)
    written = call.memory[0x3000]
    assert written[:65] == buf[:65] and written[130:] == buf[130:]
    assert written[65:130] == b"web-7d9f-abcde".ljust(65, b"\0")


def test_clone_untraced_is_cleared_and_nothing_else() -> None:
    flags = process.CLONE_UNTRACED | 0x11  # | SIGCHLD
    out = process.clone(FakeCall("clone", [flags]), FakeSession())  # type: ignore[arg-type]
    assert isinstance(out, Rewrite) and out.args == {0: 0x11}
    assert process.clone(FakeCall("clone", [0x11]), FakeSession()) is PASS  # type: ignore[arg-type]


# --- connect ----------------------------------------------------------------------------


@pytest.fixture
def tcp() -> Iterator[socket.socket]:
    with socket.socket() as s:
        yield s


def _connect_call(sock: socket.socket, addr: bytes) -> FakeCall:
    call = FakeCall("connect", [5, 0x1000, len(addr)], {0x1000: addr})
    call.fds[5] = sock
    return call


def test_loopback_connects_stay_local_and_are_shown(session: FakeSession,
                                                    tcp: socket.socket) -> None:
    call = _connect_call(tcp, encode_sockaddr(inet("127.0.0.1", 8080)))
    out = net.connect(call, session)  # type: ignore[arg-type]
    assert isinstance(out, Pass) and session.opened == []
    _exit(call, out, -errno.ECONNREFUSED)
    assert session.events == [("connect", "127.0.0.1:8080", "local", -errno.ECONNREFUSED)]


def test_a_pod_connect_waits_for_the_agent_and_gets_its_errno(session: FakeSession,
                                                              tcp: socket.socket) -> None:
    call = _connect_call(tcp, encode_sockaddr(inet("198.18.0.10", 9)))
    out = net.connect(call, session)  # type: ignore[arg-type]
    assert isinstance(out, Park) and session.opened == [("198.18.0.10", 9)]
    final = out.then(call, p.ErrorReply(errno="ECONNREFUSED"))  # type: ignore[arg-type]
    assert final == Return(-errno.ECONNREFUSED)
    assert session.events[-1][3] == -errno.ECONNREFUSED
    assert session.tcp_inflight == {}


def test_a_lost_agent_looks_like_a_refusing_network(session: FakeSession,
                                                    tcp: socket.socket) -> None:
    call = _connect_call(tcp, encode_sockaddr(inet("198.18.0.10", 80)))
    out = net.connect(call, session)  # type: ignore[arg-type]
    assert isinstance(out, Park)
    assert out.then(call, ConnectionResetError()) == Return(-errno.ECONNREFUSED)  # type: ignore[arg-type]


def test_a_retried_connect_joins_the_one_under_way(session: FakeSession,
                                                   tcp: socket.socket) -> None:
    addr = encode_sockaddr(inet("198.18.0.10", 80))
    first = net.connect(_connect_call(tcp, addr), session)  # type: ignore[arg-type]
    again = net.connect(_connect_call(tcp, addr), session)  # type: ignore[arg-type]
    assert isinstance(first, Park) and isinstance(again, Park)
    assert again.future is first.future and len(session.opened) == 1


def test_v4_mapped_on_a_v6only_socket_is_left_to_the_kernel(session: FakeSession) -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        call = _connect_call(s, encode_sockaddr(inet6("::ffff:198.18.0.10", 80)))
        assert net.connect(call, session) is PASS  # type: ignore[arg-type]
        assert session.opened == []


def test_unix_sockets_are_not_ours(session: FakeSession) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        call = _connect_call(s, struct.pack("=H", socket.AF_UNIX) + b"/run/x\0")
        assert net.connect(call, session) is PASS  # type: ignore[arg-type]


def test_a_udp_connect_costs_no_round_trip(session: FakeSession) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        call = _connect_call(s, encode_sockaddr(inet("198.18.0.53", 53)))
        assert net.connect(call, session) == Return(0)  # type: ignore[arg-type]
        assert s.getpeername() == ("127.0.0.1", 40000)  # the program's own socket, relayed
        assert session.udp_sources == {("127.0.0.1", s.getsockname()[1]): (4242, "app", 2)}
        assert session.opened == []


# --- addresses coming back out ----------------------------------------------------------


def test_recvfrom_shows_the_remote_instead_of_the_relay(session: FakeSession) -> None:
    session.udp_remote[("127.0.0.1", 40000)] = ("198.18.0.53", 53)
    relay = encode_sockaddr(inet("127.0.0.1", 40000))
    call = FakeCall("recvfrom", [5, 0x5000, 512, 0, 0x1000, 0x2000],
                    {0x1000: relay, 0x2000: struct.pack("=I", 16)})
    out = net.recvfrom(call, session)  # type: ignore[arg-type]
    assert isinstance(out, Pass)
    _exit(call, out, 40)
    assert decode_sockaddr(call.memory[0x1000]) == inet("198.18.0.53", 53)


def test_recvfrom_with_nothing_relayed_costs_no_exit_stop(session: FakeSession) -> None:
    call = FakeCall("recvfrom", [5, 0x5000, 512, 0, 0x1000, 0x2000])
    assert net.recvfrom(call, session) is PASS  # type: ignore[arg-type]


def test_a_short_address_buffer_gets_a_truncated_address_like_the_kernel_gives(
    session: FakeSession,
) -> None:
    session.udp_remote[("::1", 40000)] = ("198.18.0.53", 53)
    relay = encode_sockaddr(inet6("::1", 40000))
    call = FakeCall("recvfrom", [5, 0x5000, 512, 0, 0x1000, 0x2000],
                    {0x1000: relay[:20] + b"\xee" * 8, 0x2000: struct.pack("=I", 20)})
    out = net.recvfrom(call, session)  # type: ignore[arg-type]
    call.memory[0x2000] = struct.pack("=I", 28)  # the kernel reports the full length
    assert isinstance(out, Pass)
    _exit(call, out, 40)
    mapped = encode_sockaddr(inet6("::ffff:198.18.0.53", 53))
    assert call.memory[0x1000] == mapped[:20] + b"\xee" * 8  # nothing past the buffer
