"""Path-syscall handlers against a fake call and a fake pod: where a path leads, and the
outcome each kind of answer gives."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_handlers import SCRATCH, FakeCall, FakeSession

from agent_image import protocol as p
from supervisor.fs_policy import FsPolicy
from syscalls import files
from syscalls.base import PASS, Park, Pass, Return, Rewrite
from syscalls.fsstruct import STAT_SIZE, STATX_SIZE

PATH = 0x1000
BUF = 0x2000
NEWPATH = 0x3000
AT_FDCWD = (1 << 64) - 100


def _done(value: Any) -> concurrent.futures.Future[Any]:
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
    fut.set_result(value)
    return fut


def _info(size: int = 5, mode: int = 0o100640) -> p.StatInfo:
    return p.StatInfo(mode=mode, size=size, uid=1000, gid=1000, nlink=1, ino=777, dev=42,
                      rdev=0, blksize=4096, blocks=8, atime_ns=1, mtime_ns=2_000_000_003,
                      ctime_ns=3)


class FakeFiles:
    """The Files service with canned answers, recording what it was asked."""

    def __init__(self, root: Path, mode: str = "write") -> None:
        self.root = str(root).encode()
        self.mode = mode
        self.active = True
        self.policy = FsPolicy(mode)
        self.asked: list[tuple[Any, ...]] = []
        self.answer: Any = None
        self.meta: dict[bytes, Any] = {}
        self.quick_local = self.policy.quick_local(self.root)

    def decide(self, path: bytes, in_pod: bool) -> tuple[bool, str]:
        return self.policy.decide(path, in_pod)

    def _ask(self, *what: Any) -> concurrent.futures.Future[Any]:
        self.asked.append(what)
        return _done(self.answer)

    def open(self, path: bytes, flags: int, mode: int, umask: int) -> Any:
        return self._ask("open", path, flags, mode)

    def chdir(self, path: bytes) -> Any:
        return self._ask("chdir", path)

    def stat(self, path: bytes, follow: bool) -> Any:
        return self._ask("stat", path, follow)

    def copy_meta(self, path: bytes) -> Any:
        return self.meta.get(path)

    def access(self, path: bytes, mode: int, follow: bool) -> Any:
        return self._ask("access", path, mode, follow)

    def readlink(self, path: bytes) -> Any:
        return self._ask("readlink", path)

    def unlink(self, path: bytes, directory: bool) -> Any:
        return self._ask("unlink", path, directory)

    def rename(self, src: bytes, dst: bytes, flags: int) -> Any:
        return self._ask("rename", src, dst, flags)

    def mkdir(self, path: bytes, mode: int) -> Any:
        return self._ask("mkdir", path, mode)

    def truncate(self, path: bytes, length: int) -> Any:
        return self._ask("truncate", path, length)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    return root


@pytest.fixture
def session(cache: Path) -> Iterator[FakeSession]:
    s = FakeSession()
    s.fs = FakeFiles(cache)
    yield s


def _call(name: str, args: list[int], path: bytes, **more: bytes) -> FakeCall:
    memory = {PATH: path + b"\0", BUF: bytes(512)}
    memory.update({int(k[1:], 16): v for k, v in more.items()})
    call = FakeCall(name, args, memory)
    call.tid = call.tgid = os.getpid()  # /proc/TID/cwd and fd are this process's
    return call


def _park(outcome: Any) -> Any:
    assert isinstance(outcome, Park), outcome
    return outcome


def _resume(call: FakeCall, outcome: Any) -> Any:
    park = _park(outcome)
    return park.then(call, park.future.result())


def _exit(call: FakeCall, outcome: Pass | Rewrite, result: int) -> None:
    call.result = result
    assert outcome.on_exit is not None
    outcome.on_exit(call)  # type: ignore[arg-type]


# --- where a path leads ------------------------------------------------------------------


def test_system_and_existing_paths_run_untouched(session: FakeSession) -> None:
    for path in (b"/usr/lib/python3/json/__init__.py", b"/etc/passwd", b"/proc/self/maps"):
        call = _call("openat", [AT_FDCWD, PATH, os.O_RDONLY], path)
        assert files.openat(call, session) is PASS  # type: ignore[arg-type]
    assert session.fs.asked == []


def test_a_pod_file_parks_then_opens_the_copy_with_its_flags_fixed(session: FakeSession) -> None:
    call = _call("openat", [AT_FDCWD, PATH, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600],
                 b"/etc/app-x/new.yaml")
    session.fs.answer = session.fs.root + b"/etc/app-x/new.yaml"
    rewrite = _resume(call, files.openat(call, session))  # type: ignore[arg-type]
    assert session.fs.asked == [("open", b"/etc/app-x/new.yaml",
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)]
    assert isinstance(rewrite, Rewrite)
    assert rewrite.args == {1: SCRATCH, 2: os.O_WRONLY | os.O_CREAT}  # O_EXCL: checked in the pod
    assert call.memory[SCRATCH] == session.fs.root + b"/etc/app-x/new.yaml\0"
    assert call.memory[PATH] == b"/etc/app-x/new.yaml\0"  # the program's own string is intact
    _exit(call, rewrite, 3)
    assert session.events == [("open", "/etc/app-x/new.yaml", "pod", 3)]


def test_a_pod_error_is_returned_as_it_is(session: FakeSession) -> None:
    call = _call("open", [PATH, os.O_RDONLY], b"/data-x/missing")
    session.fs.answer = p.ErrorReply(errno="EACCES")
    assert _resume(call, files.open_(call, session)) == Return(-errno.EACCES)  # type: ignore
    assert session.events == [("open", "/data-x/missing", "pod", -errno.EACCES)]


def test_openat2_gets_an_open_how_of_its_own(session: FakeSession) -> None:
    how = struct.pack("<QQQ", os.O_RDONLY | os.O_NOFOLLOW, 0, 0x08)  # RESOLVE_BENEATH
    call = _call("openat2", [AT_FDCWD, PATH, 0x4000, 24], b"/data-x/f", x4000=how)
    session.fs.answer = b"/cache/data-x/f"
    rewrite = _resume(call, files.openat2(call, session))  # type: ignore[arg-type]
    assert isinstance(rewrite, Rewrite)
    data = call.memory[SCRATCH]
    assert rewrite.args == {1: SCRATCH + 24, 2: SCRATCH}
    assert struct.unpack("<QQQ", data[:24]) == (os.O_RDONLY | os.O_NOFOLLOW, 0, 0)
    assert data[24:] == b"/cache/data-x/f\0"


def test_relative_paths_resolve_against_the_dirfd_and_a_pod_dir_maps_back(
        session: FakeSession, cache: Path) -> None:
    fd = os.open(cache / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        call = _call("openat", [fd, PATH, os.O_RDONLY], b"sub/../passwd")
        files.openat(call, session)  # type: ignore[arg-type]
        # /data/passwd, the pod's: it was reached through the pod's /data, so
        # whether /data/passwd exists here does not matter.
        assert session.fs.asked[-1][:2] == ("open", b"/data/passwd")
        call = _call("openat", [fd, PATH, os.O_RDONLY], b"../../usr/bin/env")
        rewrite = files.openat(call, session)  # type: ignore[arg-type]
        # A local path reached from a pod directory: the kernel gets it absolute.
        assert isinstance(rewrite, Rewrite) and call.memory[SCRATCH] == b"/usr/bin/env\0"
    finally:
        os.close(fd)


def test_cache_paths_named_directly_are_the_pods(session: FakeSession) -> None:
    call = _call("stat", [PATH, BUF], session.fs.root + b"/data/x")
    files.stat(call, session)  # type: ignore[arg-type]
    assert session.fs.asked == [("stat", b"/data/x", True)]


def test_dot_dot_below_a_pod_directory_is_folded_for_the_kernel(session: FakeSession) -> None:
    call = _call("newfstatat", [AT_FDCWD, PATH, BUF, 0x100], b"/data-not-here/..")
    rewrite = files.newfstatat(call, session)  # type: ignore[arg-type]
    assert isinstance(rewrite, Rewrite) and call.memory[SCRATCH] == b"/\0"


def test_with_fs_local_only_resolver_files_are_served() -> None:
    s = FakeSession()
    call = _call("openat", [AT_FDCWD, PATH, os.O_RDONLY], b"/data-x/f")
    assert files.openat(call, s) is PASS  # type: ignore[arg-type]
    call = _call("openat", [AT_FDCWD, PATH, os.O_RDONLY], b"/etc/resolv.conf")
    assert isinstance(files.openat(call, s), Rewrite)  # type: ignore[arg-type]


# --- answered from the pod's metadata ------------------------------------------------------


def test_stat_of_a_pod_path_writes_the_pods_struct(session: FakeSession) -> None:
    call = _call("stat", [PATH, BUF], b"/var/run/secrets/token")
    session.fs.answer = _info(size=1234)
    assert _resume(call, files.stat(call, session)) == Return(0)  # type: ignore[arg-type]
    written = call.memory[BUF][:STAT_SIZE]
    dev, ino, nlink, mode, uid, gid = struct.unpack_from("<QQQIII", written)
    assert (dev, ino, nlink, mode, uid, gid) == (42, 777, 1, 0o100640, 1000, 1000)
    assert struct.unpack_from("<q", written, 48)[0] == 1234
    assert session.events[-1][0] == "stat"


def test_statx_and_lstat_semantics(session: FakeSession) -> None:
    call = _call("statx", [AT_FDCWD, PATH, 0x100, 0x7FF, BUF], b"/run/secrets/x")
    session.fs.answer = _info(size=9)
    call.memory[BUF] = bytes(STATX_SIZE)
    assert _resume(call, files.statx(call, session)) == Return(0)  # type: ignore[arg-type]
    assert session.fs.asked == [("stat", b"/run/secrets/x", False)]
    assert struct.unpack_from("<Q", call.memory[BUF], 40)[0] == 9  # stx_size


def test_fstat_of_an_fd_on_a_copy_is_answered_without_the_pod(session: FakeSession,
                                                              cache: Path) -> None:
    (cache / "data/x").write_bytes(b"12345")
    session.fs.meta[b"/data/x"] = _info(size=5)
    fd = os.open(cache / "data/x", os.O_RDONLY)
    other = os.open("/etc/passwd", os.O_RDONLY)
    try:
        call = _call("fstat", [fd, BUF], b"")
        assert files.fstat(call, session) == Return(0)  # type: ignore[arg-type]
        assert struct.unpack_from("<Q", call.memory[BUF], 8)[0] == 777  # the pod's inode
        # glibc's fstat: newfstatat(fd, "", buf, AT_EMPTY_PATH)
        call = _call("newfstatat", [fd, PATH, BUF, 0x1000], b"")
        assert files.newfstatat(call, session) == Return(0)  # type: ignore[arg-type]
        call = _call("fstat", [other, BUF], b"")
        assert files.fstat(call, session) is PASS  # type: ignore[arg-type]
        session.fs.active = False  # nothing of the pod opened yet: not even a look
        call = _call("fstat", [fd, BUF], b"")
        assert files.fstat(call, session) is PASS  # type: ignore[arg-type]
    finally:
        os.close(fd)
        os.close(other)
    assert session.fs.asked == []


def test_access_and_readlink_answer_from_the_pod(session: FakeSession) -> None:
    call = _call("faccessat2", [AT_FDCWD, PATH, os.W_OK, 0x100], b"/run/secrets/x")
    session.fs.answer = p.ErrorReply(errno="EROFS")
    assert _resume(call, files.faccessat2(call, session)) == Return(-errno.EROFS)  # type: ignore
    assert session.fs.asked[-1] == ("access", b"/run/secrets/x", os.W_OK, False)
    call = _call("readlink", [PATH, BUF, 4], b"/run/secrets/link")
    session.fs.answer = b"../target"
    assert _resume(call, files.readlink(call, session)) == Return(4)  # type: ignore[arg-type]
    assert call.memory[BUF][:5] == b"../t\0"  # cut to the buffer, no NUL added


def test_xattrs_of_a_pod_path_are_none(session: FakeSession) -> None:
    call = _call("lgetxattr", [PATH, 0x5000, BUF, 64], b"/run/secrets/x")
    assert files.lgetxattr(call, session) == Return(-errno.ENODATA)  # type: ignore[arg-type]
    call = _call("listxattr", [PATH, BUF, 64], b"/run/secrets/x")
    assert files.listxattr(call, session) == Return(0)  # type: ignore[arg-type]
    call = _call("getxattr", [PATH, 0x5000, BUF, 64], b"/etc/passwd")
    assert files.getxattr(call, session) is PASS  # type: ignore[arg-type]


# --- the working directory and links into the cache --------------------------------------


def test_chdir_into_a_pod_dir_enters_its_mirror(session: FakeSession) -> None:
    call = _call("chdir", [PATH], b"/data-x")
    session.fs.answer = session.fs.root + b"/data-x"
    rewrite = _resume(call, files.chdir(call, session))  # type: ignore[arg-type]
    assert isinstance(rewrite, Rewrite)
    assert call.memory[SCRATCH] == session.fs.root + b"/data-x\0"


def test_getcwd_and_proc_links_show_pod_paths(session: FakeSession, cache: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    call = _call("getcwd", [BUF, 256], b"")
    assert files.getcwd(call, session) is PASS  # type: ignore[arg-type]  # not in the pod
    monkeypatch.chdir(cache / "data")
    out = files.getcwd(call, session)  # type: ignore[arg-type]
    assert isinstance(out, Pass)
    cwd = session.fs.root + b"/data/sub"
    call.memory[BUF] = cwd + b"\0" + bytes(256 - len(cwd) - 1)
    _exit(call, out, len(cwd) + 1)
    assert call.result == len(b"/data/sub") + 1
    assert call.memory[BUF].startswith(b"/data/sub\0")
    call = _call("readlink", [PATH, BUF, 256], b"/proc/self/fd/3")
    out = files.readlink(call, session)  # type: ignore[arg-type]
    assert isinstance(out, Pass)
    call.memory[BUF] = cwd + bytes(256 - len(cwd))
    _exit(call, out, len(cwd))
    assert call.result == len(b"/data/sub") and call.memory[BUF].startswith(b"/data/sub")


def test_getcwd_that_does_not_fit_is_erange(session: FakeSession, cache: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(cache / "data")
    call = _call("getcwd", [BUF, 5], b"")
    out = files.getcwd(call, session)  # type: ignore[arg-type]
    cwd = session.fs.root + b"/data/sub"
    call.memory[BUF] = cwd + b"\0"
    _exit(call, out, len(cwd) + 1)  # type: ignore[arg-type]
    assert call.result == -errno.ERANGE


def test_execve_of_a_pod_path_is_refused_and_shown(session: FakeSession) -> None:
    session.fs.answer = _info()
    call = _call("execve", [PATH, 0, 0], b"/opt-x/app/tool")
    assert _resume(call, files.execve(call, session)) == Return(-errno.EACCES)  # type: ignore
    assert session.events == [("open", "/opt-x/app/tool", "refused", -errno.EACCES)]
    session.fs.answer = p.ErrorReply(errno="ENOENT")
    call = _call("execve", [PATH, 0, 0], b"/no/such/dir/prog")  # a PATH lookup's miss
    assert _resume(call, files.execve(call, session)) is PASS  # type: ignore[arg-type]
    call = _call("execve", [PATH, 0, 0], b"/run/secrets/tool")  # the pod's by rule
    assert _resume(call, files.execve(call, session)) == Return(-errno.EACCES)  # type: ignore
    call = _call("execve", [PATH, 0, 0], b"/usr/bin/env")
    assert files.execve(call, session) is PASS  # type: ignore[arg-type]


# --- changes ---------------------------------------------------------------------------------


def test_a_rename_across_this_machine_and_the_pod_is_exdev(session: FakeSession) -> None:
    call = _call("rename", [PATH, NEWPATH], b"/tmp/local", x3000=b"/run/secrets/x\0")
    assert files.rename(call, session) == Return(-errno.EXDEV)  # type: ignore[arg-type]


def test_changes_in_the_pod_go_to_it_in_write_mode_and_fail_erofs_in_read_mode(
        session: FakeSession) -> None:
    call = _call("renameat2", [AT_FDCWD, PATH, AT_FDCWD, NEWPATH, 1], b"/run/secrets/a",
                 x3000=b"/run/secrets/b\0")
    session.fs.answer = p.Done()
    assert _resume(call, files.renameat2(call, session)) == Return(0)  # type: ignore[arg-type]
    assert session.fs.asked == [("rename", b"/run/secrets/a", b"/run/secrets/b", 1)]
    call = _call("unlinkat", [AT_FDCWD, PATH, 0x200], b"/run/secrets/d")
    _resume(call, files.unlinkat(call, session))  # type: ignore[arg-type]
    assert session.fs.asked[-1] == ("unlink", b"/run/secrets/d", True)
    session.fs.mode = "read"
    call = _call("unlink", [PATH], b"/run/secrets/a")
    assert files.unlink(call, session) == Return(-errno.EROFS)  # type: ignore[arg-type]
    call = _call("unlink", [PATH], b"/tmp/x")
    assert files.unlink(call, session) is PASS  # type: ignore[arg-type]
