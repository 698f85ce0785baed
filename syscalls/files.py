"""Path syscalls: the pod's files, its resolver files, and everything else left alone.

Every trapped path call goes through the same three steps:

1. where: the (dirfd, path) pair becomes an absolute path the way the kernel
   would resolve it (syscalls/paths.py); a path inside the session's cache is
   mapped back to the pod path it mirrors.
2. which: the session's resolver files (the pod's resolv.conf, hosts, hostname
   and a `files dns` nsswitch.conf, held in memfds) are always served; then
   the file policy (supervisor/fs_policy.py) says local or the pod's, and why.
3. what: a local path runs untouched. A pod path parks the thread while the
   session asks the agent, then either answers the call itself (stat, access,
   readlink, unlink, rename, mkdir: the result and any struct are written and
   the call is skipped) or points it at the cached copy (open, creat, chdir:
   the program then reads, writes, lists and fstat's a real local file or
   directory at local speed, and getdents64 needs no help).

A diverted fd is a file in the cache, so fstat(2) on it is recognised by its
/proc/TID/fd link and answered with the pod's metadata (size and times from
the copy, which is what the program has been writing), and getcwd(2) inside a
pod directory shows the pod path, never the cache's.

Programs run from this machine: execve(2) of a pod path is refused (EACCES)
with an event that says so, rather than running a binary built for the pod.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from typing import Any

from agent_image import protocol as p
from syscalls import paths
from syscalls.base import (
    MISSING_HERE,
    PASS,
    Call,
    ExitCall,
    Outcome,
    Park,
    Pass,
    Return,
    Rewrite,
    Session,
)
from syscalls.fsstruct import pack_stat, pack_statx

# The tracee's open flags: the same ABI as ours (x86_64 only), so os's names serve.
O_CREAT, O_EXCL, O_TRUNC = os.O_CREAT, os.O_EXCL, os.O_TRUNC
O_NOFOLLOW, O_WRONLY = os.O_NOFOLLOW, os.O_WRONLY
_OPEN_HOW = struct.Struct("<QQQ")
_VIA = "pod"


class _Where:
    """A located path: what the program named, resolved, and whose it is."""

    __slots__ = ("path", "remote", "rule", "moved")

    def __init__(self, path: bytes, remote: bool, rule: str, moved: bool) -> None:
        self.path = path
        self.remote = remote
        self.rule = rule
        # The kernel would read the program's string differently (a pod directory as its
        # base, or `..` below a path missing here): a local result needs the absolute path.
        self.moved = moved

    @property
    def text(self) -> str:
        return self.path.decode(errors="replace")


def _locate(call: Call, session: Session, dirfd: int, ptr: int,
            empty_ok: bool = False) -> _Where | bytes | None:
    """Where a path argument leads: a _Where, a served resolver file (bytes: the
    path to open instead), or None to let the call run untouched."""
    try:
        raw = call.read_cstring(ptr)
    except OSError:
        return None  # a bad pointer: the kernel says EFAULT itself
    fs = session.fs
    in_pod = False
    if fs is not None and fs.quick_local is not None and fs.quick_local.match(raw):
        if raw not in session.pod_files:  # /proc/sys/kernel/hostname is served
            return None
    if raw.startswith(b"/"):
        path = paths.normalise(raw)
        # "/data/.." names / only if /data exists where the kernel looks: tell it "/".
        moved = b".." in raw and path != raw
    elif fs is None or (not raw and not empty_ok):
        return None
    else:
        base = paths.base_of(call.tid, paths.fd_arg(dirfd))
        if base is None:
            return None
        mirrored = paths.pod_path(fs.root, base)
        if mirrored is not None:
            base, in_pod = mirrored, True  # `..` must stop at the pod's /, not the cache's
        path = paths.join(base, raw)
        moved = in_pod
    served = session.pod_files.get(path)
    if served is not None:
        return served
    if fs is None:
        return None
    mirrored = paths.pod_path(fs.root, path)
    if mirrored is not None:
        path, moved, in_pod = mirrored, True, True
    remote, rule = fs.decide(path, in_pod)
    if not remote and not moved:
        return None
    if remote:
        call.pod_aware()
    return _Where(path, remote, rule, moved)


def _local(call: Call, where: _Where, index: int) -> Outcome:
    """A local path reached through a pod directory: hand the kernel the absolute path."""
    try:
        return Rewrite({index: call.scratch(where.path + b"\0")})
    except OSError:
        return Return(-errno.ENOMEM)


def _emit(session: Session, call: Call, kind: str, where: _Where, result: int | str,
          **detail: Any) -> None:
    session.emit(call, kind, where.text, _VIA, result, detail={"rule": where.rule, **detail})


def _failed(result: Any) -> int | None:
    """The errno of a failed answer, or None."""
    if isinstance(result, p.ErrorReply):
        return p.errno_value(result.errno) or errno.EIO
    if isinstance(result, BaseException):
        return errno.EIO
    return None


def _answer(session: Session, kind: str, where: _Where,
            ok: Callable[[Call, Any], int] | None = None) -> Callable[[Call, Any], Outcome]:
    """The `then` of a parked call answered by the pod: ok(call, result) writes
    whatever the call returns through memory and gives its return value."""

    def then(call: Call, result: Any) -> Outcome:
        err = _failed(result)
        value = -err if err is not None else 0
        if err is None and ok is not None:
            try:
                value = ok(call, result)
            except OSError as exc:
                value = -(exc.errno or errno.EFAULT)
        _emit(session, call, kind, where, value)
        return Return(value)

    return then


# --- open, creat, chdir: the program gets the cached copy ------------------------------


def _open(call: Call, session: Session, dirfd: int, path_i: int, flags: int, mode: int,
          flags_i: int | None, how: tuple[int, int] | None = None) -> Outcome:
    where = _locate(call, session, dirfd, call.args[path_i])
    if where is None:
        return PASS
    if isinstance(where, bytes):
        return _serve(call, session, path_i, where, flags, flags_i, how)
    if not where.remote:
        return _local(call, where, path_i)
    assert session.fs is not None
    umask = _umask(call.tid) if flags & O_CREAT else 0o022
    future = session.fs.open(where.path, flags, mode, umask)

    def then(c: Call, result: Any) -> Outcome:
        err = _failed(result)
        if err is not None:
            _emit(session, c, "open", where, -err)
            return Return(-err)
        copy: bytes = result
        new_flags = flags & ~O_EXCL  # the copy exists now; the pod already said it was new
        try:
            if how is not None:
                # openat2: our own open_how (resolution was the pod's) and then the path.
                data = _OPEN_HOW.pack(new_flags, how[0], 0) + copy + b"\0"
                addr = c.scratch(data)
                args = {path_i: addr + _OPEN_HOW.size, path_i + 1: addr}
            else:
                args = {path_i: c.scratch(copy + b"\0")}
                if flags_i is not None:
                    args[flags_i] = new_flags
        except OSError:
            return Return(-errno.ENOMEM)

        def shown(e: ExitCall) -> None:
            _emit(session, e, "open", where, e.result)

        return Rewrite(args, on_exit=shown)

    return Park(future, then)


def _serve(call: Call, session: Session, path_i: int, served: bytes, flags: int,
           flags_i: int | None, how: tuple[int, int] | None) -> Outcome:
    """A resolver file: open the session's copy instead (a /proc magic link, so a
    NOFOLLOW open would refuse it; the flag means nothing for our copy)."""
    try:
        name = call.read_cstring(call.args[path_i]).decode(errors="replace")
        if how is not None:
            data = _OPEN_HOW.pack(flags & ~O_NOFOLLOW, how[0], 0) + served + b"\0"
            addr = call.scratch(data)
            args = {path_i: addr + _OPEN_HOW.size, path_i + 1: addr}
        else:
            args = {path_i: call.scratch(served + b"\0")}
            if flags_i is not None and flags & O_NOFOLLOW:
                args[flags_i] = flags & ~O_NOFOLLOW
    except OSError:
        return PASS

    def shown(e: ExitCall) -> None:
        session.emit(e, "open", name, _VIA, e.result, detail={"rule": "resolver file"})

    return Rewrite(args, on_exit=shown)


def _umask(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def open_(call: Call, session: Session) -> Outcome:
    """Divert open(2) of a pod path to its cached copy."""
    return _open(call, session, paths.AT_FDCWD, 0, call.args[1], call.args[2], 1)


def openat(call: Call, session: Session) -> Outcome:
    """Divert openat(2) of a pod path to its cached copy."""
    return _open(call, session, call.args[0], 1, call.args[2], call.args[3], 2)


def openat2(call: Call, session: Session) -> Outcome:
    """Divert openat2(2) of a pod path to its cached copy (RESOLVE_* applied in the pod)."""
    try:
        flags, mode, _resolve = _OPEN_HOW.unpack(call.read(call.args[2], _OPEN_HOW.size))
    except (OSError, struct.error):
        return PASS
    return _open(call, session, call.args[0], 1, flags, mode, None, how=(mode, 0))


def creat(call: Call, session: Session) -> Outcome:
    """Divert creat(2) of a pod path: created in the pod, written through its copy."""
    return _open(call, session, paths.AT_FDCWD, 0, O_CREAT | O_WRONLY | O_TRUNC, call.args[1],
                 None)


def chdir(call: Call, session: Session) -> Outcome:
    """Divert chdir(2) into a pod directory to its mirror in the cache."""
    where = _locate(call, session, paths.AT_FDCWD, call.args[0])
    if where is None or isinstance(where, bytes):
        return PASS
    if not where.remote:
        return _local(call, where, 0)
    assert session.fs is not None

    def then(c: Call, result: Any) -> Outcome:
        err = _failed(result)
        if err is not None:
            _emit(session, c, "open", where, -err)
            return Return(-err)
        try:
            args = {0: c.scratch(result + b"\0")}
        except OSError:
            return Return(-errno.ENOMEM)
        return Rewrite(args, on_exit=lambda e: _emit(session, e, "open", where, e.result))

    return Park(session.fs.chdir(where.path), then)


def getcwd(call: Call, session: Session) -> Outcome:
    """Pass through getcwd(2), showing the pod path inside a pod directory."""
    fs = session.fs
    if fs is None or not fs.active:
        return PASS
    cwd = paths.base_of(call.tid, paths.AT_FDCWD)
    if cwd is None or paths.pod_path(fs.root, cwd) is None:
        return PASS  # not in a pod directory: a readlink now saves a stop at the exit
    buf, size = call.args[0], call.args[1]
    root = fs.root

    def fix(e: ExitCall) -> None:
        if e.result <= 0:
            return
        mirrored = paths.pod_path(root, e.read_cstring(buf, e.result))
        if mirrored is None:
            return
        if len(mirrored) + 1 > size:
            e.set_result(-errno.ERANGE)
            return
        e.write(buf, mirrored + b"\0")
        e.set_result(len(mirrored) + 1)

    return Pass(on_exit=fix)


def execve(call: Call, session: Session) -> Outcome:
    """Divert execve(2) of a pod path to a refusal: programs run from this machine."""
    where = _locate(call, session, paths.AT_FDCWD, call.args[0])
    if not isinstance(where, _Where):
        return PASS
    if not where.remote:
        return _local(call, where, 0)
    assert session.fs is not None

    def refuse(c: Call, result: Any) -> Outcome:
        if where.rule == MISSING_HERE and _failed(result) is not None:
            return PASS  # in neither place: the kernel's own ENOENT, as for a PATH miss
        session.emit(c, "open", where.text, "refused", -errno.EACCES,
                     detail={"rule": "programs run from this machine, not from the pod"})
        return Return(-errno.EACCES)

    return Park(session.fs.stat(where.path, True), refuse)


# --- the stat family: answered from the pod's metadata ---------------------------------


def _stat(call: Call, session: Session, dirfd: int, path_i: int, flags: int,
          put: Callable[[Call, Any], None]) -> Outcome:
    if flags & paths.AT_EMPTY_PATH:
        try:
            empty = call.read_cstring(call.args[path_i], 1) == b""
        except OSError:
            empty = False
        if empty:
            return _fstat(call, session, paths.fd_arg(dirfd), put)
    follow = not flags & paths.AT_SYMLINK_NOFOLLOW
    where = _locate(call, session, dirfd, call.args[path_i])
    if where is None:
        return PASS
    if isinstance(where, bytes):
        if not follow:
            return PASS  # lstat of a resolver file: the local file, as before
        return _served_stat(call, session, path_i, where)
    if not where.remote:
        return _local(call, where, path_i)
    assert session.fs is not None

    def ok(c: Call, info: Any) -> int:
        put(c, info)
        return 0

    return Park(session.fs.stat(where.path, follow), _answer(session, "stat", where, ok))


def _served_stat(call: Call, session: Session, path_i: int, served: bytes) -> Outcome:
    try:
        name = call.read_cstring(call.args[path_i]).decode(errors="replace")
        args = {path_i: call.scratch(served + b"\0")}
    except OSError:
        return PASS

    def shown(e: ExitCall) -> None:
        session.emit(e, "stat", name, _VIA, e.result, detail={"rule": "resolver file"})

    return Rewrite(args, on_exit=shown)


def _fstat(call: Call, session: Session, fd: int, put: Callable[[Call, Any], None]) -> Outcome:
    """fstat of an fd on a cached copy: the pod's identity, the copy's size and times."""
    fs = session.fs
    if fs is None or not fs.active or fd < 0:
        return PASS
    try:
        target = os.readlink(f"/proc/{call.tid}/fd/{fd}".encode())
    except OSError:
        return PASS
    mirrored = paths.pod_path(fs.root, target)
    if mirrored is None:
        return PASS
    meta = fs.copy_meta(mirrored)
    if meta is None:
        return PASS
    try:
        put(call, meta)
    except OSError:
        return Return(-errno.EFAULT)
    return Return(0)


def _put_stat(buf: int) -> Callable[[Call, Any], None]:
    return lambda c, info: c.write(buf, pack_stat(info))


def stat(call: Call, session: Session) -> Outcome:
    """Divert stat(2) of a pod path: answered with the pod's metadata."""
    return _stat(call, session, paths.AT_FDCWD, 0, 0, _put_stat(call.args[1]))


def lstat(call: Call, session: Session) -> Outcome:
    """Divert lstat(2) of a pod path: the pod's metadata of the link itself."""
    return _stat(call, session, paths.AT_FDCWD, 0, paths.AT_SYMLINK_NOFOLLOW,
                 _put_stat(call.args[1]))


def newfstatat(call: Call, session: Session) -> Outcome:
    """Divert newfstatat(2) (glibc's stat, lstat and fstat) of a pod path or fd."""
    return _stat(call, session, call.args[0], 1, call.args[3], _put_stat(call.args[2]))


def fstat(call: Call, session: Session) -> Outcome:
    """Divert fstat(2) (Go and musl call it directly) of an fd on a pod file."""
    return _fstat(call, session, paths.fd_arg(call.args[0]), _put_stat(call.args[1]))


def statx(call: Call, session: Session) -> Outcome:
    """Divert statx(2) of a pod path: the basic fields, from the pod's metadata."""
    buf, mask = call.args[4], call.args[3]
    return _stat(call, session, call.args[0], 1, call.args[2],
                 lambda c, info: c.write(buf, pack_statx(info, mask)))


# --- access, readlink ------------------------------------------------------------------


def _access(call: Call, session: Session, dirfd: int, path_i: int, mode: int,
            flags: int) -> Outcome:
    where = _locate(call, session, dirfd, call.args[path_i], bool(flags & paths.AT_EMPTY_PATH))
    if where is None:
        return PASS
    if isinstance(where, bytes):
        return _served_stat(call, session, path_i, where)
    if not where.remote:
        return _local(call, where, path_i)
    assert session.fs is not None
    follow = not flags & paths.AT_SYMLINK_NOFOLLOW
    return Park(session.fs.access(where.path, mode, follow), _answer(session, "stat", where))


def access(call: Call, session: Session) -> Outcome:
    """Divert access(2) of a pod path: the target's own permissions answer."""
    return _access(call, session, paths.AT_FDCWD, 0, call.args[1], 0)


def faccessat(call: Call, session: Session) -> Outcome:
    """Divert faccessat(2) of a pod path: the target's own permissions answer."""
    return _access(call, session, call.args[0], 1, call.args[2], 0)


def faccessat2(call: Call, session: Session) -> Outcome:
    """Divert faccessat2(2) of a pod path (AT_SYMLINK_NOFOLLOW honoured in the pod)."""
    return _access(call, session, call.args[0], 1, call.args[2], call.args[3])


def _readlink(call: Call, session: Session, dirfd: int, path_i: int) -> Outcome:
    buf, size = call.args[path_i + 1], call.args[path_i + 2]
    where = _locate(call, session, dirfd, call.args[path_i])
    if where is None:
        return _unmirror_link(call, session, call.args[path_i], buf, size)
    if isinstance(where, bytes):
        return PASS
    if not where.remote:
        return _local(call, where, path_i)
    assert session.fs is not None

    def ok(c: Call, target: bytes) -> int:
        out = target[:size]
        c.write(buf, out)
        return len(out)

    return Park(session.fs.readlink(where.path), _answer(session, "stat", where, ok))


def _unmirror_link(call: Call, session: Session, ptr: int, buf: int, size: int) -> Outcome:
    """readlink of /proc/self/cwd or /proc/self/fd/N naming a cached copy: the pod path."""
    fs = session.fs
    if fs is None or not fs.active:
        return PASS
    try:
        if not call.read_cstring(ptr).startswith(b"/proc/"):
            return PASS
    except OSError:
        return PASS
    root = fs.root

    def fix(e: ExitCall) -> None:
        if e.result <= 0:
            return
        mirrored = paths.pod_path(root, e.read(buf, e.result))
        if mirrored is not None:
            out = mirrored[:size]
            e.write(buf, out)
            e.set_result(len(out))

    return Pass(on_exit=fix)


def readlink(call: Call, session: Session) -> Outcome:
    """Divert readlink(2) of a pod path: the link's target in the pod."""
    return _readlink(call, session, paths.AT_FDCWD, 0)


def readlinkat(call: Call, session: Session) -> Outcome:
    """Divert readlinkat(2) of a pod path: the link's target in the pod."""
    return _readlink(call, session, call.args[0], 1)


def _xattr(call: Call, session: Session, follow: bool, listing: bool) -> Outcome:
    """The pod's extended attributes are not fetched: a pod path has none (ls -l asks
    every file for its ACL, and an ENOENT from the local path would be an error)."""
    where = _locate(call, session, paths.AT_FDCWD, call.args[0])
    if not isinstance(where, _Where):
        return PASS
    if not where.remote:
        return _local(call, where, 0)
    del follow
    return Return(0 if listing else -errno.ENODATA)


def getxattr(call: Call, session: Session) -> Outcome:
    """Divert getxattr(2) of a pod path: it has no extended attributes here (ENODATA)."""
    return _xattr(call, session, True, False)


def lgetxattr(call: Call, session: Session) -> Outcome:
    """Divert lgetxattr(2) of a pod path: it has no extended attributes here (ENODATA)."""
    return _xattr(call, session, False, False)


def listxattr(call: Call, session: Session) -> Outcome:
    """Divert listxattr(2) of a pod path: an empty list."""
    return _xattr(call, session, True, True)


def llistxattr(call: Call, session: Session) -> Outcome:
    """Divert llistxattr(2) of a pod path: an empty list."""
    return _xattr(call, session, False, True)


# --- changes to the pod's tree (write mode) --------------------------------------------


def _change(call: Call, session: Session, spots: list[tuple[int, int]],
            act: Callable[[list[bytes]], Any]) -> Outcome:
    """unlink, rmdir, mkdir, rename, truncate: all local, all the pod's, or EXDEV."""
    wheres: list[_Where | None] = []
    for dirfd, path_i in spots:
        where = _locate(call, session, dirfd, call.args[path_i])
        wheres.append(where if isinstance(where, _Where) else None)
    remote = [w for w in wheres if w is not None and w.remote]
    if not remote:
        moved = [(path_i, w.path) for (_, path_i), w in zip(spots, wheres, strict=True)
                 if w is not None and w.moved]
        if not moved:
            return PASS
        # Local paths reached through a pod directory: absolute, in one scratch slot.
        data = b"".join(path + b"\0" for _, path in moved)
        try:
            addr = call.scratch(data)
        except OSError:
            return Return(-errno.ENOMEM)
        args = {}
        for path_i, path in moved:
            args[path_i] = addr
            addr += len(path) + 1
        return Rewrite(args)
    first = remote[0]
    if len(remote) != len(spots):
        _emit(session, call, "open", first, -errno.EXDEV)
        return Return(-errno.EXDEV)  # between this machine and the pod: as across mounts
    fs = session.fs
    assert fs is not None
    if fs.mode != "write":
        _emit(session, call, "open", first, -errno.EROFS)
        return Return(-errno.EROFS)
    return Park(act([w.path for w in remote]), _answer(session, "open", first))


def unlink(call: Call, session: Session) -> Outcome:
    """Divert unlink(2) of a pod file to the pod (write mode)."""
    return _change(call, session, [(paths.AT_FDCWD, 0)],
                   lambda ps: session.fs.unlink(ps[0], False))  # type: ignore[union-attr]


def unlinkat(call: Call, session: Session) -> Outcome:
    """Divert unlinkat(2) of a pod file or, with AT_REMOVEDIR, directory (write mode)."""
    directory = bool(call.args[2] & paths.AT_REMOVEDIR)
    return _change(call, session, [(call.args[0], 1)],
                   lambda ps: session.fs.unlink(ps[0], directory))  # type: ignore[union-attr]


def rmdir(call: Call, session: Session) -> Outcome:
    """Divert rmdir(2) of a pod directory to the pod (write mode)."""
    return _change(call, session, [(paths.AT_FDCWD, 0)],
                   lambda ps: session.fs.unlink(ps[0], True))  # type: ignore[union-attr]


def mkdir(call: Call, session: Session) -> Outcome:
    """Divert mkdir(2) in a pod directory to the pod (write mode)."""
    mode = call.args[1] & ~_umask(call.tid) & 0o7777
    return _change(call, session, [(paths.AT_FDCWD, 0)],
                   lambda ps: session.fs.mkdir(ps[0], mode))  # type: ignore[union-attr]


def mkdirat(call: Call, session: Session) -> Outcome:
    """Divert mkdirat(2) in a pod directory to the pod (write mode)."""
    mode = call.args[2] & ~_umask(call.tid) & 0o7777
    return _change(call, session, [(call.args[0], 1)],
                   lambda ps: session.fs.mkdir(ps[0], mode))  # type: ignore[union-attr]


def rename(call: Call, session: Session) -> Outcome:
    """Divert rename(2) within the pod (write mode); between here and the pod, EXDEV."""
    return _change(call, session, [(paths.AT_FDCWD, 0), (paths.AT_FDCWD, 1)],
                   lambda ps: session.fs.rename(ps[0], ps[1], 0))  # type: ignore[union-attr]


def renameat(call: Call, session: Session) -> Outcome:
    """Divert renameat(2) within the pod (write mode)."""
    return _change(call, session, [(call.args[0], 1), (call.args[2], 3)],
                   lambda ps: session.fs.rename(ps[0], ps[1], 0))  # type: ignore[union-attr]


def renameat2(call: Call, session: Session) -> Outcome:
    """Divert renameat2(2) within the pod (write mode); its flags apply there."""
    flags = call.args[4] & 0xFFFFFFFF
    return _change(call, session, [(call.args[0], 1), (call.args[2], 3)],
                   lambda ps: session.fs.rename(ps[0], ps[1], flags))  # type: ignore[union-attr]


def truncate(call: Call, session: Session) -> Outcome:
    """Divert truncate(2) of a pod file to the pod (write mode)."""
    length = call.args[1]
    return _change(call, session, [(paths.AT_FDCWD, 0)],
                   lambda ps: session.fs.truncate(ps[0], length))  # type: ignore[union-attr]
