"""The syscall table: every syscall mirrortrace stops, and what handles it.

One explicit, alphabetical mapping (gVisor's linux64.go, strace's
syscallent.h): the keys are exactly the syscalls the seccomp filter traps or
refuses, so the whole surface reads in one place and `mirrortrace syscalls`
prints it. Nothing registers itself on import.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from syscalls import net, process, resolver
from syscalls.base import Handler

FULL = "full"
PARTIAL = "partial"
REFUSED = "refused"


@dataclass(frozen=True)
class Entry:
    handler: Handler | None
    support: str
    note: str
    refuse: int | None = None  # answered by the filter itself with this errno
    only_if_arg: int | None = None  # trapped only when this argument is non-zero


TABLE: dict[str, Entry] = {
    "access": Entry(resolver.access, PARTIAL, "resolver files only (absolute paths)"),
    "clone": Entry(process.clone, FULL, "CLONE_UNTRACED cleared"),
    "clone3": Entry(None, REFUSED, "ENOSYS: flags live in memory the filter cannot see; "
                    "libc falls back to clone", refuse=errno.ENOSYS),
    "connect": Entry(net.connect, FULL, "TCP and UDP to diverted destinations go via the agent"),
    "faccessat": Entry(resolver.faccessat, PARTIAL, "resolver files only (absolute paths)"),
    "faccessat2": Entry(resolver.faccessat, PARTIAL, "resolver files only (absolute paths)"),
    "getpeername": Entry(net.getpeername, FULL, "relay address replaced by the remote's"),
    "getsockname": Entry(net.getsockname, FULL, "a diverted socket shows its pod-side address"),
    "io_uring_setup": Entry(None, REFUSED, "ENOSYS: io_uring would bypass the supervisor",
                            refuse=errno.ENOSYS),
    "listen": Entry(net.listen, FULL, "shown as a listen event"),
    "newfstatat": Entry(resolver.newfstatat, PARTIAL, "resolver files only; lstat left alone"),
    "open": Entry(resolver.open_, PARTIAL, "resolver files only (absolute paths)"),
    "openat": Entry(resolver.openat, PARTIAL, "resolver files only (absolute paths)"),
    "openat2": Entry(resolver.openat2, PARTIAL, "resolver files only (absolute paths)"),
    "recvfrom": Entry(net.recvfrom, FULL, "relay source replaced by the remote's",
                      only_if_arg=4),
    "recvmmsg": Entry(net.recvmmsg, FULL, "relay sources replaced by the remotes'"),
    "recvmsg": Entry(net.recvmsg, FULL, "relay source replaced by the remote's"),
    "sendmmsg": Entry(net.sendmmsg, PARTIAL, "named datagrams sent one per call"),
    "sendmsg": Entry(net.sendmsg, FULL, "named datagrams to diverted destinations"),
    "sendto": Entry(net.sendto, FULL, "named datagrams to diverted destinations",
                    only_if_arg=4),
    "stat": Entry(resolver.stat, PARTIAL, "resolver files only (absolute paths)"),
    "statx": Entry(resolver.statx, PARTIAL, "resolver files only; AT_SYMLINK_NOFOLLOW left alone"),
    "uname": Entry(process.uname, FULL, "nodename is the pod's"),
}
