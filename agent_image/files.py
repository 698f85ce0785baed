"""The pod's file system as the target container sees it, for the agent.

Every path is resolved inside a root directory: `/proc/PID/root` of the target
(`--target-pid`), a directory given with `--root`, or `/`. Opening
`/proc/PID/root/etc/x` naively would follow an absolute symlink inside the
container (`/etc/x -> /run/config/x`) to the agent's own `/run/config/x`; so
paths are opened with openat2(2) and RESOLVE_IN_ROOT, which makes `/` and `..`
stop at the root exactly as they do for the container (Linux >= 5.6).
Operations on a name (unlink, rename, mkdir) resolve the parent directory that
way and then act on the last component relative to it, so a symlink there is
the object itself, as it is for unlink(2) and rename(2).

Permissions are the target's too: the agent usually runs as root in an
ephemeral container, the app as some uid with supplementary groups (fsGroup).
With `creds` set, each operation runs with the target's groups, fsgid and fsuid
in this thread only, so what the app may not read gives EACCES here as well,
and what the agent creates belongs to the app.

Standard library only (ctypes for the raw syscalls): this ships in the agent
image. Syscall numbers are x86_64's.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as stat_mod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

SYS_SETGROUPS = 116
SYS_SETFSUID = 122
SYS_SETFSGID = 123
SYS_RENAMEAT2 = 316
SYS_OPENAT2 = 437
SYS_FACCESSAT2 = 439
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
AT_SYMLINK_NOFOLLOW = 0x100
AT_EACCESS = 0x200
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_readlinkat = _libc.readlinkat
_readlinkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
_readlinkat.restype = ctypes.c_ssize_t


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def _check(result: int, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return result


@dataclass(frozen=True)
class Creds:
    """The identity the kernel checks file access against: fsuid, fsgid, groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @classmethod
    def of_process(cls, pid: int) -> Creds:
        """PID's file-system credentials, from /proc/PID/status ("Uid:\\treal\\teffective
        \\tsaved\\tfs"): the fs ids are the ones permission checks use."""
        fields: dict[str, list[str]] = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Uid", "Gid", "Groups"):
                    fields[key] = rest.split()
        if "Uid" not in fields or "Gid" not in fields:
            raise OSError(errno.EIO, f"no Uid/Gid in /proc/{pid}/status")
        return cls(int(fields["Uid"][3]), int(fields["Gid"][3]),
                   tuple(int(g) for g in fields.get("Groups", [])))

    @classmethod
    def own(cls) -> Creds:
        return cls(os.geteuid(), os.getegid(), tuple(os.getgroups()))


def target_creds(pid: int | None) -> Creds | None:
    """The credentials to act with for target PID, or None when there is nothing to
    switch: no target, a target running as root, or an agent that is not root (it
    could not switch, and it has no more rights than its own anyway)."""
    if pid is None or os.geteuid() != 0:
        return None
    creds = Creds.of_process(pid)
    return None if creds.uid == 0 else creds


def _set_groups(groups: tuple[int, ...]) -> None:
    # The raw syscall changes this thread only; glibc's setgroups() would broadcast the
    # change to every thread of the agent (setxid signalling).
    array = (ctypes.c_uint32 * len(groups))(*groups) if groups else None
    _check(_syscall(ctypes.c_long(SYS_SETGROUPS), ctypes.c_size_t(len(groups)), array))


def _set_fs_id(nr: int, value: int) -> None:
    # setfsuid(2)/setfsgid(2) return the previous id and never fail visibly; an invalid
    # id (-1) changes nothing and returns the current one, which tells whether it took.
    _syscall(ctypes.c_long(nr), ctypes.c_uint32(value))
    now = _syscall(ctypes.c_long(nr), ctypes.c_uint32(0xFFFFFFFF))
    if now != value:
        which = "fsuid" if nr == SYS_SETFSUID else "fsgid"
        raise OSError(errno.EPERM, f"cannot set {which} to {value} (no CAP_SETUID/SETGID?)")


@contextmanager
def _acting_as(target: Creds | None, own: Creds) -> Iterator[None]:
    """Run the body with target's file-system identity in this thread, then own's again.

    Groups and fsgid change before fsuid: once fsuid is not 0 the kernel drops the
    file capabilities (capabilities(7), "Effect of user ID changes on capabilities"),
    and setting fsuid back to 0 first restores them. The restore runs after a partial
    switch too: setting an id it already has is harmless.
    """
    if target is None:
        yield
        return
    try:
        _set_groups(target.groups)
        _set_fs_id(SYS_SETFSGID, target.gid)
        _set_fs_id(SYS_SETFSUID, target.uid)
        yield
    finally:
        _set_fs_id(SYS_SETFSUID, own.uid)
        _set_fs_id(SYS_SETFSGID, own.gid)
        _set_groups(own.groups)


@contextmanager
def _exact_mode() -> Iterator[None]:
    """No umask while creating: the mode asked for is the program's, already masked by
    its own umask, and the agent's must not mask it again. umask is per process, but
    the agent does its file operations on one thread, one at a time."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


_KINDS = (
    (stat_mod.S_ISCHR, "chr"),
    (stat_mod.S_ISBLK, "blk"),
    (stat_mod.S_ISFIFO, "fifo"),
    (stat_mod.S_ISSOCK, "sock"),
)


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "file", "dir", "link", "chr", "blk", "fifo", "sock", "other"
    ino: int


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if entry.is_file(follow_symlinks=False):
        return "file"
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:  # gone since the listing: it was something, say so
        return "other"
    return next((kind for test, kind in _KINDS if test(mode)), "other")


class PodFiles:
    """Opens, stats, lists, reads, writes, renames and removes under one root, as the
    container would, and with the target's credentials when creds is given."""

    def __init__(self, root: str = "/", creds: Creds | None = None) -> None:
        self.root = root
        self.creds = creds
        self._own = Creds.own()
        self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._root_fd)

    def _as_target(self) -> AbstractContextManager[None]:
        return _acting_as(self.creds, self._own)

    def _open(self, path: str, flags: int, mode: int = 0) -> int:
        if not path.startswith("/"):
            raise OSError(errno.EINVAL, "path must be absolute", path)
        how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        return _check(_syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(self._root_fd),
                               os.fsencode(path.lstrip("/")) or b".", ctypes.byref(how),
                               ctypes.c_size_t(ctypes.sizeof(how))), path)

    def _parent(self, path: str) -> tuple[int, str]:
        """An O_PATH fd of path's directory inside the root, and the last component.

        A trailing slash stays on the name, so the kernel judges it as for unlink(2)
        ("a/" of a file is ENOTDIR). The root itself becomes ".", which the kernel
        refuses with the errno it gives for "/" (EISDIR, EEXIST, EBUSY), but for rmdir.
        """
        if not path.startswith("/"):
            raise OSError(errno.EINVAL, "path must be absolute", path)
        bare = path.rstrip("/")
        head, _, name = bare.rpartition("/")
        if not name:
            return self._open("/", os.O_PATH | os.O_DIRECTORY), "."
        name += "/" if len(bare) < len(path) else ""
        return self._open(head or "/", os.O_PATH | os.O_DIRECTORY), name

    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0) -> int:
        """An fd for path inside the root; raises OSError with the pod's errno."""
        with self._as_target():
            return self._open(path, flags, mode)

    def stat(self, path: str, follow: bool = True) -> os.stat_result:
        with self._as_target():
            fd = self._open(path, os.O_PATH | (0 if follow else os.O_NOFOLLOW))
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        with self._as_target():
            fd = self._open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            if not stat_mod.S_ISLNK(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a symbolic link", path)
            buf = ctypes.create_string_buffer(4096)
            n = _check(_readlinkat(fd, b"", buf, len(buf)), path)  # "": the link itself
            return buf.raw[:n].decode(errors="surrogateescape")
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[Entry]:
        with self._as_target():
            fd = self._open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                with os.scandir(fd) as it:
                    # _kind may lstat: still as the target, who must be able to search.
                    out = [Entry(e.name, _kind(e), e.inode()) for e in it]
            finally:
                os.close(fd)
        return sorted(out, key=lambda e: e.name)

    def read(self, path: str, offset: int, length: int) -> tuple[os.stat_result, bytes]:
        """The file's metadata and up to length bytes from offset: large files travel in
        chunks, never in one frame."""
        with self._as_target():
            # O_NONBLOCK: a fifo (or a tty) must not hang the agent's only thread.
            fd = self._open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat_mod.S_ISREG(st.st_mode):
                raise OSError(errno.ENXIO, "not a regular file", path)
            return st, os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def write(self, path: str, data: bytes, offset: int = 0, *, truncate: bool = False,
              create: bool = False, mode: int = 0o644, size: int | None = None
              ) -> os.stat_result:
        """Write data at offset, then cut the file to size if given; the metadata after.

        Writing and truncating run as the target too: a file-size limit or quota is
        charged to whoever writes.
        """
        flags = os.O_WRONLY | os.O_NONBLOCK  # a fifo without a reader: ENXIO, not a hang
        flags |= (os.O_CREAT if create else 0) | (os.O_TRUNC if truncate else 0)
        with self._as_target():
            with _exact_mode():
                # openat2 refuses a mode without O_CREAT (EINVAL), unlike open(2).
                fd = self._open(path, flags, mode if create else 0)
            try:
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    if n == 0:
                        raise OSError(errno.EIO, "pwrite wrote nothing", path)
                    view, offset = view[n:], offset + n
                if size is not None:
                    os.ftruncate(fd, size)
                return os.fstat(fd)
            finally:
                os.close(fd)

    def unlink(self, path: str, directory: bool = False) -> None:
        """unlink(2), or rmdir(2) with directory: a symlink as the last component goes
        itself, its target stays."""
        if directory and path.startswith("/") and not path.strip("/"):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)  # rmdir("/")
        with self._as_target():
            parent, name = self._parent(path)
            try:
                if directory:
                    os.rmdir(name, dir_fd=parent)
                else:
                    os.unlink(name, dir_fd=parent)
            finally:
                os.close(parent)

    def rename(self, src: str, dst: str, flags: int = 0) -> None:
        """renameat2(2); flags RENAME_NOREPLACE and RENAME_EXCHANGE as the kernel has them
        (os.rename has no flags)."""
        with self._as_target():
            src_dir, src_name = self._parent(src)
            try:
                dst_dir, dst_name = self._parent(dst)
                try:
                    _check(_syscall(ctypes.c_long(SYS_RENAMEAT2), ctypes.c_int(src_dir),
                                    os.fsencode(src_name), ctypes.c_int(dst_dir),
                                    os.fsencode(dst_name), ctypes.c_uint(flags)), src)
                finally:
                    os.close(dst_dir)
            finally:
                os.close(src_dir)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        with self._as_target():
            parent, name = self._parent(path)
            try:
                with _exact_mode():
                    os.mkdir(name, mode, dir_fd=parent)
            finally:
                os.close(parent)

    def access(self, path: str, mode: int, follow: bool = True) -> None:
        """access(2) as the target: returns if allowed, raises OSError (EACCES, ENOENT,
        EROFS, ...) if not.

        faccessat2 (Linux >= 5.8) with AT_EACCESS checks the thread's fsuid, fsgid and
        groups, the ones switched to; plain access(2) would override them with the real
        ids (0 here) and answer for root.
        """
        with self._as_target():
            fd = self._open(path, os.O_PATH | (0 if follow else os.O_NOFOLLOW))
            try:
                flags = AT_EMPTY_PATH | AT_EACCESS | (0 if follow else AT_SYMLINK_NOFOLLOW)
                _check(_syscall(ctypes.c_long(SYS_FACCESSAT2), ctypes.c_int(fd), b"",
                                ctypes.c_int(mode), ctypes.c_int(flags)), path)
            finally:
                os.close(fd)
