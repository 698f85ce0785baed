"""The files that make name resolution the pod's: open and stat of resolver files.

The program reads the pod's /etc/resolv.conf, /etc/hosts, /etc/hostname (and
/proc/sys/kernel/hostname, which Go's os.Hostname reads first) and an
nsswitch.conf whose hosts line is `files dns`. Every resolver reads these files
itself (glibc, musl, Go, c-ares, JNDI), so serving them is what makes short
service names and search domains work everywhere. The path argument is pointed
at a copy in scratch memory naming the session's copy of the file; the
program's own string is never touched and the register is restored at exit.

Only absolute paths are matched here; resolving relative and dirfd-relative
paths the way the kernel does belongs to the remote-files family.
"""

from __future__ import annotations

import os

from syscalls.base import PASS, Call, ExitCall, Outcome, Rewrite, Session

_O_NOFOLLOW = os.O_NOFOLLOW


def _divert_path(call: Call, session: Session, index: int, kind: str,
                 flags_index: int | None = None) -> Outcome:
    files = session.pod_files
    if not files:
        return PASS
    ptr = call.args[index]
    try:
        path = call.read_cstring(ptr, 64)
    except OSError:
        return PASS
    served = files.get(path)
    if served is None:
        return PASS
    try:
        addr = call.scratch(served + b"\0")
    except OSError:
        return PASS
    args = {index: addr}
    if flags_index is not None and call.args[flags_index] & _O_NOFOLLOW:
        # The served copy is reached through a /proc magic link.
        args[flags_index] = call.args[flags_index] & ~_O_NOFOLLOW

    def shown(e: ExitCall) -> None:
        session.emit(e, kind, path.decode(errors="replace"), "pod", e.result)

    return Rewrite(args, on_exit=shown)


def open_(call: Call, session: Session) -> Outcome:
    """Divert open(2) of a resolver file to the pod's copy."""
    return _divert_path(call, session, 0, "open", flags_index=1)


def openat(call: Call, session: Session) -> Outcome:
    """Divert openat(2) of a resolver file to the pod's copy."""
    return _divert_path(call, session, 1, "open", flags_index=2)


def openat2(call: Call, session: Session) -> Outcome:
    """Divert openat2(2) of a resolver file to the pod's copy (RESOLVE_* flags still apply)."""
    return _divert_path(call, session, 1, "open")


def stat(call: Call, session: Session) -> Outcome:
    """Divert stat(2) of a resolver file, so change detection sees the pod's copy."""
    return _divert_path(call, session, 0, "stat")


def newfstatat(call: Call, session: Session) -> Outcome:
    """Divert newfstatat(2) of a resolver file (AT_SYMLINK_NOFOLLOW left alone)."""
    if call.args[3] & 0x100:  # AT_SYMLINK_NOFOLLOW: lstat semantics, keep the local file
        return PASS
    return _divert_path(call, session, 1, "stat")


def statx(call: Call, session: Session) -> Outcome:
    """Divert statx(2) of a resolver file (AT_SYMLINK_NOFOLLOW left alone)."""
    if call.args[2] & 0x100:
        return PASS
    return _divert_path(call, session, 1, "stat")


def access(call: Call, session: Session) -> Outcome:
    """Divert access(2) of a resolver file."""
    return _divert_path(call, session, 0, "stat")


def faccessat(call: Call, session: Session) -> Outcome:
    """Divert faccessat(2) and faccessat2(2) of a resolver file."""
    return _divert_path(call, session, 1, "stat")
