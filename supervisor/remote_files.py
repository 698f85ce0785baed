"""The pod's files on this machine: a private cache, kept honest, written back.

A pod file the program opens is fetched whole into a private directory (0700)
that mirrors the pod's tree, and the program opens that copy: it then reads,
seeks, mmaps and fstat's a real file at local speed, however it reads. Large
files travel as a pipeline of chunks, never as one frame; the copy is
written next to the tree and renamed into place, so a program that has an
older copy open keeps a consistent one. Reopening a file costs one stat: the
copy is used again when the pod's size and mtime are unchanged.

A pod directory the program opens or enters is mirrored by placeholders (an
empty file, directory, symlink or fifo per entry), so getdents64, seekdir
and fchdir are the kernel's own; every open of the directory lists it again.
Placeholders are never served as content: opening an entry fetches it.

Write mode: a copy opened for writing is watched (supervisor/inotify.py), and
when the program closes it, the copy goes back to the pod in chunks; what is
still unwritten when the program ends is sent before the session closes.
Creating, truncating, unlinking, renaming and making directories go to the
pod at once, after any pending write-back of the same paths, so a
"write a temp file, then rename it" sequence arrives in order. Read mode
refuses all of that with EROFS, the kernel's answer on a read-only mount.

Everything runs in the session's event loop; the tracer thread calls the
public methods, which return concurrent futures (or answer at once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import os
import shutil
import stat as st
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

from agent_image import protocol as p
from agent_image.mux import Channel, ChannelClosed
from supervisor.fs_policy import FsPolicy
from supervisor.inotify import IN_CLOSE_WRITE, IN_Q_OVERFLOW, Inotify

CHUNK = 960 * 1024  # a FileData frame stays under protocol.MAX_PAYLOAD with its header
IN_FLIGHT = 8  # chunk requests outstanding per file: enough to fill a fast channel
# The tracee's open flags: the same ABI as ours (x86_64 only), so os's names serve.
O_ACCMODE = 0o3
O_CREAT, O_EXCL, O_TRUNC = os.O_CREAT, os.O_EXCL, os.O_TRUNC
O_DIRECTORY, O_NOFOLLOW = os.O_DIRECTORY, os.O_NOFOLLOW
O_TMPFILE_BIT = os.O_TMPFILE & ~os.O_DIRECTORY
W_OK = os.W_OK
X_OK = os.X_OK
_PREFIX = "mirrortrace-files-"
_LINK_PLACEHOLDER = b"(a symbolic link in the pod)"
_FORCE = (-1, -1)  # a copy whose pod file must be rewritten even if nothing changed here

Answer = Any  # a value, or a p.ErrorReply
CF = concurrent.futures.Future[Any]


def _error(code: int, message: str = "") -> p.ErrorReply:
    return p.ErrorReply(errno=p.errno_name(code), message=message or os.strerror(code))


def _is_error(reply: Any, code: int | None = None) -> bool:
    if not isinstance(reply, p.ErrorReply):
        return False
    return code is None or p.errno_value(reply.errno) == code


@dataclasses.dataclass
class Copy:
    """A pod file or directory that has a local copy."""

    info: p.StatInfo  # the pod's metadata as of our last fetch or write-back
    local: tuple[int, int] | None  # (size, mtime_ns) we left the copy with; None: directory
    writable: bool = False  # opened for writing: changes go back to the pod


class RemoteFiles:
    """The Files service of syscalls/base.py, for one session."""

    def __init__(self, policy: FsPolicy, loop: asyncio.AbstractEventLoop,
                 channel: Callable[[], Channel | None], notice: Callable[[str], None]) -> None:
        self.policy = policy
        self.mode = policy.mode
        self.active = False
        self._loop = loop
        self._channel = channel
        self._notice = notice
        _remove_stale_caches()
        self._base = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
        self.root = os.path.join(self._base, "root").encode()
        self._tmp = os.path.join(self._base, "tmp").encode()
        os.mkdir(self.root, 0o700)
        os.mkdir(self._tmp, 0o700)
        self.quick_local = policy.quick_local(self.root)
        self._copies: dict[bytes, Copy] = {}
        self._locks: dict[bytes, asyncio.Lock] = {}
        self._watches: dict[int, bytes] = {}  # inotify wd -> pod directory
        self._inotify: Inotify | None = None
        self._tmp_seq = 0

    # --- for the tracer thread ---------------------------------------------------------

    def decide(self, path: bytes, in_pod: bool) -> tuple[bool, str]:
        return self.policy.decide(path, in_pod)

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> CF:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def open(self, path: bytes, flags: int, mode: int, umask: int) -> CF:
        return self._submit(self._open(path, flags, mode & ~umask & 0o7777))

    def chdir(self, path: bytes) -> CF:
        return self._submit(self._chdir(path))

    def stat(self, path: bytes, follow: bool) -> CF:
        if follow:
            meta = self.copy_meta(path, changed_only=True)
            if meta is not None:
                done: CF = concurrent.futures.Future()
                done.set_result(meta)
                return done
        return self._ask_soon(p.Stat(path=_text(path), follow=follow))

    def copy_meta(self, path: bytes, changed_only: bool = False) -> p.StatInfo | None:
        """The pod's identity of path with its copy's size and times (what the program
        wrote is what it sees), without a round trip."""
        copy = self._copies.get(path)
        if copy is None:
            return None
        if copy.local is None:
            return None if changed_only else copy.info
        try:
            here = os.stat(self._local(path))
        except OSError:
            return None
        if changed_only and (not copy.writable
                             or (here.st_size, here.st_mtime_ns) == copy.local):
            return None
        return dataclasses.replace(
            copy.info, size=here.st_size, blocks=here.st_blocks, atime_ns=here.st_atime_ns,
            mtime_ns=here.st_mtime_ns, ctime_ns=here.st_ctime_ns)

    def access(self, path: bytes, mode: int, follow: bool) -> CF:
        if not mode & W_OK:
            return self._ask_soon(p.Access(path=_text(path), mode=mode, follow=follow))
        return self._submit(self._access(path, mode, follow))

    def readlink(self, path: bytes) -> CF:
        return self._ask_soon(p.ReadLink(path=_text(path)),
                              lambda reply: os.fsencode(reply.target))  # type: ignore[attr-defined]

    def unlink(self, path: bytes, directory: bool) -> CF:
        return self._submit(self._unlink(path, directory))

    def rename(self, src: bytes, dst: bytes, flags: int) -> CF:
        return self._submit(self._rename(src, dst, flags))

    def mkdir(self, path: bytes, mode: int) -> CF:
        return self._ask_soon(p.MakeDir(path=_text(path), mode=mode))

    def truncate(self, path: bytes, length: int) -> CF:
        return self._submit(self._truncate(path, length))

    def flush(self, timeout: float) -> None:
        """Send every changed copy back (the program has ended); wait at most timeout."""
        if self.mode != "write" or not self._copies:
            return
        fut = self._submit(self._write_back_all())
        try:
            fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            self._notice(f"mirrortrace: writing files back to the pod took over {timeout:.0f}s; "
                         "some changes may not have reached it")

    def close(self) -> None:
        """Remove the cache (the session is over: nothing of the pod stays on disk)."""
        if self._inotify is not None:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._loop.remove_reader, self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        shutil.rmtree(self._base, ignore_errors=True)

    # --- talking to the agent ----------------------------------------------------------

    def _ask_soon(self, msg: p.Message,
                  then: Callable[[p.Message], Any] | None = None) -> CF:
        """One request from the tracer thread, answered straight into a concurrent
        future: no coroutine and no task on the way, for the calls that are one ask.
        `then` turns a reply that is not an error into the answer."""
        out: CF = concurrent.futures.Future()

        def answered(reply: asyncio.Future[p.Message]) -> None:
            if reply.cancelled() or reply.exception() is not None:
                out.set_result(_error(errno.EIO, "the agent is gone"))
                return
            result = reply.result()
            if then is not None and not isinstance(result, p.ErrorReply):
                result = then(result)
            out.set_result(result)

        def send() -> None:
            channel = self._channel()
            if channel is None or not channel.is_open:
                out.set_result(_error(errno.EIO, "the agent is gone"))
                return
            channel.request_soon(msg).add_done_callback(answered)

        self._loop.call_soon_threadsafe(send)
        return out

    async def _ask(self, msg: p.Message) -> Answer:
        channel = self._channel()
        if channel is None or not channel.is_open:
            return _error(errno.EIO, "the agent is gone")
        try:
            return await channel.request(msg)
        except ChannelClosed:
            return _error(errno.EIO, "the agent is gone")

    def _local(self, path: bytes) -> bytes:
        return self.root + path if path != b"/" else self.root

    def _lock(self, path: bytes) -> asyncio.Lock:
        lock = self._locks.get(path)
        if lock is None:
            lock = self._locks[path] = asyncio.Lock()
        return lock

    # --- open and chdir ----------------------------------------------------------------

    async def _open(self, path: bytes, flags: int, mode: int) -> Answer:
        writing = flags & O_ACCMODE != os.O_RDONLY or bool(flags & O_TRUNC)
        creating = bool(flags & O_CREAT)
        if flags & O_TMPFILE_BIT:
            return _error(errno.EOPNOTSUPP, "O_TMPFILE in a directory of the pod")
        head = None
        if path not in self._copies and not flags & (O_DIRECTORY | O_TRUNC):
            # Never fetched: ask for the first chunk with the stat, so a small file
            # costs one round trip, not two (an answer that does not fit is dropped).
            head = asyncio.ensure_future(self._ask(p.ReadFile(path=_text(path), max_bytes=CHUNK)))
        info = await self._ask(p.Stat(path=_text(path), follow=not flags & O_NOFOLLOW))
        first = await head if head is not None else None
        if _is_error(info, errno.ENOENT) and creating:
            return await self._create(path, mode)
        if isinstance(info, p.ErrorReply):
            return info
        if creating and flags & O_EXCL:
            return _error(errno.EEXIST)
        kind = st.S_IFMT(info.mode)
        if kind == st.S_IFLNK:
            return _error(errno.ELOOP)  # O_NOFOLLOW on a symlink
        if kind == st.S_IFDIR:
            if writing:
                return _error(errno.EISDIR)
            return await self._mirror_dir(path, info)
        if flags & O_DIRECTORY:
            return _error(errno.ENOTDIR)
        if kind != st.S_IFREG:
            return _error(errno.ENXIO, "a device, fifo or socket of the pod")
        if writing:
            if self.mode != "write":
                return _error(errno.EROFS)
            allowed = await self._ask(p.Access(path=_text(path), mode=W_OK))
            if isinstance(allowed, p.ErrorReply):
                return allowed
        async with self._lock(path):
            copy = self._copies.get(path)
            if writing and flags & O_TRUNC:
                answer = self._empty_copy(path, info, force=True)
            elif copy is not None and copy.local is not None and self._changed_here(path, copy):
                answer = self._local(path)  # unsent changes here are newer than the pod's
            elif copy is not None and copy.local is not None and _same(copy.info, info):
                answer = self._local(path)
            else:
                answer = await self._fetch(path, info, first)
            if writing and not isinstance(answer, p.ErrorReply):
                self._watch_for_writes(path)
        if not isinstance(answer, p.ErrorReply):
            self.active = True
        return answer

    async def _create(self, path: bytes, mode: int) -> Answer:
        if self.mode != "write":
            parent = await self._ask(p.Stat(path=_text(_parent(path))))
            return parent if isinstance(parent, p.ErrorReply) else _error(errno.EROFS)
        async with self._lock(path):
            info = await self._ask(p.WriteFile(path=_text(path), create=True, mode=mode,
                                               size=0))
            if isinstance(info, p.ErrorReply):
                return info
            answer = self._empty_copy(path, info, force=False)
            self._watch_for_writes(path)
        self.active = True
        return answer

    def _empty_copy(self, path: bytes, info: p.StatInfo, force: bool) -> bytes:
        """A new empty copy; `force`: the pod's file must be emptied at the next close
        even if nothing is written (an O_TRUNC open)."""
        local = self._local(path)
        self._make_parents(path)
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.close(fd)
        here = os.stat(local)
        self._copies[path] = Copy(info, _FORCE if force else (here.st_size, here.st_mtime_ns))
        return local

    async def _chdir(self, path: bytes) -> Answer:
        info = await self._ask(p.Stat(path=_text(path)))
        if isinstance(info, p.ErrorReply):
            return info
        if not st.S_ISDIR(info.mode):
            return _error(errno.ENOTDIR)
        allowed = await self._ask(p.Access(path=_text(path), mode=X_OK))
        if isinstance(allowed, p.ErrorReply):
            return allowed
        answer = await self._mirror_dir(path, info, listing_optional=True)
        if not isinstance(answer, p.ErrorReply):
            self.active = True
        return answer

    async def _mirror_dir(self, path: bytes, info: p.StatInfo,
                          listing_optional: bool = False) -> Answer:
        """The pod directory's entries as placeholders in its mirror."""
        listing = await self._ask(p.ListDir(path=_text(path)))
        if isinstance(listing, p.ErrorReply) and not listing_optional:
            return listing
        local = self._local(path)
        self._make_parents(path)
        self._make_dir(local)
        wanted: dict[bytes, str] = {}
        if isinstance(listing, p.DirEntries):
            wanted = {os.fsencode(str(e[0])): str(e[1]) for e in listing.entries}
        with os.scandir(local) as it:
            present = {os.fsencode(e.name): e for e in it}
        for name, entry in present.items():
            kind = wanted.get(name)
            if kind is None or _placeholder_kind(entry) != _mirror_kind(kind):
                self._drop(path.rstrip(b"/") + b"/" + name)
        for name, kind in wanted.items():
            if name in present and _placeholder_kind(present[name]) == _mirror_kind(kind):
                continue
            _make_placeholder(local + b"/" + name, kind)
        self._copies[path] = Copy(info, None)
        self.active = True
        return local

    def _make_parents(self, path: bytes) -> None:
        """Mirror directories down to path's parent; a placeholder file in the way goes."""
        here = self.root
        for part in _parent(path).split(b"/"):
            if not part:
                continue
            here = here + b"/" + part
            self._make_dir(here)

    @staticmethod
    def _make_dir(local: bytes) -> None:
        try:
            os.mkdir(local, 0o700)
        except FileExistsError:
            if not os.path.isdir(local) or os.path.islink(local):
                os.unlink(local)
                os.mkdir(local, 0o700)

    def _drop(self, path: bytes) -> None:
        """Forget path (and below) and remove its local copy or placeholder."""
        prefix = path.rstrip(b"/") + b"/"
        for known in [k for k in self._copies if k == path or k.startswith(prefix)]:
            del self._copies[known]
        local = self._local(path)
        try:
            if os.path.isdir(local) and not os.path.islink(local):
                shutil.rmtree(local)
            else:
                os.unlink(local)
        except FileNotFoundError:
            pass

    # --- fetching ------------------------------------------------------------------------

    async def _fetch(self, path: bytes, info: p.StatInfo, first: Any = None) -> Answer:
        """The whole file into a fresh copy, in pipelined chunks; again if it changed.
        `first`: the reply to a ReadFile at offset 0 sent with the stat, if any."""
        for _attempt in range(3):
            self._tmp_seq += 1
            tmp = self._tmp + b"/%d" % self._tmp_seq
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                got = await self._fetch_into(fd, path, info, first)
                first = None
            finally:
                os.close(fd)
            if isinstance(got, p.ErrorReply):
                os.unlink(tmp)
                return got
            if got is not info:  # the file changed while we read it: start again
                os.unlink(tmp)
                info = got
                continue
            os.utime(tmp, ns=(info.atime_ns, info.mtime_ns))
            local = self._local(path)
            self._make_parents(path)
            if os.path.isdir(local) and not os.path.islink(local):
                shutil.rmtree(local)
            os.rename(tmp, local)
            here = os.stat(local)
            self._copies[path] = Copy(info, (here.st_size, here.st_mtime_ns),
                                      writable=path in self._copies
                                      and self._copies[path].writable)
            return local
        return _error(errno.EIO, "the file kept changing while it was read")

    async def _fetch_into(self, fd: int, path: bytes, info: p.StatInfo, first: Any) -> Any:
        """Fill fd; the StatInfo it was read at (`info`, or a newer one), or an ErrorReply."""
        text = _text(path)
        offsets = list(range(0, max(info.size, 1), CHUNK))
        sem = asyncio.Semaphore(IN_FLIGHT)
        newer: list[Any] = []
        if not (isinstance(first, p.FileData) and first.offset == 0):
            first = None

        async def one(offset: int) -> Any:
            async with sem:
                if newer:
                    return None
                if offset == 0 and first is not None:
                    reply = first
                else:
                    reply = await self._ask(p.ReadFile(path=text, offset=offset,
                                                       max_bytes=CHUNK))
            if isinstance(reply, p.ErrorReply):
                return reply
            if reply.size != info.size or (reply.mtime_ns and reply.mtime_ns != info.mtime_ns):
                newer.append(reply)
                return None
            os.pwrite(fd, reply.blob, offset)
            return None

        results = await asyncio.gather(*(one(o) for o in offsets))
        for result in results:
            if isinstance(result, p.ErrorReply):
                return result
        if newer:
            fresh = await self._ask(p.Stat(path=text))
            return fresh
        return info

    def _changed_here(self, path: bytes, copy: Copy) -> bool:
        if not copy.writable or copy.local is None:
            return False
        if copy.local == _FORCE:
            return True
        try:
            here = os.stat(self._local(path))
        except OSError:
            return False
        return (here.st_size, here.st_mtime_ns) != copy.local

    # --- write-back ------------------------------------------------------------------------

    def _watch_for_writes(self, path: bytes) -> None:
        copy = self._copies.get(path)
        if copy is None:
            return
        copy.writable = True
        if self._inotify is None:
            self._inotify = Inotify()
            self._loop.add_reader(self._inotify.fd, self._on_inotify)
        parent = _parent(path)
        wd = self._inotify.watch(self._local(parent))
        self._watches[wd] = parent

    def _on_inotify(self) -> None:
        assert self._inotify is not None
        for wd, mask, name in self._inotify.read():
            if mask & IN_Q_OVERFLOW:
                self._loop.create_task(self._write_back_all())
                continue
            if not mask & IN_CLOSE_WRITE or not name:
                continue
            parent = self._watches.get(wd)
            if parent is None:
                continue
            path = parent.rstrip(b"/") + b"/" + name
            copy = self._copies.get(path)
            if copy is not None and copy.writable:
                self._loop.create_task(self._write_back(path))

    async def _write_back_all(self) -> None:
        await asyncio.gather(*(self._write_back(path) for path, copy in
                               list(self._copies.items()) if copy.writable))

    async def _write_back(self, path: bytes) -> None:
        async with self._lock(path):
            error = await self._send(path)
        if error is not None:
            self._notice(f"mirrortrace: could not write {_text(path)} back to the pod: "
                         f"{error.errno} {error.message}".rstrip())

    async def _send(self, path: bytes) -> p.ErrorReply | None:
        """Send the copy to the pod if it changed here (caller holds the path's lock)."""
        copy = self._copies.get(path)
        if copy is None or not self._changed_here(path, copy):
            return None
        local = self._local(path)
        try:
            fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None  # renamed or removed meanwhile: nothing to send from here
        try:
            here = os.fstat(fd)
            text = _text(path)
            mode = copy.info.mode & 0o7777
            offset, reply = 0, None
            while True:
                blob = os.pread(fd, CHUNK, offset)
                last = len(blob) < CHUNK
                reply = await self._ask(p.WriteFile(
                    path=text, offset=offset, truncate=offset == 0, create=offset == 0,
                    mode=mode, size=offset + len(blob) if last else None, blob=blob))
                if isinstance(reply, p.ErrorReply):
                    return reply
                offset += len(blob)
                if last:
                    break
        finally:
            os.close(fd)
        copy.info = reply
        copy.local = (here.st_size, here.st_mtime_ns)
        return None

    async def _flush_under(self, path: bytes) -> p.ErrorReply | None:
        """Send pending changes of path and anything below it before the tree changes."""
        prefix = path.rstrip(b"/") + b"/"
        for known in [k for k, c in self._copies.items()
                      if c.writable and (k == path or k.startswith(prefix))]:
            async with self._lock(known):
                error = await self._send(known)
            if error is not None:
                return error
        return None

    # --- questions and changes -------------------------------------------------------------

    async def _access(self, path: bytes, mode: int, follow: bool) -> Answer:
        answer = await self._ask(p.Access(path=_text(path), mode=mode & ~W_OK, follow=follow))
        if isinstance(answer, p.ErrorReply) or not mode & W_OK:
            return answer
        if self.mode != "write":
            return _error(errno.EROFS)
        return await self._ask(p.Access(path=_text(path), mode=mode, follow=follow))

    async def _unlink(self, path: bytes, directory: bool) -> Answer:
        async with self._lock(path):
            answer = await self._ask(p.Unlink(path=_text(path), directory=directory))
            if not isinstance(answer, p.ErrorReply):
                self._drop(path)
        return answer

    async def _rename(self, src: bytes, dst: bytes, flags: int) -> Answer:
        error = await self._flush_under(src)
        if error is not None:
            return error
        answer = await self._ask(p.Rename(src=_text(src), dst=_text(dst), flags=flags))
        if isinstance(answer, p.ErrorReply):
            return answer
        if flags & 2:  # RENAME_EXCHANGE: both sides changed; fetch them afresh
            self._drop(src)
            self._drop(dst)
            return answer
        self._drop(dst)
        self._move(src, dst)
        return answer

    def _move(self, src: bytes, dst: bytes) -> None:
        """Follow a rename in the cache, so an fd still open on the copy keeps writing
        into what is now dst's copy, and is sent there when closed."""
        local_src, local_dst = self._local(src), self._local(dst)
        if not os.path.lexists(local_src):
            return
        self._make_parents(dst)
        os.rename(local_src, local_dst)
        prefix = src.rstrip(b"/") + b"/"
        for known in [k for k in self._copies if k == src or k.startswith(prefix)]:
            self._copies[dst + known[len(src):]] = self._copies.pop(known)
        for wd, parent in list(self._watches.items()):
            if parent == src or parent.startswith(prefix):
                self._watches[wd] = dst + parent[len(src):]
        copy = self._copies.get(dst)
        if copy is not None and copy.writable and self._inotify is not None:
            parent = _parent(dst)
            self._watches[self._inotify.watch(self._local(parent))] = parent

    async def _truncate(self, path: bytes, length: int) -> Answer:
        error = await self._flush_under(path)
        if error is not None:
            return error
        async with self._lock(path):
            answer = await self._ask(p.WriteFile(path=_text(path), size=length))
            if isinstance(answer, p.ErrorReply):
                return answer
            copy = self._copies.get(path)
            if copy is not None and copy.local is not None:
                local = self._local(path)
                with contextlib.suppress(OSError):
                    os.truncate(local, length)
                    here = os.stat(local)
                    copy.info, copy.local = answer, (here.st_size, here.st_mtime_ns)
        return answer


def _text(path: bytes) -> str:
    return os.fsdecode(path)


def _parent(path: bytes) -> bytes:
    return os.path.dirname(path.rstrip(b"/")) or b"/"


def _same(a: p.StatInfo, b: p.StatInfo) -> bool:
    return (a.size, a.mtime_ns, a.ino) == (b.size, b.mtime_ns, b.ino)


def _mirror_kind(kind: str) -> str:
    return kind if kind in ("dir", "link", "fifo") else "file"


def _placeholder_kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if st.S_ISFIFO(entry.stat(follow_symlinks=False).st_mode):
        return "fifo"
    return "file"


def _make_placeholder(local: bytes, kind: str) -> None:
    kind = _mirror_kind(kind)
    with contextlib.suppress(FileExistsError):
        if kind == "dir":
            os.mkdir(local, 0o700)
        elif kind == "link":
            os.symlink(_LINK_PLACEHOLDER, local)
        elif kind == "fifo":
            os.mkfifo(local, 0o600)
        else:
            os.close(os.open(local, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


def _remove_stale_caches() -> None:
    """Caches left by a supervisor that was killed (SIGKILL gives no chance to clean)."""
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    uid = os.getuid()
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        pid_text = name[len(_PREFIX):].split("-", 1)[0]
        path = os.path.join(tmp, name)
        try:
            if not pid_text.isdigit() or os.lstat(path).st_uid != uid:
                continue
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
