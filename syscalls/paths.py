"""Turning a syscall's (dirfd, path) into the absolute path the kernel would use.

The policy decides on absolute paths, so a relative path is joined, as the
kernel would, to the calling thread's working directory or to the directory
its dirfd names (both read from /proc/TID, so threads with their own fs or
file tables are right too). The result is normalised lexically: `.` and `..`
are folded without following symlinks, which differs from the kernel only for
`..` after a symlink; a remote path keeps its symlinks for the pod to resolve.

A directory of the pod that the program entered or opened is a directory in
the session's cache (supervisor/remote_files.py), so a base found inside the
cache is mapped back to the pod path it mirrors: `cd /data && cat x` reads the
pod's /data/x.
"""

from __future__ import annotations

import os

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200


def fd_arg(value: int) -> int:
    """An int argument as the kernel reads it: the low 32 bits, signed."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def normalise(path: bytes) -> bytes:
    """Fold `//`, `.` and `..` in an absolute path; `..` at / stays at /."""
    if b"/." not in path and b"//" not in path and (len(path) == 1 or not path.endswith(b"/")):
        return path  # the common case: already normal
    out: list[bytes] = []
    for part in path.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if out:
                out.pop()
            continue
        out.append(part)
    return b"/" + b"/".join(out)


def base_of(tid: int, dirfd: int) -> bytes | None:
    """The directory a relative path starts from, or None when dirfd names none."""
    link = f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
    try:
        base = os.readlink(link.encode())
    except OSError:
        return None  # a bad dirfd: the kernel will say EBADF itself
    if not base.startswith(b"/") or base.endswith(b" (deleted)"):
        return None  # a socket, pipe, or a removed directory: not ours to resolve
    return base


def join(base: bytes, path: bytes) -> bytes:
    return normalise(base + b"/" + path) if path else base


def pod_path(root: bytes, path: bytes) -> bytes | None:
    """The pod path a path inside the cache root mirrors, or None."""
    if path.startswith(root) and (len(path) == len(root) or path[len(root)] == 0x2F):
        return path[len(root) :] or b"/"
    return None
