"""The agent's view of the pod's files: resolved inside the pod's root, read in chunks,
written back and changed, with the target's credentials."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import stat
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from test_agent import AGENT  # the agent as it ships: python -I -S

from agent_image import protocol as p
from agent_image.files import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Creds,
    PodFiles,
    _acting_as,
    target_creds,
)
from agent_image.mux import Channel

T = TypeVar("T")


@pytest.fixture
def pod_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc" / "app").mkdir(parents=True)
    (root / "etc" / "app" / "config.yaml").write_text("db: postgres://db\n")
    (root / "data").mkdir()
    (root / "data" / "target").write_text("inside the pod\n")
    (root / "etc" / "link").symlink_to("/data/target")  # absolute: must stay in the pod
    (root / "escape").symlink_to("../../../../../../etc/hostname")
    (tmp_path / "outside").write_text("the agent's own file\n")
    (root / "up").symlink_to("../outside")
    return root


@pytest.fixture
def files(pod_root: Path) -> Iterator[PodFiles]:
    served = PodFiles(str(pod_root))
    yield served
    served.close()


@pytest.fixture
def umask_077() -> Iterator[None]:
    """A umask that would show if the agent let its own mask the modes it is given."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def test_absolute_symlinks_resolve_inside_the_pods_root(pod_root: Path) -> None:
    files = PodFiles(str(pod_root))
    try:
        assert files.read("/etc/link", 0, 100)[1] == b"inside the pod\n"
        assert files.readlink("/etc/link") == "/data/target"
        assert stat.S_ISLNK(files.stat("/etc/link", follow=False).st_mode)
        assert files.stat("/etc/link").st_size == len("inside the pod\n")
    finally:
        files.close()


@pytest.mark.parametrize("path", ["/escape", "/up", "/../outside", "/data/../../outside"])
def test_nothing_outside_the_root_can_be_reached(pod_root: Path, path: str) -> None:
    files = PodFiles(str(pod_root))
    try:
        with pytest.raises(OSError) as exc:
            files.read(path, 0, 100)
        assert exc.value.errno == errno.ENOENT  # '..' stops at the root, as in a container
    finally:
        files.close()


def test_errors_are_the_pods_own(pod_root: Path) -> None:
    files = PodFiles(str(pod_root))
    try:
        cases = {
            "/nope": errno.ENOENT,
            "/etc/app/config.yaml/x": errno.ENOTDIR,
            "/etc/app": errno.EISDIR,
            "relative": errno.EINVAL,
        }
        for path, code in cases.items():
            with pytest.raises(OSError) as exc:
                files.read(path, 0, 10)
            assert exc.value.errno == code, path
        with pytest.raises(OSError) as exc:
            files.readlink("/data/target")
        assert exc.value.errno == errno.EINVAL
    finally:
        files.close()


def test_listing_gives_names_and_kinds(pod_root: Path) -> None:
    files = PodFiles(str(pod_root))
    try:
        names = [(e.name, e.kind) for e in files.listdir("/")]
        assert names == [("data", "dir"), ("escape", "link"), ("etc", "dir"), ("up", "link")]
        assert [(e.name, e.kind) for e in files.listdir("/etc")] == [
            ("app", "dir"), ("link", "link")
        ]
    finally:
        files.close()


def test_a_large_file_travels_in_chunks_byte_exact(pod_root: Path) -> None:
    """20 MiB through a real agent over pipes, never in one frame."""
    big = os.urandom(20 * 2**20 + 12345)
    (pod_root / "data" / "big").write_bytes(big)

    async def body(ch: Channel) -> bytes:
        out = bytearray()
        while True:
            reply = await ch.request(p.ReadFile(path="/data/big", offset=len(out)))
            assert isinstance(reply, p.FileData), reply
            assert len(reply.blob) <= p.MAX_PAYLOAD
            out += reply.blob
            if len(out) >= reply.size or not reply.blob:
                return bytes(out)

    got = _with_agent(pod_root, body)
    assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()


def test_the_agent_answers_stat_list_and_readlink_with_the_pods_view(pod_root: Path) -> None:
    async def body(ch: Channel) -> list[p.Message]:
        return list(await asyncio.gather(
            ch.request(p.Stat(path="/etc/link")),
            ch.request(p.Stat(path="/etc/link", follow=False)),
            ch.request(p.ListDir(path="/etc")),
            ch.request(p.ReadLink(path="/etc/link")),
            ch.request(p.Stat(path="/nope")),
        ))

    followed, link, listing, target, missing = _with_agent(pod_root, body)
    assert isinstance(followed, p.StatInfo) and stat.S_ISREG(followed.mode)
    assert followed.size == len("inside the pod\n")
    assert isinstance(link, p.StatInfo) and stat.S_ISLNK(link.mode)
    ino = {name: os.lstat(pod_root / "etc" / name).st_ino for name in ("app", "link")}
    assert listing == p.DirEntries(
        entries=[["app", "dir", ino["app"]], ["link", "link", ino["link"]]]
    )
    assert target == p.LinkTarget(target="/data/target")
    assert missing == p.ErrorReply(errno="ENOENT", message="No such file or directory")


def _with_agent(root: Path, body: Callable[[Channel], Awaitable[T]]) -> T:
    argv = [*AGENT[:4], AGENT[4].replace("main()", f"main(['--root', {str(root)!r}])")]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:

        async def main() -> T:
            ch = Channel("supervisor")
            await ch.open_pipes(proc.stdout, proc.stdin)
            await ch.handshake(20)
            try:
                return await body(ch)
            finally:
                ch.goodbye()
                await asyncio.sleep(0)

        try:
            result = asyncio.run(asyncio.wait_for(main(), 60))
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    return result


def test_the_agent_refuses_a_root_that_is_not_a_directory(tmp_path: Path) -> None:
    argv = [*AGENT[:4], AGENT[4].replace("main()", f"main(['--root', {str(tmp_path / 'x')!r}])")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "is not a directory" in out.stderr


# --- writing, removing, renaming ------------------------------------------------------


def test_a_file_written_back_in_chunks_reads_back_byte_exact(pod_root: Path, files: PodFiles
                                                             ) -> None:
    """The supervisor's write-back: truncate+create first, then offsets, size last."""
    (pod_root / "data" / "out").write_bytes(b"old and longer " * 50_000)
    new = os.urandom(300_001)
    chunk = 64 * 1024
    for off in range(0, len(new), chunk):
        last = off + chunk >= len(new)
        st = files.write("/data/out", new[off : off + chunk], off, truncate=off == 0,
                         create=off == 0, size=len(new) if last else None)
    assert st.st_size == len(new)
    got = b"".join(files.read("/data/out", off, chunk)[1] for off in range(0, len(new), chunk))
    assert got == new
    assert (pod_root / "data" / "out").read_bytes() == new


def test_size_cuts_or_extends_a_file_after_the_write(pod_root: Path, files: PodFiles) -> None:
    target = pod_root / "data" / "target"
    target.write_bytes(b"0123456789")
    assert files.write("/data/target", b"ab", size=4).st_size == 4
    assert target.read_bytes() == b"ab23"
    files.write("/data/target", b"", size=6)
    assert target.read_bytes() == b"ab23\0\0"
    files.write("/data/target", b"Z", 1)  # no size: the rest stays
    assert target.read_bytes() == b"aZ23\0\0"


@pytest.mark.usefixtures("umask_077")
def test_create_gives_exactly_the_mode_asked_for(pod_root: Path, files: PodFiles) -> None:
    st = files.write("/data/new", b"x", create=True, mode=0o664)
    assert stat.S_IMODE(st.st_mode) == 0o664
    assert stat.S_IMODE((pod_root / "data" / "new").stat().st_mode) == 0o664
    before = stat.S_IMODE((pod_root / "data" / "target").stat().st_mode)
    files.write("/data/target", b"y", create=True, mode=0o600)  # exists: mode untouched
    assert stat.S_IMODE((pod_root / "data" / "target").stat().st_mode) == before


@pytest.mark.usefixtures("umask_077")
def test_mkdir_makes_a_directory_with_the_mode_asked_for(pod_root: Path, files: PodFiles
                                                         ) -> None:
    files.mkdir("/data/sub", 0o751)
    made = (pod_root / "data" / "sub").lstat()
    assert stat.S_ISDIR(made.st_mode) and stat.S_IMODE(made.st_mode) == 0o751
    files.mkdir("/data/sub/deeper/")  # a trailing slash is fine for mkdir(2)
    assert (pod_root / "data" / "sub" / "deeper").is_dir()


def test_unlink_removes_a_file_and_rmdir_a_directory(pod_root: Path, files: PodFiles) -> None:
    files.unlink("/etc/app/config.yaml")
    assert not (pod_root / "etc" / "app" / "config.yaml").exists()
    files.unlink("/etc/app", directory=True)
    assert not (pod_root / "etc" / "app").exists()


def test_unlink_of_a_symlink_removes_the_link_not_its_target(pod_root: Path, files: PodFiles
                                                             ) -> None:
    files.unlink("/etc/link")  # -> /data/target
    assert not os.path.lexists(pod_root / "etc" / "link")
    assert (pod_root / "data" / "target").read_text() == "inside the pod\n"


def test_a_symlinked_directory_on_the_way_resolves_inside_the_root(pod_root: Path,
                                                                   files: PodFiles) -> None:
    (pod_root / "d").symlink_to("/data")  # absolute, as the container sees it
    files.unlink("/d/target")
    assert not (pod_root / "data" / "target").exists()


def test_rename_moves_and_noreplace_refuses_an_existing_name(pod_root: Path, files: PodFiles
                                                             ) -> None:
    files.rename("/data/target", "/data/moved")
    assert (pod_root / "data" / "moved").read_text() == "inside the pod\n"
    assert not (pod_root / "data" / "target").exists()
    with pytest.raises(OSError) as exc:
        files.rename("/data/moved", "/etc/app/config.yaml", RENAME_NOREPLACE)
    assert exc.value.errno == errno.EEXIST
    assert (pod_root / "data" / "moved").read_text() == "inside the pod\n"
    assert (pod_root / "etc" / "app" / "config.yaml").read_text() == "db: postgres://db\n"
    files.rename("/data/moved", "/etc/app/config.yaml")  # without the flag it replaces
    assert (pod_root / "etc" / "app" / "config.yaml").read_text() == "inside the pod\n"


def test_rename_exchange_swaps_and_a_symlink_moves_itself(pod_root: Path, files: PodFiles
                                                          ) -> None:
    (pod_root / "data" / "other").write_text("other\n")
    files.rename("/data/target", "/data/other", RENAME_EXCHANGE)
    assert (pod_root / "data" / "target").read_text() == "other\n"
    assert (pod_root / "data" / "other").read_text() == "inside the pod\n"
    files.rename("/etc/link", "/etc/link2")
    assert os.readlink(pod_root / "etc" / "link2") == "/data/target"


@pytest.mark.parametrize(
    ("act", "code"),
    [
        pytest.param(lambda f: f.write("/nope", b"x"), errno.ENOENT, id="write-missing"),
        pytest.param(lambda f: f.write("/etc/app", b"x"), errno.EISDIR, id="write-dir"),
        pytest.param(lambda f: f.write("/data/target/x", b"x", create=True), errno.ENOTDIR,
                     id="write-under-file"),
        pytest.param(lambda f: f.write("data/x", b"x", create=True), errno.EINVAL,
                     id="write-relative"),
        pytest.param(lambda f: f.unlink("/nope"), errno.ENOENT, id="unlink-missing"),
        pytest.param(lambda f: f.unlink("/etc/app"), errno.EISDIR, id="unlink-dir"),
        pytest.param(lambda f: f.unlink("/data/target/"), errno.ENOTDIR, id="unlink-slash"),
        pytest.param(lambda f: f.unlink("/data/target", directory=True), errno.ENOTDIR,
                     id="rmdir-file"),
        pytest.param(lambda f: f.unlink("/etc", directory=True), errno.ENOTEMPTY,
                     id="rmdir-full"),
        pytest.param(lambda f: f.unlink("etc/link"), errno.EINVAL, id="unlink-relative"),
        pytest.param(lambda f: f.unlink("/"), errno.EISDIR, id="unlink-root"),
        pytest.param(lambda f: f.unlink("//", directory=True), errno.EBUSY, id="rmdir-root"),
        pytest.param(lambda f: f.unlink("/etc/..", directory=True), errno.ENOTEMPTY,
                     id="rmdir-dotdot"),
        pytest.param(lambda f: f.rename("/", "/x"), errno.EBUSY, id="rename-root"),
        pytest.param(lambda f: f.mkdir("/etc"), errno.EEXIST, id="mkdir-exists"),
        pytest.param(lambda f: f.mkdir("/nope/x"), errno.ENOENT, id="mkdir-no-parent"),
        pytest.param(lambda f: f.rename("/nope", "/x"), errno.ENOENT, id="rename-missing"),
        pytest.param(lambda f: f.rename("/etc/app", "/data/target"), errno.ENOTDIR,
                     id="rename-dir-over-file"),
        pytest.param(lambda f: f.rename("/data/target", "/etc/app/config.yaml/x"),
                     errno.ENOTDIR, id="rename-under-file"),
        pytest.param(lambda f: f.access("/nope", os.F_OK), errno.ENOENT, id="access-missing"),
        pytest.param(lambda f: f.access("/data/target/x", os.F_OK), errno.ENOTDIR,
                     id="access-under-file"),
    ],
)
def test_errors_of_changes_are_the_pods_own(files: PodFiles, act: Callable[[PodFiles], object],
                                            code: int) -> None:
    with pytest.raises(OSError) as exc:
        act(files)
    assert exc.value.errno == code


def test_changes_stay_inside_the_root(tmp_path: Path, pod_root: Path, files: PodFiles) -> None:
    (pod_root / "host").symlink_to(str(tmp_path))  # absolute: the host's path, not the pod's
    outside = tmp_path / "outside"
    files.write("/up", b"written", create=True)  # up -> ../outside: the pod's /outside
    assert (pod_root / "outside").read_bytes() == b"written"
    files.mkdir("/../../made")
    assert (pod_root / "made").is_dir() and not (tmp_path / "made").exists()
    files.rename("/outside", "/../../../stolen")
    assert (pod_root / "stolen").exists() and not (tmp_path.parent / "stolen").exists()
    for act in (lambda: files.unlink("/../outside"), lambda: files.unlink("/host/outside"),
                lambda: files.write("/host/outside", b"x", create=True),
                lambda: files.access("/host/outside", os.F_OK)):
        with pytest.raises(OSError) as exc:
            act()
        assert exc.value.errno == errno.ENOENT
    assert outside.read_text() == "the agent's own file\n"


def test_access_answers_as_access_does(pod_root: Path, files: PodFiles) -> None:
    (pod_root / "dangling").symlink_to("/nowhere")
    assert files.access("/data/target", os.F_OK) is None
    assert files.access("/data/target", os.R_OK | os.W_OK) is None  # the tester owns it
    assert files.access("/etc/app", os.X_OK) is None
    with pytest.raises(OSError) as exc:
        files.access("/data/target", os.X_OK)  # no x bit at all: refused even to root
    assert exc.value.errno == errno.EACCES
    assert files.access("/dangling", os.F_OK, follow=False) is None
    with pytest.raises(OSError) as exc:
        files.access("/dangling", os.F_OK)
    assert exc.value.errno == errno.ENOENT


def test_listing_tells_devices_fifos_and_sockets_apart_with_their_inodes(
    pod_root: Path, files: PodFiles
) -> None:
    os.mkfifo(pod_root / "data" / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(pod_root / "data" / "sock"))
        got = files.listdir("/data")
    assert [(e.name, e.kind) for e in got] == [("fifo", "fifo"), ("sock", "sock"),
                                               ("target", "file")]
    assert [e.ino for e in got] == [(pod_root / "data" / e.name).lstat().st_ino for e in got]
    host = PodFiles("/")
    try:
        kinds = {e.name: e.kind for e in host.listdir("/dev")}
    finally:
        host.close()
    assert kinds["null"] == "chr"


# --- the target's credentials ---------------------------------------------------------


def test_creds_are_read_from_proc_status() -> None:
    own = Creds.of_process(os.getpid())
    assert own == Creds(os.geteuid(), os.getegid(), own.groups)
    assert sorted(own.groups) == sorted(os.getgroups())
    assert target_creds(None) is None
    assert target_creds(os.getpid()) is None  # root needs no switch; non-root cannot


def _thread_ids(task: str = "thread-self") -> tuple[int, int, tuple[int, ...]]:
    """fsuid, fsgid and groups of one thread, as the kernel reports them."""
    path = f"/proc/{task}/status" if task == "thread-self" else f"/proc/self/task/{task}/status"
    with open(path) as f:
        fields = {k: v.split() for k, _, v in (line.partition(":") for line in f)}
    return int(fields["Uid"][3]), int(fields["Gid"][3]), tuple(int(g) for g in fields["Groups"])


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another uid needs root")
def test_files_are_served_with_the_targets_credentials(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    (root / "secret").write_text("secret\n")
    os.chmod(root / "secret", 0o600)
    (root / "shared").write_text("shared\n")
    os.chown(root / "shared", 0, 23456)
    os.chmod(root / "shared", 0o640)
    (root / "home").mkdir()
    os.chown(root / "home", 12345, 12345)
    before = _thread_ids()
    app = subprocess.Popen(["sleep", "30"], user=12345, group=12345, extra_groups=[23456])
    try:
        creds = target_creds(app.pid)
        assert creds == Creds(12345, 12345, (23456,))
        files = PodFiles(str(root), creds)
        try:
            for act in (lambda: files.read("/secret", 0, 100),
                        lambda: files.access("/secret", os.R_OK),
                        lambda: files.write("/secret", b"x"),
                        lambda: files.unlink("/secret"),
                        lambda: files.mkdir("/new"),
                        lambda: files.write("/new", b"x", create=True)):
                with pytest.raises(OSError) as exc:
                    act()
                assert exc.value.errno == errno.EACCES
                assert _thread_ids() == before  # back to the agent's own, error or not
            assert files.read("/shared", 0, 100)[1] == b"shared\n"  # through group 23456
            assert files.access("/shared", os.R_OK) is None
            made = files.write("/home/made", b"mine", create=True, truncate=True)
            assert (made.st_uid, made.st_gid) == (12345, 12345)
            files.mkdir("/home/dir")
            assert (root / "home" / "dir").stat().st_uid == 12345
            assert _thread_ids() == before
        finally:
            files.close()
        own = PodFiles(str(root))
        try:
            assert own.read("/secret", 0, 100)[1] == b"secret\n"
        finally:
            own.close()

        # Only the calling thread changes identity: glibc's wrappers would change all.
        other_ready, release = threading.Event(), threading.Event()
        other_tid: list[int] = []

        def other() -> None:
            other_tid.append(threading.get_native_id())
            other_ready.set()
            release.wait(10)

        t = threading.Thread(target=other)
        t.start()
        try:
            other_ready.wait(10)
            with _acting_as(creds, Creds.own()):
                assert _thread_ids() == (12345, 12345, (23456,))
                assert _thread_ids(str(other_tid[0])) == before
        finally:
            release.set()
            t.join(10)
        assert _thread_ids() == before
    finally:
        app.kill()
        app.wait()


def test_a_fifo_is_refused_without_hanging_the_agent(tmp_path: Path) -> None:
    """The agent serves everything from one thread: opening a fifo must not block it."""
    os.mkfifo(tmp_path / "fifo")
    files = PodFiles(str(tmp_path))
    try:
        with pytest.raises(OSError) as read:
            files.read("/fifo", 0, 10)
        assert read.value.errno == errno.ENXIO
        with pytest.raises(OSError) as write:
            files.write("/fifo", b"x")
        assert write.value.errno == errno.ENXIO  # no reader: O_NONBLOCK says so at once
    finally:
        files.close()
