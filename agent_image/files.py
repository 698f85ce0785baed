"""The pod's file system as the target container sees it, for the agent.

Every path is resolved inside a root directory: `/proc/PID/root` of the target
(`--target-pid`), a directory given with `--root`, or `/`. Opening
`/proc/PID/root/etc/x` naively would follow an absolute symlink inside the
container (`/etc/x -> /run/config/x`) to the agent's own `/run/config/x`; so
paths are opened with openat2(2) and RESOLVE_IN_ROOT, which makes `/` and `..`
stop at the root exactly as they do for the container (Linux >= 5.6).

Standard library only (ctypes for openat2 and readlinkat): this ships in the
agent image.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as stat_mod
from dataclasses import dataclass

SYS_OPENAT2 = 437
RESOLVE_IN_ROOT = 0x10
RESOLVE_NO_MAGICLINKS = 0x02

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_readlinkat = _libc.readlinkat
_readlinkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
_readlinkat.restype = ctypes.c_ssize_t


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "file", "dir", "link", "other"


class PodFiles:
    """Opens, stats, lists and reads links under one root, as the container would."""

    def __init__(self, root: str = "/") -> None:
        self.root = root
        self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._root_fd)

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        """An fd for path inside the root; raises OSError with the pod's errno."""
        if not path.startswith("/"):
            raise OSError(errno.EINVAL, "path must be absolute")
        how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        fd = _syscall(SYS_OPENAT2, ctypes.c_int(self._root_fd), path.lstrip("/").encode()
                      or b".", ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return fd

    def stat(self, path: str, follow: bool = True) -> os.stat_result:
        fd = self.open(path, os.O_PATH | (0 if follow else os.O_NOFOLLOW))
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        fd = self.open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            if not stat_mod.S_ISLNK(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a symbolic link", path)
            buf = ctypes.create_string_buffer(4096)
            n = _readlinkat(fd, b"", buf, len(buf))  # "" names the O_PATH link itself
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
            return buf.raw[:n].decode(errors="surrogateescape")
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[Entry]:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            out = []
            with os.scandir(fd) as it:
                for e in it:
                    if e.is_symlink():
                        kind = "link"
                    elif e.is_dir(follow_symlinks=False):
                        kind = "dir"
                    elif e.is_file(follow_symlinks=False):
                        kind = "file"
                    else:
                        kind = "other"
                    out.append(Entry(e.name, kind))
            return sorted(out, key=lambda e: e.name)
        finally:
            os.close(fd)

    def read(self, path: str, offset: int, length: int) -> tuple[os.stat_result, bytes]:
        """The file's metadata and up to length bytes from offset: large files travel in
        chunks, never in one frame."""
        fd = self.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            return st, os.pread(fd, length, offset)
        finally:
            os.close(fd)
