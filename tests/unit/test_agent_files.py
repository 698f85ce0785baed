"""The agent's view of the pod's files: resolved inside the pod's root, read in chunks."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from test_agent import AGENT  # the agent as it ships: python -I -S

from agent_image import protocol as p
from agent_image.files import PodFiles
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
    assert listing == p.DirEntries(entries=[["app", "dir"], ["link", "link"]])
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
