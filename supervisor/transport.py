"""How the session reaches its agent: an AgentLink.

A link opens the agent channel (agent_image/mux.py) over whatever carries it,
passes the agent's stderr on as lines, says what it knows when the agent ends
before the handshake, and ends whatever it started. Two exist: PipeLink, a
command whose stdin/stdout are the channel (`--agent-exec`, the local agent),
here; and the Kubernetes attach/exec websocket, in supervisor/k8s_link.py.

Kept light (subprocess only at import time) so the CLI can start the agent
before the heavier supervisor modules load: the agent's interpreter start-up
then overlaps ours, which is most of `mirrortrace run -- true`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from supervisor.errors import AgentStartError

if TYPE_CHECKING:
    from agent_image.mux import Channel

LogSink = Callable[[str], None]


class AgentLink(Protocol):
    pid: int | None  # a child process of ours the tracer's waitpid(-1) may reap
    # Bytes a stream may have in flight from the agent (None: the protocol's default).
    stream_window: int | None

    async def open(self, channel: Channel, on_log: LogSink) -> None:
        """Attach channel to the agent (in the session's loop); stderr lines to on_log."""
        ...

    def ended_how(self) -> str:
        """What is known about an agent that ended early, e.g. " (exit status 1)"."""
        ...

    async def aclose(self) -> None:
        """End the transport while the loop still runs."""
        ...

    def close(self) -> None:
        """End what is left after the loop stopped (processes, pods); idempotent."""
        ...


class PipeLink:
    """A command whose stdin/stdout are the channel and whose stderr is its log."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid: int | None = proc.pid
        self.stream_window: int | None = None  # a pipe's round trip is short

    async def open(self, channel: Channel, on_log: LogSink) -> None:
        import asyncio  # not at the top: the CLI imports this module before spawning

        await channel.open_pipes(self.proc.stdout, self.proc.stdin)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: LineSplitter(on_log), self.proc.stderr)

    def ended_how(self) -> str:
        status = self.proc.poll()
        return f" (exit status {status})" if status is not None else ""

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()  # EOF: an agent that never got our hello exits too
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        except ChildProcessError:
            pass  # reaped by the tracer's waitpid(-1)


class LineSplitter:
    """Bytes in, one call per line out (the agent's stderr). An asyncio protocol by
    its methods, so that importing this module does not import asyncio."""

    def __init__(self, on_line: LogSink) -> None:
        self.on_line = on_line
        self.buf = b""

    def connection_made(self, transport: object) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.feed(b"\n")  # a last line without its newline still counts

    def eof_received(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        self.feed(data)

    def feed(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.on_line(line)


def spawn_agent(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start the agent command with its stdin/stdout as the channel.

    It gets a session of its own: Ctrl-C in the terminal is for COMMAND, and
    the agent must keep serving while COMMAND handles it.
    """
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise AgentStartError(
            f"cannot start the agent command {argv[0]!r}: {exc.strerror}",
            "check --agent-exec (or MIRRORTRACE_AGENT_EXEC)",
        ) from None


def local_agent_argv() -> list[str]:
    """The agent as a subprocess of this Python, started the way it runs in a pod:
    isolated (-I) and without site-packages (-S), which also makes it start faster."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"import sys; sys.path.insert(0, {root!r}); from agent_image.agent import main; main()"
    return [sys.executable, "-I", "-S", "-c", code]
