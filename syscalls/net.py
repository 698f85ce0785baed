"""Outgoing TCP and UDP: connect, the send family, and the calls that reveal addresses.

Every diverted socket stays the program's own AF_INET/AF_INET6 socket; only
its peer becomes one of the session's loopback relays. So the program keeps
setsockopt, poll, non-blocking mode and close exactly as the kernel gives
them, and the handlers only have to hide the relay again where an address
comes back out (getpeername, recvfrom, recvmsg, recvmmsg).

Socket operations the supervisor makes on the program's behalf (bind before a
diverted connect, the connect to the relay) act on a pidfd_getfd duplicate:
same open file description, so they act on the program's socket itself, and
no socket()/dup()/close() bookkeeping is needed (threads sharing an fd table
come for free).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
from typing import Any

from agent_image import protocol as p
from syscalls.base import PASS, Call, ExitCall, Outcome, Park, Pass, Return, Rewrite, Session
from syscalls.sockaddr import (
    AF_INET,
    AF_INET6,
    SockAddr,
    decode_sockaddr,
    encode_sockaddr,
    inet,
    inet6,
)

_SOCKLEN = struct.Struct("=I")
_MSGHDR_SIZE = 56
_MMSGHDR_SIZE = 64
_MAX_SOCKADDR = 128
_WILDCARD = {AF_INET: "0.0.0.0", AF_INET6: "::"}
_RELAY_CONNECT_TIMEOUT = 2.0
_TCP_CLOSE = 7  # tcpi_state of a socket that is neither connecting nor connected
# How long a non-blocking connect waits for the pod before it gets EINPROGRESS:
# long enough that a fast answer (a refused port) keeps its exact errno, short
# enough that an event loop never stalls noticeably.
NONBLOCKING_GRACE = 0.05
VIA_AGENT = "agent"  # the via of every diverted connect event

Addr = tuple[str, int]


# --- helpers ---------------------------------------------------------------------------


def _read_sockaddr(call: Call, ptr: int, length: int) -> SockAddr | None:
    if not ptr or length < 2 or length > _MAX_SOCKADDR:
        return None
    try:
        return decode_sockaddr(call.read(ptr, length))
    except (OSError, ValueError):
        return None


def _open_dup(call: Call, fd: int) -> socket.socket | None:
    """Our socket object on the program's socket, or None if fd is not a socket."""
    try:
        dup = call.dup_fd(fd)
    except OSError:
        return None
    try:
        return socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return None


def unmap(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _errno_of(reply: Any) -> int:
    if isinstance(reply, p.ErrorReply):
        return p.errno_value(reply.errno) or errno.EIO
    return errno.ECONNREFUSED  # the channel is gone: like a network that refuses


def ensure_bound(sock: socket.socket, loopback: str) -> Addr:
    """Bind an unbound socket (as the kernel's autobind would) and say how our relay,
    listening on `loopback`, will see it: a wildcard address shows up as loopback."""
    host, port = sock.getsockname()[:2]
    if port == 0:
        sock.bind((_WILDCARD[sock.family], 0))
        host, port = sock.getsockname()[:2]
    host = unmap(host)
    if host in ("0.0.0.0", "::"):
        host = loopback
    return host, port


def _as_family(remote: Addr, family: int) -> SockAddr:
    """The remote address as the program's socket family shows it (v4-mapped on v6)."""
    host, port = remote
    if family == AF_INET6:
        return inet6("::ffff:" + host if "." in host else host, port)
    return inet(host, port)


def _connect_event(session: Session, call: Call, target: SockAddr, via: str, result: int,
                   reason: str) -> None:
    session.emit(call, "connect", str(target), via, result, detail={"rule": reason})


def _label_stream(fut: Any, call: Call, target: SockAddr) -> None:
    """Tell the pod-side stream, once it exists, who connected and how the connect event
    shows it: its "close" event and the session's list of open streams say the same.

    A done callback added before anyone else waits on fut, so it runs (in the session's
    thread) before the stream can join the program's socket."""
    pid, comm, text = call.tgid, call.comm, str(target)

    def label(f: Any) -> None:
        if not f.cancelled() and f.exception() is None:
            bridge = f.result()
            if not isinstance(bridge, p.ErrorReply):
                bridge.opened_by(pid, comm, text, VIA_AGENT)

    fut.add_done_callback(label)


# --- connect ---------------------------------------------------------------------------


def connect(call: Call, session: Session) -> Outcome:
    """Divert connect(2) of TCP and UDP sockets to pod destinations through the agent."""
    fd, ptr, length = call.args[0], call.args[1], call.args[2] & 0xFFFFFFFF
    addr = _read_sockaddr(call, ptr, length)
    if addr is None or addr.family not in (AF_INET, AF_INET6):
        return PASS
    sock = _open_dup(call, fd)
    if sock is None:
        return PASS
    decision = session.policy.decide_connect(addr, sock.type)
    if not decision.diverted:
        sock.close()

        def shown(c: ExitCall) -> None:
            _connect_event(session, c, addr, "local", c.result, decision.reason)

        return Pass(on_exit=shown)
    if sock.type == socket.SOCK_STREAM:
        return _connect_tcp(call, session, sock, addr, decision.reason)
    if sock.type == socket.SOCK_DGRAM:
        return _connect_udp(call, session, sock, addr, decision.reason)
    sock.close()
    return PASS


def _connect_tcp(call: Call, session: Session, sock: socket.socket, addr: SockAddr,
                 reason: str) -> Outcome:
    fd = call.args[0]
    with sock:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        if state != _TCP_CLOSE:
            return PASS  # connecting or connected: the kernel's EALREADY/EISCONN is the answer
        if sock.family == AF_INET6 and addr.is_v4_mapped and sock.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
        ):
            return PASS  # Linux refuses it (ENETUNREACH); so will the local kernel
        key = os.fstat(sock.fileno()).st_ino
        nonblocking = bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)
        sec, usec = struct.unpack("qq", sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16))
    remote = addr.unmapped()
    target = (remote.host, remote.port)
    # A connect that a signal broke off and the program retries (SA_RESTART, or
    # its own EINTR loop) waits for the pod-side connect already under way.
    inflight = session.tcp_inflight.get(key)
    if inflight is None or inflight[1] != target:
        fut = session.open_tcp(remote.host, remote.port)
        _label_stream(fut, call, addr)
        inflight = (fut, target)
        session.tcp_inflight[key] = inflight
        # ...and one never retried must not hold its pod-side stream forever.
        fut.add_done_callback(
            lambda f: session.call_later(30, lambda: _drop_stale(session, key, f))
        )
    fut = inflight[0]
    # How long the program is prepared to wait: a non-blocking socket only briefly,
    # a blocking one until SO_SNDTIMEO (as in the kernel), else until the pod answers.
    limit = NONBLOCKING_GRACE if nonblocking else (sec + usec / 1e6) or None
    waiter = fut if limit is None else session.within(fut, limit)

    def then(c: Call, reply: Any) -> Outcome:
        if reply is session.PENDING:
            return _connect_pending(c, session, fd, addr, fut, reason)
        session.tcp_inflight.pop(key, None)
        if isinstance(reply, BaseException | p.ErrorReply):
            err = _errno_of(reply)
            _connect_event(session, c, addr, VIA_AGENT, -err, reason)
            return Return(-err)
        again = _open_dup(c, fd)
        if again is None:
            session.abandon_tcp(reply)
            return Return(-errno.EBADF)
        with again:
            return _attach_relay(c, session, again, addr, reply, reason)

    def abandon() -> None:
        session.tcp_inflight.pop(key, None)
        if fut.done() and fut.exception() is None and not isinstance(fut.result(), p.ErrorReply):
            session.abandon_tcp(fut.result())

    return Park(waiter, then, abandon)


def _connect_pending(call: Call, session: Session, fd: int, addr: SockAddr, fut: Any,
                     reason: str) -> Outcome:
    """The pod has not answered in the time the program waits: EINPROGRESS, as Linux.

    The program's socket is left really connecting (SYN_SENT, so no POLLOUT yet)
    to a loopback listener that drops its SYNs; the session completes it when the
    pod answers (supervisor/session.py, finish_pending).
    """
    sock = _open_dup(call, fd)
    if sock is None:
        return Return(-errno.EBADF)
    try:
        remote = addr.unmapped()
        session.start_pending(sock, (remote.host, remote.port), fut)
    except OSError as exc:
        sock.close()
        return Return(-(exc.errno or errno.EIO))
    _connect_event(session, call, addr, VIA_AGENT, -errno.EINPROGRESS, reason)
    return Return(-errno.EINPROGRESS)


def _drop_stale(session: Session, key: int, fut: Any) -> None:
    entry = session.tcp_inflight.get(key)
    if entry is not None and entry[0] is fut:
        session.tcp_inflight.pop(key, None)
        if fut.exception() is None and not isinstance(fut.result(), p.ErrorReply):
            session.abandon_tcp(fut.result())


def _attach_relay(call: Call, session: Session, sock: socket.socket, addr: SockAddr,
                  bridge: Any, reason: str) -> Outcome:
    v6only = False
    if sock.family == AF_INET6:
        v6only = bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    where = session.relay_address(sock.family, v6only)
    if where is None:
        session.abandon_tcp(bridge)
        _connect_event(session, call, addr, VIA_AGENT, -errno.ENETUNREACH, reason)
        return Return(-errno.ENETUNREACH)
    _, relay = where
    try:
        peer = ensure_bound(sock, unmap(relay[0]))
        remote = addr.unmapped()
        session.expect_tcp(peer, bridge, (remote.host, remote.port))
        _connect_nowait(sock, relay)
    except OSError as exc:
        session.abandon_tcp(bridge)
        err = exc.errno or errno.EIO
        _connect_event(session, call, addr, VIA_AGENT, -err, reason)
        return Return(-err)
    nonblocking = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    _connect_event(session, call, addr, VIA_AGENT, 0, reason)
    # A non-blocking socket sees what a real network gives it: EINPROGRESS, then
    # writable with SO_ERROR 0. The connection is in fact complete already.
    return Return(-errno.EINPROGRESS if nonblocking else 0)


def _connect_nowait(sock: socket.socket, relay: Addr) -> None:
    """Connect the program's socket to our listener without blocking our thread on it."""
    try:
        sock.connect(relay)
        return
    except BlockingIOError:
        pass
    _, writable, _ = select.select([], [sock], [], _RELAY_CONNECT_TIMEOUT)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if not writable:
        raise OSError(errno.ETIMEDOUT, "the relay did not accept")
    if err:
        raise OSError(err, os.strerror(err))


def _connect_udp(call: Call, session: Session, sock: socket.socket, addr: SockAddr,
                 reason: str) -> Outcome:
    with sock:
        found = _udp_route(call, session, sock, addr)
        if isinstance(found, Return):
            return found
        relay, _ = found
        try:
            sock.connect(relay)
        except OSError as exc:
            return Return(-(exc.errno or errno.EIO))
    session.emit(call, "udp", str(addr), VIA_AGENT, 0, detail={"rule": reason})
    return Return(0)


def _udp_route(call: Call, session: Session, sock: socket.socket, addr: SockAddr
               ) -> tuple[Addr, Addr] | Return:
    """The relay standing for addr, and the program socket's address as it sees it.

    Registers the socket as a source of the traced program; the pod-side socket
    is opened when its first datagram arrives, so this costs no round trip.
    """
    remote = addr.unmapped()
    relay, loopback = session.udp_relay((remote.host, remote.port), sock.family)
    try:
        src = ensure_bound(sock, loopback)
    except OSError as exc:
        return Return(-(exc.errno or errno.EIO))
    session.udp_source(src, call.tgid, call.comm, sock.family)
    return relay, src


# --- unconnected sends -------------------------------------------------------------------


def _diverted_dgram(call: Call, session: Session, fd: int, addr: SockAddr | None
                    ) -> tuple[bytes, int] | Return | None:
    """For a datagram to a diverted destination: the relay's sockaddr, encoded for the
    program's socket, and that socket's family; None when nothing is to be done."""
    if addr is None or addr.family not in (AF_INET, AF_INET6):
        return None
    sock = _open_dup(call, fd)
    if sock is None:
        return None
    with sock:
        if sock.type != socket.SOCK_DGRAM:
            return None
        if not session.policy.decide_connect(addr, sock.type).diverted:
            return None
        found = _udp_route(call, session, sock, addr)
        if isinstance(found, Return):
            return found
        relay, _ = found
        return encode_sockaddr(_as_family(relay, sock.family)), sock.family


def sendto(call: Call, session: Session) -> Outcome:
    """Divert sendto(2) of a datagram to a pod address: the kernel sends it to the relay."""
    fd, ptr, length = call.args[0], call.args[4], call.args[5] & 0xFFFFFFFF
    found = _diverted_dgram(call, session, fd, _read_sockaddr(call, ptr, length))
    if found is None or isinstance(found, Return):
        return found or PASS
    encoded, _ = found
    return Rewrite({4: call.scratch(encoded), 5: len(encoded)})


def _named_datagram(call: Call, session: Session, fd: int, hdr_ptr: int
                    ) -> tuple[bytes, bytes] | Outcome:
    """The msghdr at hdr_ptr and the relay sockaddr its msg_name must name instead;
    or the outcome, when its datagram is not diverted."""
    try:
        hdr = call.read(hdr_ptr, _MSGHDR_SIZE)
    except OSError:
        return PASS
    name_ptr, name_len = struct.unpack_from("=QI", hdr, 0)
    found = _diverted_dgram(call, session, fd, _read_sockaddr(call, name_ptr, name_len))
    if found is None or isinstance(found, Return):
        return found or PASS
    return hdr, found[0]


def _with_name(call: Call, header: bytes, encoded: bytes) -> int:
    """Copy a msghdr (or mmsghdr) with the relay's sockaddr right behind it into scratch
    memory, its msg_name pointing there; returns the copy's address."""
    base = call.scratch(header + encoded)
    hdr = bytearray(header)
    struct.pack_into("=QI", hdr, 0, base + len(header), len(encoded))
    call.write(base, bytes(hdr))
    return base


def sendmsg(call: Call, session: Session) -> Outcome:
    """Divert sendmsg(2) with a pod msg_name: the kernel reads a copy naming the relay."""
    found = _named_datagram(call, session, call.args[0], call.args[1])
    if not isinstance(found, tuple):
        return found
    hdr, encoded = found
    return Rewrite({1: _with_name(call, hdr, encoded)})


def sendmmsg(call: Call, session: Session) -> Outcome:
    """Divert sendmmsg(2) whose first message names a pod address.

    glibc's resolver connects its socket and sends A and AAAA with no names, so
    that case is plain connect diversion; here the named case is served one
    message at a time (a short count is a legal sendmmsg result).
    """
    vec = call.args[1]
    if (call.args[2] & 0xFFFFFFFF) == 0:
        return PASS
    found = _named_datagram(call, session, call.args[0], vec)
    if not isinstance(found, tuple):
        return found
    hdr, encoded = found
    base = _with_name(call, hdr + bytes(_MMSGHDR_SIZE - _MSGHDR_SIZE), encoded)

    def copy_len(e: ExitCall) -> None:
        if e.result == 1:
            e.write(vec + _MSGHDR_SIZE, e.read(base + _MSGHDR_SIZE, 4))

    return Rewrite({1: base, 2: 1}, on_exit=copy_len)


# --- where addresses come back out -----------------------------------------------------------


def _rewrite_name(call: ExitCall, session: Session, ptr: int, capacity: int, got: int) -> None:
    """If the kernel wrote a relay's address at ptr, write the remote's instead.

    Judged on the bytes actually written (the kernel truncates to the buffer and
    reports the full length), so a short buffer gets the remote's address cut the
    same way, never a piece of the relay's.
    """
    if not ptr or capacity < 4 or got < 4:
        return
    try:
        raw = call.read(ptr, min(got, capacity))
    except OSError:
        return
    (family,) = struct.unpack_from("=H", raw)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family not in (AF_INET, AF_INET6):
        return
    for relay in (("127.0.0.1", port), ("::1", port)):
        remote = session.udp_remote.get(relay)
        if remote is not None and encode_sockaddr(_as_family(relay, family)).startswith(raw):
            call.write(ptr, encode_sockaddr(_as_family(remote, family))[: len(raw)])
            return


def _read_socklen(call: Call, ptr: int) -> int:
    if not ptr:
        return 0
    try:
        return _SOCKLEN.unpack(call.read(ptr, 4))[0]
    except OSError:
        return 0


def recvfrom(call: Call, session: Session) -> Outcome:
    """Pass through recvfrom(2), showing the remote address instead of a relay's."""
    if not session.udp_remote:
        return PASS
    ptr, len_ptr = call.args[4], call.args[5]
    capacity = _read_socklen(call, len_ptr)

    def fix(e: ExitCall) -> None:
        if e.result >= 0:
            _rewrite_name(e, session, ptr, capacity, _read_socklen(e, len_ptr))

    return Pass(on_exit=fix)


def recvmsg(call: Call, session: Session) -> Outcome:
    """Pass through recvmsg(2), showing the remote address instead of a relay's."""
    if not session.udp_remote:
        return PASS
    hdr_ptr = call.args[1]
    try:
        name_ptr, capacity = struct.unpack("=QI", call.read(hdr_ptr, 12))
    except OSError:
        return PASS
    if not name_ptr:
        return PASS

    def fix(e: ExitCall) -> None:
        if e.result >= 0:
            got = _read_socklen(e, hdr_ptr + 8)
            _rewrite_name(e, session, name_ptr, capacity, got)

    return Pass(on_exit=fix)


def recvmmsg(call: Call, session: Session) -> Outcome:
    """Pass through recvmmsg(2), showing remote addresses instead of relays'."""
    if not session.udp_remote:
        return PASS
    vec, vlen = call.args[1], min(call.args[2] & 0xFFFFFFFF, 1024)
    try:
        raw = call.read(vec, vlen * _MMSGHDR_SIZE)
    except OSError:
        return PASS
    names = [struct.unpack_from("=QI", raw, i * _MMSGHDR_SIZE) for i in range(vlen)]

    def fix(e: ExitCall) -> None:
        for i in range(max(0, min(e.result, vlen))):
            name_ptr, capacity = names[i]
            got = _read_socklen(e, vec + i * _MMSGHDR_SIZE + 8)
            _rewrite_name(e, session, name_ptr, capacity, got)

    return Pass(on_exit=fix)


def getpeername(call: Call, session: Session) -> Outcome:
    """Pass through getpeername(2), showing the remote address instead of a relay's."""
    if not session.udp_remote and not session.tcp_remote:
        return PASS
    fd, ptr, len_ptr = call.args[0], call.args[1], call.args[2]
    capacity = _read_socklen(call, len_ptr)

    def fix(e: ExitCall) -> None:
        if e.result != 0:
            return
        got = _read_socklen(e, len_ptr)
        addr = _read_sockaddr(e, ptr, min(got, capacity))
        if addr is None or addr.host is None:
            return
        if session.is_tcp_relay((unmap(addr.host), addr.port or 0)):
            sock = _open_dup(e, fd)
            if sock is None:
                return
            try:
                local = sock.getsockname()
            finally:
                sock.close()
            remote = session.tcp_remote.get((unmap(local[0]), local[1]))
            if remote is not None:
                e.write(ptr, encode_sockaddr(_as_family(remote, addr.family))[:capacity])
            return
        _rewrite_name(e, session, ptr, capacity, got)

    return Pass(on_exit=fix)


def getsockname(call: Call, session: Session) -> Outcome:
    """Pass through getsockname(2) of a diverted socket, showing the pod-side address.

    In the pod the socket's address would be the pod's; glibc also sorts
    getaddrinfo results (RFC 6724) by the source address a UDP connect to each
    candidate gets, so this keeps that order the pod's.
    """
    if not session.tcp_local and not session.udp_sources:
        return PASS
    fd, ptr, len_ptr = call.args[0], call.args[1], call.args[2]
    sock = _open_dup(call, fd)
    if sock is None or sock.family not in (AF_INET, AF_INET6):
        if sock is not None:
            sock.close()
        return PASS
    with sock:
        try:
            local = sock.getsockname()
            peer = sock.getpeername()
        except OSError:
            return PASS
        family = sock.family
    local_key = (unmap(local[0]), local[1])
    peer_key = (unmap(peer[0]), peer[1])
    capacity = _read_socklen(call, len_ptr)

    def shown_as(pod_local: Addr) -> Pass:
        def fix(e: ExitCall) -> None:
            if e.result == 0:
                e.write(ptr, encode_sockaddr(_as_family(pod_local, family))[:capacity])

        return Pass(on_exit=fix)

    if session.is_tcp_relay(peer_key):
        pod_local = session.tcp_local.get(local_key)
        return shown_as(pod_local) if pod_local else PASS
    remote = session.udp_remote.get(peer_key)
    if remote is None:
        return PASS
    fut = session.source_for(remote[0])

    def then(c: Call, host: Any) -> Outcome:
        return shown_as((host, local_key[1])) if isinstance(host, str) else PASS

    if fut.done():
        return then(call, fut.result())
    return Park(fut, then)


def listen(call: Call, session: Session) -> Outcome:
    """Pass through listen(2), showing the port the program now listens on."""
    fd = call.args[0]

    def shown(e: ExitCall) -> None:
        sock = _open_dup(e, fd)
        if sock is None:
            return
        try:
            where = sock.getsockname()
        except OSError:
            return
        finally:
            sock.close()
        if isinstance(where, tuple):
            target = str(_as_family((unmap(where[0]), where[1]), sock.family))
        else:
            target = str(where)
        session.emit(e, "listen", target, "local", e.result)

    return Pass(on_exit=shown)
