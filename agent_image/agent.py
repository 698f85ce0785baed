"""mirrortrace-agent: does in the pod what the supervisor asks, over stdin/stdout.

It runs in the pod's network namespace (an ephemeral container, `ip netns exec`,
`kubectl exec`, ...), so its connects, UDP exchanges and file reads are the
pod's. It never listens on a port of its own, speaks only on its stdin/stdout,
and exits when stdin closes, so it leaves nothing behind when the supervisor
goes away, however it goes. Standard library only: it must start with
`python -I -S`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import stat
import sys
from collections.abc import Awaitable

from agent_image import __version__
from agent_image import protocol as p
from agent_image.files import PodFiles, target_creds
from agent_image.mux import Channel, ChannelClosed, DatagramBridge, TcpBridge

ATTACH_WAIT = 300.0  # seconds an --attached agent waits for a supervisor to speak
FEATURES = (
    "connect", "udp", "read_file", "uname", "source_for", "env", "files", "write_files",
    "ping",
)


class Agent:
    """The request handlers; one instance per session."""

    def __init__(self, target_pid: int | None, root: str | None = None) -> None:
        self.target_pid = target_pid
        self.root = f"/proc/{target_pid}/root" if target_pid else (root or "")
        self._files: PodFiles | None = None
        self.channel: Channel | None = None

    def handle(self, sid: int, msg: p.Message) -> p.Message | None | Awaitable[p.Message | None]:
        """The answer, at once; or, for what must wait on the network, an awaitable."""
        if isinstance(msg, p.Ping):
            return p.Pong()  # at once: the supervisor times this round trip
        if isinstance(msg, p.Connect):
            return self.connect(sid, msg)
        if isinstance(msg, p.UdpOpen):
            return self.udp_open(sid, msg)
        if isinstance(msg, p.ReadFile):
            return self.read_file(msg)
        if isinstance(msg, p.Stat):
            return p.StatInfo.from_stat(self.files.stat(msg.path, follow=msg.follow))
        if isinstance(msg, p.ListDir):
            listing = self.files.listdir(msg.path)
            return p.DirEntries(entries=[[e.name, e.kind, e.ino] for e in listing])
        if isinstance(msg, p.ReadLink):
            return p.LinkTarget(target=self.files.readlink(msg.path))
        if isinstance(msg, p.WriteFile):
            return p.StatInfo.from_stat(self.files.write(
                msg.path, msg.blob, msg.offset, truncate=msg.truncate, create=msg.create,
                mode=msg.mode, size=msg.size,
            ))
        if isinstance(msg, p.Unlink):
            self.files.unlink(msg.path, directory=msg.directory)
            return p.Done()
        if isinstance(msg, p.Rename):
            self.files.rename(msg.src, msg.dst, msg.flags)
            return p.Done()
        if isinstance(msg, p.MakeDir):
            self.files.mkdir(msg.path, msg.mode)
            return p.Done()
        if isinstance(msg, p.Access):
            self.files.access(msg.path, msg.mode, follow=msg.follow)
            return p.Done()
        if isinstance(msg, p.GetEnv):
            return self.environment()
        if isinstance(msg, p.SourceFor):
            family = socket.AF_INET6 if ":" in msg.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((msg.host, msg.port))  # a UDP connect only routes: no packet
                return p.Source(host=probe.getsockname()[0])
        if isinstance(msg, p.Uname):
            u = os.uname()
            return p.UnameReply(
                sysname=u.sysname,
                nodename=u.nodename,
                release=u.release,
                version=u.version,
                machine=u.machine,
                domainname=_domainname(),
            )
        return p.ErrorReply(errno="EOPNOTSUPP", message=f"this agent does not serve {msg.op!r}")

    async def connect(self, sid: int, msg: p.Connect) -> p.Message | None:
        """Connect from the pod; the reply carries the pod kernel's own errno on failure."""
        assert self.channel is not None
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in msg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            connecting = loop.sock_connect(sock, (msg.host, msg.port))
            if msg.timeout:
                await asyncio.wait_for(connecting, msg.timeout)
            else:
                await connecting
            local = sock.getsockname()
        except TimeoutError:
            sock.close()
            return p.ErrorReply(errno="ETIMEDOUT", message="connect timed out")
        except OSError as exc:
            sock.close()
            return p.ErrorReply.from_oserror(exc)
        except asyncio.CancelledError:
            sock.close()
            raise
        if not self.channel.is_open:
            sock.close()
            return None
        bridge = TcpBridge(self.channel)
        bridge.sid = sid
        bridge.hold_reading()
        self.channel.streams[sid] = bridge
        await loop.connect_accepted_socket(lambda: bridge, sock)
        # The reply must leave before any byte of the stream does.
        self.channel.respond(sid, p.Connected(local_host=local[0], local_port=local[1]))
        bridge.start()
        return None

    async def udp_open(self, sid: int, msg: p.UdpOpen) -> p.Message:
        assert self.channel is not None
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if msg.family == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        if family == socket.AF_INET6:
            # Dual-stack, like the program's own v6 socket may be: v4-mapped addresses
            # reach IPv4 servers (musl sends to every nameserver from one socket).
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        local = sock.getsockname()
        bridge = DatagramBridge(self.channel)
        bridge.sid = sid
        self.channel.streams[sid] = bridge
        await loop.create_datagram_endpoint(lambda: bridge, sock=sock)
        return p.UdpOpened(local_host=local[0], local_port=local[1])

    def environment(self) -> p.Message:
        """The target container's variables (what its main process started with), or
        this agent's own when it has no target."""
        if self.target_pid is None:
            blob = b"".join(k + b"=" + v + b"\0" for k, v in os.environb.items())
            return p.Environment(source="agent", blob=blob)
        try:
            with open(f"/proc/{self.target_pid}/environ", "rb") as f:
                return p.Environment(source=f"pid {self.target_pid}", blob=f.read())
        except OSError as exc:
            return p.ErrorReply.from_oserror(exc)

    @property
    def files(self) -> PodFiles:
        """The pod's files, opened at the first file request; a failure (the target
        gone) is that request's error, and the next one tries again."""
        if self._files is None:
            self._files = PodFiles(self.root or "/", target_creds(self.target_pid))
        return self._files

    def read_file(self, msg: p.ReadFile) -> p.Message:
        limit = max(0, min(msg.max_bytes, p.MAX_PAYLOAD - 4096))
        st, data = self.files.read(msg.path, max(0, msg.offset), limit)
        return p.FileData(path=msg.path, size=st.st_size, mode=st.st_mode, mtime=st.st_mtime,
                          offset=msg.offset, mtime_ns=st.st_mtime_ns, blob=data)


def _domainname() -> str:
    try:
        with open("/proc/sys/kernel/domainname") as f:
            return f.read().strip()
    except OSError:
        return "(none)"


async def serve(target_pid: int | None, root: str | None = None,
                attached: bool = False, attach_wait: float = ATTACH_WAIT) -> str | None:
    """Serve one session on stdin/stdout; returns the reason it ended (None if clean)."""
    agent = Agent(target_pid, root)
    channel = Channel(
        "agent", agent.handle, software=f"mirrortrace-agent {__version__}", features=FEATURES,
        speak_first=not attached,
    )
    agent.channel = channel
    # Duplicates, so closing the transports never closes fds 0/1 under anybody's feet.
    if stat.S_ISSOCK(os.fstat(0).st_mode):
        # One socket both ways (socat, a unix-socket bridge): a write-pipe transport
        # would mistake the peer's data for a hang-up, so use a socket transport.
        sock = socket.socket(fileno=os.dup(0))
        os.dup2(os.open(os.devnull, os.O_RDWR), 1)  # nothing else may write frames
        await channel.open_socket(sock)
    else:
        rfile = os.fdopen(os.dup(0), "rb", buffering=0)
        wfile = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(os.open(os.devnull, os.O_RDWR), 1)
        await channel.open_pipes(rfile, wfile)
    try:
        # Attached as a container's main process, nobody may ever come (the supervisor
        # was killed between injecting us and attaching): then end, or we would run
        # forever in a container that can never be removed.
        await channel.handshake(attach_wait if attached else None)
    except ChannelClosed as exc:
        return exc.reason
    return await channel.closed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mirrortrace-agent",
        description="Serve one mirrortrace session on stdin/stdout, from this network "
        "namespace. Exits when stdin closes.",
    )
    parser.add_argument(
        "--target-pid",
        type=int,
        help="read files and environment as process PID sees them (/proc/PID/root)",
    )
    parser.add_argument(
        "--root",
        help="serve files from this directory as the pod's / (a mounted container root "
        "filesystem); --target-pid takes precedence",
    )
    parser.add_argument(
        "--attached",
        action="store_true",
        help="speak only when spoken to: the supervisor attaches to this process's stdio "
        "after it started (a container's main process, reached by `kubectl attach`)",
    )
    parser.add_argument(
        "--attach-wait",
        type=float,
        default=ATTACH_WAIT,
        metavar="SECONDS",
        help="with --attached: end if no supervisor has spoken within SECONDS "
        f"(default {ATTACH_WAIT:g})",
    )
    parser.add_argument("--version", action="version", version=f"mirrortrace-agent {__version__}")
    args = parser.parse_args(argv)
    if args.root is not None and not os.path.isdir(args.root):
        parser.exit(2, f"mirrortrace-agent: --root {args.root} is not a directory\n")
    if args.target_pid is not None and not os.path.isdir(f"/proc/{args.target_pid}/root"):
        parser.exit(2, f"mirrortrace-agent: no process {args.target_pid} to serve files of\n")
    try:
        reason = asyncio.run(serve(args.target_pid, args.root, args.attached, args.attach_wait))
    except KeyboardInterrupt:
        reason = "interrupted"
    if reason:
        print(f"mirrortrace-agent: {reason}", file=sys.stderr)
    sys.stderr.flush()
    # Every socket and stream is closed by now; skipping interpreter teardown
    # saves the supervisor tens of milliseconds at the end of every run.
    os._exit(1 if reason else 0)
