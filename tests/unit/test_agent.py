"""The agent as it ships: `python -I -S`, standard library only, over its stdin/stdout."""

from __future__ import annotations

import ast
import asyncio
import os
import socket
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent_image import protocol as p
from agent_image.agent import FEATURES, Agent
from agent_image.mux import Channel, TcpBridge

REPO = Path(__file__).resolve().parents[2]
AGENT = [
    sys.executable, "-I", "-S", "-c",
    f"import sys; sys.path.insert(0, {str(REPO)!r}); from agent_image.agent import main; main()",
]


def test_agent_image_imports_only_the_standard_library_and_itself() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in (REPO / "agent_image").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib or top == "agent_image", f"{path.name} imports {name}"


def test_agent_starts_without_site_packages() -> None:
    out = subprocess.run([*AGENT[:4], AGENT[4].replace("main()", "main(['--version'])")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("mirrortrace-agent ")
    assert sysconfig.get_paths()["purelib"] not in out.stderr


def with_agent(body: Callable[[Channel], Awaitable[None]]) -> str:
    """Run body against a real agent process; returns the agent's stderr."""
    with subprocess.Popen(AGENT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:

        async def main() -> None:
            ch = Channel("supervisor")
            await ch.open_pipes(proc.stdout, proc.stdin)
            hello = await ch.handshake(20)
            assert hello.role == "agent" and "connect" in hello.features
            try:
                await body(ch)
            finally:
                ch.goodbye()
                await asyncio.sleep(0)

        try:
            asyncio.run(asyncio.wait_for(main(), 30))
            assert proc.wait(timeout=10) == 0  # exits by itself after goodbye
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.stderr is not None
        return proc.stderr.read().decode()


def test_agent_reports_the_real_errno_of_a_refused_connect() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        closed_port = s.getsockname()[1]

    async def body(ch: Channel) -> None:
        reply = await ch.request(p.Connect(host="127.0.0.1", port=closed_port))
        assert isinstance(reply, p.ErrorReply) and reply.errno == "ECONNREFUSED"

    with_agent(body)


def test_agent_connects_and_relays_bytes_both_ways() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo_upper() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"banner\n")  # the server speaks first, as SSH or SMTP do
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            conn.sendall(data.upper())

    t = threading.Thread(target=echo_upper)
    t.start()

    async def body(ch: Channel) -> None:
        loop = asyncio.get_running_loop()
        app, ours = socket.socketpair()
        with app, ours:
            bridge = TcpBridge(ch)
            reply = await ch.request(p.Connect(host="127.0.0.1", port=port), endpoint=bridge)
            assert isinstance(reply, p.Connected) and reply.local_host == "127.0.0.1"
            await loop.connect_accepted_socket(lambda: bridge, ours)
            app.setblocking(False)
            got = b""
            while not got.endswith(b"\n"):
                got += await loop.sock_recv(app, 100)
            assert got == b"banner\n"
            payload = b"abc" * 100_000
            await loop.sock_sendall(app, payload)
            app.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := await loop.sock_recv(app, 65536):
                got += chunk
            assert got == payload.upper()

    try:
        with_agent(body)
    finally:
        t.join(5)
        server.close()


def test_agent_answers_ping_at_once_and_says_so_in_its_hello() -> None:
    assert "ping" in FEATURES  # the supervisor sends Ping only to agents listing it
    assert Agent(None).handle(1, p.Ping()) == p.Pong()  # a message, not an awaitable

    async def body(ch: Channel) -> None:
        assert "ping" in ch.peer_hello.result().features
        for _ in range(3):
            assert await ch.request(p.Ping()) == p.Pong()
        assert ch.is_open

    with_agent(body)


def test_agent_exchanges_datagrams_with_their_source_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        port = peer.getsockname()[1]

        def answer() -> None:
            data, addr = peer.recvfrom(100)
            peer.sendto(data[::-1], addr)

        t = threading.Thread(target=answer)
        t.start()
        got: list[tuple[str, int, bytes]] = []

        async def body(ch: Channel) -> None:
            arrived = asyncio.Event()
            from agent_image.mux import DatagramBridge

            def deliver(host: str, port_: int, data: bytes) -> None:
                got.append((host, port_, data))
                arrived.set()

            bridge = DatagramBridge(ch, deliver)
            reply = await ch.request(p.UdpOpen(family=4), endpoint=bridge)
            assert isinstance(reply, p.UdpOpened)
            ch.send(p.FrameType.DATAGRAM, bridge.sid, p.pack_addr("127.0.0.1", port) + b"ping")
            await asyncio.wait_for(arrived.wait(), 10)

        with_agent(body)
        t.join(5)
    assert got == [("127.0.0.1", port, b"gnip")]


def test_agent_serves_files_and_uname_from_its_own_view(tmp_path: Path) -> None:
    f = tmp_path / "resolv.conf"
    f.write_bytes(b"nameserver 198.18.0.53\n")

    async def body(ch: Channel) -> None:
        reply = await ch.request(p.ReadFile(path=str(f)))
        assert isinstance(reply, p.FileData) and reply.blob == b"nameserver 198.18.0.53\n"
        missing = await ch.request(p.ReadFile(path=str(tmp_path / "nope")))
        assert isinstance(missing, p.ErrorReply) and missing.errno == "ENOENT"
        relative = await ch.request(p.ReadFile(path="etc/hosts"))
        assert isinstance(relative, p.ErrorReply) and relative.errno == "EINVAL"
        uname = await ch.request(p.Uname())
        assert isinstance(uname, p.UnameReply) and uname.nodename == socket.gethostname()

    with_agent(body)


def test_agent_exits_when_its_stdin_closes() -> None:
    with subprocess.Popen(AGENT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.close()
        try:
            assert proc.wait(timeout=20) != 0  # no hello came: an error, said on stderr
        finally:
            if proc.poll() is None:
                proc.kill()
        assert b"before its hello" in proc.stderr.read()


def test_agent_refuses_a_target_pid_that_does_not_exist() -> None:
    argv = [*AGENT[:4], AGENT[4].replace("main()", "main(['--target-pid', '999999999'])")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "no process 999999999" in out.stderr


def test_agent_serves_over_one_socket_as_stdin_and_stdout() -> None:
    """socat and unix-socket bridges hand the agent a socket, not two pipes."""
    ours, theirs = socket.socketpair()
    with ours, subprocess.Popen(AGENT, stdin=theirs, stdout=theirs) as proc:
        theirs.close()

        async def main() -> None:
            ch = Channel("supervisor")
            await ch.open_socket(ours)
            await ch.handshake(20)
            for _ in range(3):  # more than one round trip: the first used to be the last
                assert isinstance(await ch.request(p.Uname()), p.UnameReply)
            ch.goodbye()
            await asyncio.sleep(0)

        try:
            asyncio.run(asyncio.wait_for(main(), 30))
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_agent_given_garbage_says_so_and_exits() -> None:
    """A malformed stream ends the session on the agent's side too, with a clear line."""
    hello = p.Hello(version=p.VERSION, role="supervisor").to_payload()
    stream = p.encode_frame(p.FrameType.HELLO, 0, hello) + b"\xff" * 9
    out = subprocess.run(AGENT, input=stream, capture_output=True, timeout=30)
    assert out.returncode == 1
    assert b"protocol error from the supervisor: frame of 4294967295 bytes exceeds" in out.stderr
    assert b"it began with" not in out.stderr  # the hello was fine: no stdout hint
    frames = p.FrameDecoder().feed(out.stdout)
    assert [f.type for f in frames] == [p.FrameType.HELLO, p.FrameType.ERROR]


def test_agent_given_a_truncated_frame_says_so_and_exits() -> None:
    hello = p.Hello(version=p.VERSION, role="supervisor").to_payload()
    stream = p.encode_frame(p.FrameType.HELLO, 0, hello) + p.encode_frame(
        p.FrameType.REQUEST, 1, p.Uname().to_payload()
    )[:-3]
    out = subprocess.run(AGENT, input=stream, capture_output=True, timeout=30)
    assert out.returncode == 1
    assert b"in the middle of a frame" in out.stderr


def test_agent_writes_a_file_back_in_chunks_and_reads_it_exactly(tmp_path: Path) -> None:
    agent = Agent(None, root=str(tmp_path))
    # File requests are answered at once (no task, no extra loop iteration).
    first = agent.handle(1, p.WriteFile(path="/f", create=True, truncate=True, mode=0o640,
                                        blob=b"hello "))
    assert isinstance(first, p.StatInfo) and first.size == 6
    last = agent.handle(3, p.WriteFile(path="/f", offset=6, size=11, blob=b"world"))
    assert isinstance(last, p.StatInfo) and last.size == 11
    data = agent.handle(5, p.ReadFile(path="/f"))
    assert isinstance(data, p.FileData) and data.blob == b"hello world"
    assert data.mtime_ns == last.mtime_ns == os.stat(tmp_path / "f").st_mtime_ns
    listing = agent.handle(7, p.ListDir(path="/"))
    assert listing == p.DirEntries(entries=[["f", "file", os.stat(tmp_path / "f").st_ino]])
    assert agent.handle(9, p.Unlink(path="/f")) == p.Done()
    assert not (tmp_path / "f").exists()


def test_agent_answers_a_failed_file_change_with_the_errno(tmp_path: Path) -> None:
    """An OSError from a handler becomes an ErrorReply at the channel, as for reads."""
    assert "write_files" in FEATURES

    async def main() -> None:
        agent = Agent(None, root=str(tmp_path))
        a, b = socket.socketpair()
        with a, b:
            sup = Channel("supervisor")
            served = Channel("agent", agent.handle, features=FEATURES)
            await sup.open_socket(a)
            await served.open_socket(b)
            hello, _ = await asyncio.gather(sup.handshake(5), served.handshake(5))
            assert "write_files" in hello.features
            try:
                missing = await sup.request(p.Unlink(path="/nope"))
                assert missing == p.ErrorReply(errno="ENOENT", message="No such file or directory")
                assert await sup.request(p.MakeDir(path="/d")) == p.Done()
                again = await sup.request(p.MakeDir(path="/d"))
                assert isinstance(again, p.ErrorReply) and again.errno == "EEXIST"
                assert await sup.request(p.Access(path="/d", mode=os.X_OK)) == p.Done()
            finally:
                sup.goodbye()
                served.goodbye()
                await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 20))
    assert (tmp_path / "d").is_dir()


def test_an_attached_agent_nobody_speaks_to_ends_by_itself() -> None:
    """Injected, then the supervisor died before attaching: the agent must not run forever
    in a container that can never be removed."""
    with subprocess.Popen([*AGENT, "--attached", "--attach-wait", "0.5"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            proc.wait(timeout=20)  # stdin stays open: nobody ever speaks
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        assert proc.returncode == 1
        assert out == b""  # it never spoke first
        assert b"no hello from the supervisor within 0.5 s" in err
