"""The cache of pod files against a real agent serving a directory as the pod's root.

The agent and the supervisor's side run in one event loop in a thread, over a
socketpair: everything between RemoteFiles and the pod's disk is the real code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_image import protocol as p
from agent_image.agent import FEATURES, Agent
from agent_image.mux import Channel
from supervisor import remote_files
from supervisor.fs_policy import FsPolicy
from supervisor.remote_files import RemoteFiles


class Pod:
    """A pod whose root is a directory, its agent, and a RemoteFiles talking to it."""

    def __init__(self, tmp: Path, mode: str) -> None:
        self.root = tmp / "pod"
        self.root.mkdir()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.asked: list[p.Message] = []
        self.notices: list[str] = []
        self.channel: Channel = self.run(self._connect())
        self.fs = RemoteFiles(FsPolicy(mode), self.loop, lambda: self.channel,
                              self.notices.append)

    async def _connect(self) -> Channel:
        a, b = socket.socketpair()
        agent = Agent(None, str(self.root))
        pod_side = Channel("agent", agent.handle, software="agent", features=FEATURES)
        agent.channel = pod_side
        await pod_side.open_socket(a)
        ours = Channel("supervisor", software="test")
        await ours.open_socket(b)
        await asyncio.gather(pod_side.handshake(5), ours.handshake(5))
        request = ours.request

        async def counted(msg: p.Message, *args: Any) -> p.Message:
            self.asked.append(msg)
            return await request(msg, *args)

        ours.request = counted  # type: ignore[method-assign]
        return ours

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def wait(self, fut: concurrent.futures.Future[Any]) -> Any:
        return fut.result(10)

    def reads(self) -> int:
        return sum(isinstance(m, p.ReadFile) for m in self.asked)

    def close(self) -> None:
        self.fs.close()

        async def goodbye() -> None:
            self.channel.goodbye()  # the agent's side ends on it, and both sockets close
            await asyncio.sleep(0.05)

        self.run(goodbye())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    pod = Pod(tmp_path, "write")
    yield pod
    pod.close()


@pytest.fixture
def read_pod(tmp_path: Path) -> Iterator[Pod]:
    pod = Pod(tmp_path, "read")
    yield pod
    pod.close()


def _errno(answer: Any) -> int | None:
    return p.errno_value(answer.errno) if isinstance(answer, p.ErrorReply) else None


def _put(pod: Pod, rel: str, data: bytes, mode: int = 0o644) -> Path:
    path = pod.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- reading -----------------------------------------------------------------------------


def test_a_pod_file_is_copied_whole_into_a_private_mirror(pod: Pod) -> None:
    _put(pod, "etc/app/config.yaml", b"db: orders\n", 0o640)
    copy = pod.wait(pod.fs.open(b"/etc/app/config.yaml", os.O_RDONLY, 0, 0o022))
    assert copy == pod.fs.root + b"/etc/app/config.yaml"
    assert Path(os.fsdecode(copy)).read_bytes() == b"db: orders\n"
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(pod.fs.root)).st_mode) == 0o700
    assert os.stat(copy).st_mtime_ns == (pod.root / "etc/app/config.yaml").stat().st_mtime_ns
    assert pod.fs.active


def test_reopening_an_unchanged_file_costs_a_stat_and_a_changed_one_is_fetched(pod: Pod) -> None:
    src = _put(pod, "data/x", b"one")
    pod.wait(pod.fs.open(b"/data/x", os.O_RDONLY, 0, 0))
    assert pod.reads() == 1
    copy = pod.wait(pod.fs.open(b"/data/x", os.O_RDONLY, 0, 0))
    assert pod.reads() == 1
    src.write_bytes(b"two, longer")
    pod.wait(pod.fs.open(b"/data/x", os.O_RDONLY, 0, 0))
    assert pod.reads() == 2
    assert Path(os.fsdecode(copy)).read_bytes() == b"two, longer"


def test_a_large_file_travels_in_chunks_and_arrives_exactly(pod: Pod,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(remote_files, "CHUNK", 1000)
    data = os.urandom(10_500)
    _put(pod, "data/big", data)
    copy = pod.wait(pod.fs.open(b"/data/big", os.O_RDONLY, 0, 0))
    assert Path(os.fsdecode(copy)).read_bytes() == data
    assert pod.reads() == 11


def test_an_empty_file_is_one_request(pod: Pod) -> None:
    _put(pod, "data/empty", b"")
    copy = pod.wait(pod.fs.open(b"/data/empty", os.O_RDONLY, 0, 0))
    assert Path(os.fsdecode(copy)).read_bytes() == b"" and pod.reads() == 1


def test_symlinks_resolve_in_the_pod(pod: Pod) -> None:
    _put(pod, "etc/app/real.yaml", b"real")
    (pod.root / "data").mkdir()
    (pod.root / "data/link").symlink_to("/etc/app/real.yaml")  # absolute: the pod's /
    copy = pod.wait(pod.fs.open(b"/data/link", os.O_RDONLY, 0, 0))
    assert Path(os.fsdecode(copy)).read_bytes() == b"real"
    assert pod.wait(pod.fs.readlink(b"/data/link")) == b"/etc/app/real.yaml"
    assert _errno(pod.wait(pod.fs.open(b"/data/link", os.O_RDONLY | os.O_NOFOLLOW, 0, 0))) \
        == errno.ELOOP


@pytest.mark.parametrize(("path", "flags", "code"), [
    (b"/data/none", os.O_RDONLY, errno.ENOENT),
    (b"/data/file/below", os.O_RDONLY, errno.ENOTDIR),
    (b"/data", os.O_WRONLY, errno.EISDIR),
    (b"/data/file", os.O_RDONLY | os.O_DIRECTORY, errno.ENOTDIR),
    (b"/data/file", os.O_RDONLY | os.O_CREAT | os.O_EXCL, errno.EEXIST),
    (b"/data/fifo", os.O_RDONLY, errno.ENXIO),
])
def test_errors_are_the_pods(pod: Pod, path: bytes, flags: int, code: int) -> None:
    _put(pod, "data/file", b"x")
    os.mkfifo(pod.root / "data/fifo")
    assert _errno(pod.wait(pod.fs.open(path, flags, 0o644, 0))) == code


# --- directories -------------------------------------------------------------------------


def test_a_directory_is_mirrored_with_placeholders_and_kept_in_step(pod: Pod) -> None:
    _put(pod, "data/a.txt", b"a")
    _put(pod, "data/sub/b.txt", b"b")
    (pod.root / "data/link").symlink_to("a.txt")
    os.mkfifo(pod.root / "data/fifo")
    local = pod.wait(pod.fs.open(b"/data", os.O_RDONLY | os.O_DIRECTORY, 0, 0))
    kinds = {e.name: ("l" if e.is_symlink() else "d" if e.is_dir() else "f")
             for e in os.scandir(local)}
    assert kinds == {b"a.txt": "f", b"sub": "d", b"link": "l", b"fifo": "f"}
    assert stat.S_ISFIFO(os.lstat(os.path.join(local, b"fifo")).st_mode)
    # A fetched copy survives the next listing; a removed entry goes, a new one comes.
    pod.wait(pod.fs.open(b"/data/a.txt", os.O_RDONLY, 0, 0))
    (pod.root / "data/sub/b.txt").unlink()
    (pod.root / "data/sub").rmdir()
    _put(pod, "data/new", b"n")
    pod.wait(pod.fs.open(b"/data", os.O_RDONLY | os.O_DIRECTORY, 0, 0))
    assert sorted(os.listdir(local)) == [b"a.txt", b"fifo", b"link", b"new"]
    assert Path(os.fsdecode(local), "a.txt").read_bytes() == b"a"
    assert pod.reads() == 1  # placeholders are never fetched


def test_chdir_needs_a_directory_the_target_may_search(pod: Pod) -> None:
    _put(pod, "data/file", b"x")
    local = pod.wait(pod.fs.chdir(b"/data"))
    assert os.path.isdir(local) and b"file" in os.listdir(local)
    assert _errno(pod.wait(pod.fs.chdir(b"/data/file"))) == errno.ENOTDIR
    assert _errno(pod.wait(pod.fs.chdir(b"/nowhere"))) == errno.ENOENT


def test_fstat_of_a_copy_shows_the_pods_identity_and_the_copys_size(pod: Pod) -> None:
    src = _put(pod, "data/x", b"12345", 0o640)
    pod.wait(pod.fs.open(b"/data/x", os.O_RDWR, 0, 0))
    meta = pod.fs.copy_meta(b"/data/x")
    assert meta is not None
    assert (meta.size, meta.ino, stat.S_IMODE(meta.mode)) == (5, src.stat().st_ino, 0o640)
    with open(os.fsdecode(pod.fs.root + b"/data/x"), "ab") as f:
        f.write(b"678")
        f.flush()
        # Before the write-back, stat by path shows what the program wrote.
        assert pod.wait(pod.fs.stat(b"/data/x", True)).size == 8
    assert pod.fs.copy_meta(b"/data/missing") is None


# --- writing -----------------------------------------------------------------------------


def test_a_closed_copy_goes_back_to_the_pod(pod: Pod) -> None:
    src = _put(pod, "data/log", b"line 1\n", 0o640)
    copy = pod.wait(pod.fs.open(b"/data/log", os.O_WRONLY | os.O_APPEND, 0, 0))
    with open(os.fsdecode(copy), "ab") as f:
        f.write(b"line 2\n")
    _until(lambda: src.read_bytes() == b"line 1\nline 2\n")
    assert stat.S_IMODE(src.stat().st_mode) == 0o640


def test_changes_not_yet_closed_are_sent_at_the_end(pod: Pod) -> None:
    src = _put(pod, "data/state", b"old")
    copy = pod.wait(pod.fs.open(b"/data/state", os.O_RDWR, 0, 0))
    fd = os.open(copy, os.O_WRONLY)
    try:
        os.write(fd, b"new!")
        pod.fs.flush(10)
        assert src.read_bytes() == b"new!"
    finally:
        os.close(fd)


def test_truncating_open_empties_the_pod_file_even_if_nothing_is_written(pod: Pod) -> None:
    src = _put(pod, "data/t", b"content")
    copy = pod.wait(pod.fs.open(b"/data/t", os.O_WRONLY | os.O_TRUNC, 0, 0))
    assert pod.reads() == 0  # nothing to fetch: it is being emptied
    os.close(os.open(copy, os.O_WRONLY | os.O_TRUNC))
    _until(lambda: src.read_bytes() == b"")


def test_a_new_file_is_created_in_the_pod_at_once_with_the_umask_applied(pod: Pod) -> None:
    (pod.root / "data").mkdir()
    copy = pod.wait(pod.fs.open(b"/data/new", os.O_WRONLY | os.O_CREAT, 0o666, 0o027))
    made = pod.root / "data/new"
    assert made.exists() and stat.S_IMODE(made.stat().st_mode) == 0o640
    with open(os.fsdecode(copy), "wb") as f:
        f.write(b"hello")
    _until(lambda: made.read_bytes() == b"hello")
    assert _errno(pod.wait(pod.fs.open(b"/nodir/new", os.O_WRONLY | os.O_CREAT, 0o666, 0))) \
        == errno.ENOENT


def test_write_then_rename_arrives_in_order(pod: Pod) -> None:
    (pod.root / "data").mkdir()
    tmp = pod.wait(pod.fs.open(b"/data/.cfg.tmp", os.O_WRONLY | os.O_CREAT, 0o644, 0))
    fd = os.open(tmp, os.O_WRONLY)
    os.write(fd, b"final content")
    # Renamed while still open and unsent: the content must follow the name...
    assert pod.wait(pod.fs.rename(b"/data/.cfg.tmp", b"/data/cfg", 0)) is not None
    assert (pod.root / "data/cfg").read_bytes() == b"final content"
    assert not (pod.root / "data/.cfg.tmp").exists()
    # ...and what is written after the rename goes to the new name when closed.
    os.write(fd, b", more")
    os.close(fd)
    _until(lambda: (pod.root / "data/cfg").read_bytes() == b"final content, more")
    assert not (pod.root / "data/.cfg.tmp").exists()


def test_unlink_mkdir_rmdir_and_truncate_change_the_pod(pod: Pod) -> None:
    _put(pod, "data/gone", b"x")
    _put(pod, "data/long", b"0123456789")
    pod.wait(pod.fs.open(b"/data/gone", os.O_RDONLY, 0, 0))
    assert not isinstance(pod.wait(pod.fs.unlink(b"/data/gone", False)), p.ErrorReply)
    assert not (pod.root / "data/gone").exists()
    assert not os.path.exists(pod.fs.root + b"/data/gone")
    assert not isinstance(pod.wait(pod.fs.mkdir(b"/data/d", 0o750)), p.ErrorReply)
    assert stat.S_IMODE((pod.root / "data/d").stat().st_mode) == 0o750
    assert _errno(pod.wait(pod.fs.mkdir(b"/data/d", 0o750))) == errno.EEXIST
    assert not isinstance(pod.wait(pod.fs.unlink(b"/data/d", True)), p.ErrorReply)
    assert not (pod.root / "data/d").exists()
    assert not isinstance(pod.wait(pod.fs.truncate(b"/data/long", 4)), p.ErrorReply)
    assert (pod.root / "data/long").read_bytes() == b"0123"
    assert _errno(pod.wait(pod.fs.unlink(b"/data/none", False))) == errno.ENOENT


def test_read_mode_refuses_every_write_with_erofs_after_the_pods_own_errors(
        read_pod: Pod) -> None:
    pod = read_pod
    src = _put(pod, "data/x", b"keep")
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        assert _errno(pod.wait(pod.fs.open(b"/data/x", flags, 0, 0))) == errno.EROFS
    assert _errno(pod.wait(pod.fs.open(b"/data/new", os.O_WRONLY | os.O_CREAT, 0o644, 0))) \
        == errno.EROFS
    assert _errno(pod.wait(pod.fs.open(b"/nodir/new", os.O_WRONLY | os.O_CREAT, 0o644, 0))) \
        == errno.ENOENT
    assert _errno(pod.wait(pod.fs.open(b"/data/none", os.O_WRONLY, 0, 0))) == errno.ENOENT
    assert _errno(pod.wait(pod.fs.access(b"/data/x", os.W_OK, True))) == errno.EROFS
    assert not isinstance(pod.wait(pod.fs.access(b"/data/x", os.R_OK, True)), p.ErrorReply)
    assert _errno(pod.wait(pod.fs.access(b"/data/none", os.W_OK, True))) == errno.ENOENT
    assert src.read_bytes() == b"keep" and not (pod.root / "data/new").exists()


# --- the cache's life ----------------------------------------------------------------------


def test_the_cache_is_removed_at_close_and_a_dead_sessions_cache_at_start(tmp_path: Path
                                                                          ) -> None:
    import tempfile

    dead = subprocess_pid_that_is_gone()
    stale = Path(tempfile.gettempdir(), f"{remote_files._PREFIX}{dead}-stale")
    stale.mkdir()
    (stale / "root").mkdir()
    pod = Pod(tmp_path, "read")
    try:
        assert not stale.exists()
        base = os.path.dirname(pod.fs.root)
        assert os.path.isdir(base)
    finally:
        pod.close()
    assert not os.path.exists(base)


def subprocess_pid_that_is_gone() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
