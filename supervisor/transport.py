"""The `--agent-exec` transport: a command whose stdin/stdout are the channel.

Kept apart and light (it imports only subprocess) so the CLI can start the
agent before the heavier supervisor modules load: the agent's interpreter
start-up then overlaps ours, which is most of `mirrortrace run -- true`.
"""

from __future__ import annotations

import os
import subprocess
import sys

from supervisor.errors import AgentStartError


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
