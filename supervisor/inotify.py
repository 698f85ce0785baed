"""inotify(7), just enough to learn that the program closed a file it wrote.

Write mode sends a cached copy back to the pod when the program closes it.
Trapping close(2) would stop every program on every close; IN_CLOSE_WRITE on
the cache's directories tells us the same, for every process, every dup'ed fd
and every exit, at no cost to the program.
"""

from __future__ import annotations

import ctypes
import os
import struct

IN_CLOSE_WRITE = 0x00000008
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class Inotify:
    """A non-blocking inotify fd; `read` gives (wd, mask, name) for what happened."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), "inotify_init1")
        self.fd = fd

    def watch(self, path: bytes, mask: int = IN_CLOSE_WRITE) -> int:
        """Watch a directory (again is fine: the kernel gives back the same wd)."""
        wd = _libc.inotify_add_watch(self.fd, path, mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(wd)

    def read(self) -> list[tuple[int, int, bytes]]:
        out = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size
                name = data[pos : pos + length].rstrip(b"\0")
                pos += length
                out.append((wd, mask, name))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
